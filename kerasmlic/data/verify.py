"""Check shards against ``dataset.json``, and name the bad one when a read fails.

Two uses:

* ``kerasmlic verify DATA`` (:func:`verify_data`): every shard of every split
  is hashed and compared with the sha256 that ``build`` recorded; each bad
  shard is reported with what is wrong.
* When TensorFlow fails to read a record during ``train``, ``evaluate``,
  ``tune`` or ``reproduce`` (``DataLossError``: "corrupted record at N",
  "truncated record at N"), :func:`explain_read_failure` checks the shards of
  the folders this process loaded (cheap TFRecord framing first, then sha256)
  and returns one line naming the bad shard and the fix. Nothing is hashed at
  start-up: the check runs only after a read has failed.

A TFRecord file is a sequence of ``uint64 length``, ``uint32 crc``, ``length``
bytes of data, ``uint32 crc``; walking the length fields (seeking over the
data) finds a cut-off file without reading it all.
"""

import os
import re
import struct

from kerasmlic.data import manifest as manifest_lib

REBUILD_HINT = "rerun `kerasmlic build` with the same arguments to rebuild it"

# Substrings of TensorFlow's messages for a record it could not read.
_READ_FAILURE_MARKERS = ("corrupted record", "truncated record")


def framing_problem(path, num_examples=None):
    """Walk a TFRecord file's length fields; describe a cut-off or mis-framed file.

    Args:
        path: A shard file.
        num_examples: Records ``dataset.json`` says it holds, or ``None``.

    Returns:
        ``None`` when the framing is whole (and the count matches), else a
        short description such as ``"truncated: cut off inside record 7 of 12"``.
    """
    size = os.path.getsize(path)
    count, offset = 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                return _cut_off(count, num_examples, size)
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + 12 + length + 4
            if end > size:
                if length > size:
                    return (
                        f"corrupted: record {count + 1} has an impossible length at byte {offset}"
                    )
                return _cut_off(count, num_examples, size)
            f.seek(end)
            offset = end
            count += 1
    if num_examples is not None and count != num_examples:
        return f"holds {count} records but dataset.json lists {num_examples}"
    return None


def _cut_off(complete, expected, size):
    of = f" of {expected}" if expected is not None else ""
    return f"truncated: cut off after {complete} complete records{of} ({size} bytes)"


def shard_problem(path, shard, *, hash_it=True):
    """Return what is wrong with one shard, or ``None`` when it matches ``dataset.json``.

    Args:
        path: The shard file's path.
        shard: Its ``dataset.json`` entry (``file``, ``num_examples``, ``sha256``).
        hash_it: Compare the sha256 too (reads the whole file).

    Returns:
        ``None`` or a short description of the problem.
    """
    if not os.path.exists(path):
        return "missing"
    if not os.path.isfile(path):
        return "not a regular file"
    try:
        problem = framing_problem(path, shard.get("num_examples"))
        if problem is None and hash_it and shard.get("sha256"):
            if manifest_lib.file_sha256(path) != shard["sha256"]:
                problem = "corrupted: its sha256 differs from the one in dataset.json"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return problem


def verify_data(data_dir, splits=None):
    """Check every shard of a built folder against ``dataset.json``.

    Args:
        data_dir: Folder written by ``kerasmlic build``.
        splits: Split names to check (default: all).

    Returns:
        A dict: ``checked`` (shard count), ``examples`` (records in good
        shards) and ``bad`` (a list of ``{"split", "path", "problem"}``).

    Raises:
        UsageError: No readable ``dataset.json``, or an unknown split.
    """
    manifest = manifest_lib.load_manifest(data_dir)
    names = sorted(manifest.get("splits", {})) if splits is None else list(splits)
    checked, examples, bad = 0, 0, []
    for split in names:
        info = manifest_lib.split_info(manifest, split, data_dir)
        for shard in info.get("shards", []):
            path = os.path.join(data_dir, shard["file"])
            checked += 1
            problem = shard_problem(path, shard)
            if problem is None:
                examples += int(shard.get("num_examples") or 0)
            else:
                bad.append({"split": split, "path": path, "problem": problem})
    return {"checked": checked, "examples": examples, "bad": bad}


def format_problem(item):
    """One line for a bad shard: its path, what is wrong, and the fix."""
    return f"shard {item['path']!r} ({item['split']}) is {item['problem']}; {REBUILD_HINT}"


def is_read_failure(error):
    """Whether an exception is TensorFlow failing to read a record.

    Args:
        error: An exception.

    Returns:
        A bool: a ``DataLossError``, or an error whose message says a record
        is corrupted or truncated (keras-tuner and strategies re-wrap errors).
    """
    if type(error).__name__ == "DataLossError":
        return True
    text = str(error)
    return any(marker in text for marker in _READ_FAILURE_MARKERS)


def find_bad_shards(data_dirs=None):
    """Find the shards that fail their check, cheapest checks first.

    Folders are checked most recently loaded first; the first folder with a
    bad shard answers (framing is checked before any file is hashed).

    Args:
        data_dirs: ``{folder: manifest}``; default the folders this process
            loaded (:func:`kerasmlic.data.manifest.loaded_data_dirs`).

    Returns:
        A list of ``{"split", "path", "problem"}`` (empty when all are good).
    """
    data_dirs = manifest_lib.loaded_data_dirs() if data_dirs is None else data_dirs
    for folder, manifest in reversed(list(data_dirs.items())):
        shards = [
            (split, os.path.join(folder, shard["file"]), shard)
            for split, info in sorted(manifest.get("splits", {}).items())
            for shard in info.get("shards", [])
        ]
        for hash_it in (False, True):
            bad = []
            for split, path, shard in shards:
                problem = shard_problem(path, shard, hash_it=hash_it)
                if problem is not None:
                    bad.append({"split": split, "path": path, "problem": problem})
            if bad:
                return bad
    return []


def explain_read_failure(error):
    """One line for a failed record read: the bad shard, what is wrong, the fix.

    Args:
        error: The exception TensorFlow raised (see :func:`is_read_failure`).

    Returns:
        The line (no traceback, no TensorFlow graph dump), or ``None`` when no
        loaded shard is bad and the error does not say a record was corrupted
        or truncated (a ``DataLossError`` from another file, e.g. a checkpoint,
        is not blamed on the shards).
    """
    bad = find_bad_shards()
    found = re.search(r"(corrupted|truncated) record at \d+", str(error))
    if not bad:
        if not found:
            return None
        folders = ", ".join(repr(d) for d in manifest_lib.loaded_data_dirs()) or "the data"
        return (
            f"TensorFlow could not read a shard ({found.group(0)}), yet every shard of "
            f"{folders} matches dataset.json now; check the disk, then {REBUILD_HINT}"
        )
    item = dict(bad[0])
    if found:
        item["problem"] += f" (TensorFlow read: {found.group(0)})"
    line = format_problem(item)
    if len(bad) > 1:
        line += f" ({len(bad) - 1} more bad shards: `kerasmlic verify` lists them)"
    return line
