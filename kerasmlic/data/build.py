"""``kerasmlic build``: a COCO instances file + images → TFRecord shards + ``dataset.json``.

How a build runs:

1. The annotations are read and cleaned (:mod:`kerasmlic.data.coco`); an
   output folder that already holds other splits must share their class list.
2. A *plan* is made before any pixel is read: images without labels are
   dropped (unless ``keep_empty``), entries whose file cannot be used (path
   outside the images folder, missing, zero bytes, absurd declared size) are
   recorded as skipped, and the rest, in ascending image id, are cut into
   contiguous blocks, one per shard. The plan is deterministic, so a rerun
   knows what every shard should contain before writing it.
3. Images are read, checked and (only where TensorFlow cannot decode them,
   or ``max_side`` asks) converted by
   :mod:`kerasmlic.data.images` — with ``workers > 1`` in a pool of spawned
   processes (:mod:`kerasmlic.data.shard_writer`), fed runs of
   :data:`~kerasmlic.data.shard_writer.CHUNK_SIZE` images with at most
   ``2 * workers`` runs in flight — and the main process writes the results
   in plan order. Memory stays flat: a bounded number of encoded images is in
   flight, each is written straight to disk. The pool processes import PIL
   only, not TensorFlow, so they start in well under a second; the output is
   byte-identical whatever the number of workers. A worker exits on its own
   when the build process is gone (``kill -9``), so none is left behind.
4. Each shard is written under ``NAME.tmp`` and renamed when complete; then a
   sidecar ``.SPLIT-00000-of-000NN.done.json`` records its sha256, a digest of
   its plan, the ids written and the images skipped while writing.
5. ``dataset.json`` is written last, atomically, keeping the other splits.

Resuming: a rerun reuses a shard whose file's sha256 matches its sidecar and
whose sidecar's plan digest matches the new plan (same images, file sizes,
labels, ``max_side`` and shard count); everything else is rewritten, and
leftover ``.tmp`` files are removed. Before the first shard of a split is
rewritten, that split's entry is removed from an existing ``dataset.json``,
so the manifest never describes shards that are being replaced. After a
successful build, shard files of the same split from an older build with a
different shard count are deleted.

Default shard count: ``max(min(8, n), ceil(n / 1000), ceil(bytes / 150 MB))``
for ``n`` planned images whose source files total ``bytes``. Real COCO gives
shards of about 150 MB (train2014: ~90 shards); a small dataset still gets up
to 8 shards so ``tf.data`` interleave and ``tf.distribute`` file sharding have
files to spread.

``strict=True``: any skip raises :class:`UsageError` naming the file and the
reason. Problems found in the plan stop the build before anything is
written; a bad image found while writing stops the workers, removes the
shard's temporary file and writes no ``dataset.json`` entry. Shards already
completed (with their sidecars) stay on disk, so the run after the file is
fixed reuses them.
"""

import collections
import math
import os
import re
import sys
import time

import numpy as np

from kerasmlic.data import manifest as manifest_lib
from kerasmlic.data.coco import load_coco
from kerasmlic.data.images import ImageSkip, check_declared_size, resolve_image_path
from kerasmlic.data.shard_writer import (
    plan_digest,
    remove_file,
    reusable_shard,
    skip_record,
    write_shards,
)
from kerasmlic.errors import UsageError

MIN_SHARDS = 8
EXAMPLES_PER_SHARD = 1000
TARGET_SHARD_BYTES = 150 * 10**6
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")


def shard_name(split, index, num_shards):
    """Return a shard's file name, ``SPLIT-00000-of-000NN.tfrecord``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def sidecar_name(split, index, num_shards):
    """Return the name of a shard's completion record, ``.SPLIT-…-of-….done.json``."""
    return f".{split}-{index:05d}-of-{num_shards:05d}.done.json"


def default_num_shards(num_images, total_bytes):
    """Choose a shard count (see the module doc).

    Args:
        num_images: Images planned for the split.
        total_bytes: Sum of their source file sizes.

    Returns:
        The number of shards, at least 1.
    """
    if num_images <= 0:
        return 1
    return max(
        min(MIN_SHARDS, num_images),
        math.ceil(num_images / EXAMPLES_PER_SHARD),
        math.ceil(total_bytes / TARGET_SHARD_BYTES),
    )


def plan_images(images, images_root, keep_empty):
    """Decide which images go into shards, without decoding any of them.

    Args:
        images: :class:`kerasmlic.data.coco.ImageLabels`, ascending id.
        images_root: Real path of the images folder.
        keep_empty: Keep images that have no label.

    Returns:
        ``(entries, skipped, num_empty)``: entries are tuples ``(image_id,
        file_name, path, size_bytes, width, height, label_ids, label_areas,
        label_instances)``; skipped are skip records; num_empty counts images
        dropped for having no label.
    """
    entries, skipped, num_empty = [], [], 0
    for img in images:
        if not img.label_ids and not keep_empty:
            # Dropped before any file check: an image never read needs no report.
            num_empty += 1
            continue
        path = os.path.join(images_root, img.file_name)  # the path tried, for messages
        try:
            check_declared_size(img.width, img.height)
            path = resolve_image_path(images_root, img.file_name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise ImageSkip("missing file") from None
            except OSError as e:
                raise ImageSkip(f"cannot read file ({e.strerror or e})") from None
            if not os.path.isfile(path):
                raise ImageSkip("not a regular file")
            if st.st_size == 0:
                raise ImageSkip("empty file (0 bytes)")
        except ImageSkip as e:
            skipped.append(skip_record(img.file_name, img.image_id, str(e), path))
            continue
        entries.append(
            (
                img.image_id,
                img.file_name,
                path,
                st.st_size,
                img.width,
                img.height,
                list(img.label_ids),
                [float(a) for a in img.label_areas],
                list(img.label_instances),
            )
        )
    return entries, skipped, num_empty


def _strict_error(skips):
    first = skips[0]
    more = f" (and {len(skips) - 1} more)" if len(skips) > 1 else ""
    where = f"{first['file']}"
    if first.get("image_id") is not None:
        where += f" (image id {first['image_id']})"
    return UsageError(f"--strict: {where}: {first['reason']}{more}")


def _split_stats(examples, num_classes):
    """Label counts, mean areas and co-occurrence over ``(ids, areas)`` pairs."""
    counts = np.zeros(num_classes, np.int64)
    area_sum = np.zeros(num_classes, np.float64)
    cooc = np.zeros((num_classes, num_classes), np.int64)
    max_labels = 0
    for ids, areas in examples:
        if ids:
            idx = np.asarray(ids)
            counts[idx] += 1
            area_sum[idx] += areas
            cooc[np.ix_(idx, idx)] += 1
        max_labels = max(max_labels, len(ids))
    mean_area = np.divide(area_sum, counts, out=np.zeros(num_classes), where=counts > 0)
    return {
        "label_counts": counts.tolist(),
        "label_mean_area": [round(float(a), 6) for a in mean_area],
        "cooccurrence": cooc.tolist(),
        "max_labels": max_labels,
    }


def _remove_tmp(out, split):
    """Remove temporary shard files of ``split`` left by an interrupted build."""
    for name in os.listdir(out):
        if name.startswith(f"{split}-") and name.endswith(".tfrecord.tmp"):
            remove_file(os.path.join(out, name))


def _remove_stale(out, split, keep):
    pattern = re.compile(
        rf"^\.?{re.escape(split)}-\d{{5}}-of-\d{{5}}\.(tfrecord|tfrecord\.tmp|done\.json)$"
    )
    for name in os.listdir(out):
        if pattern.match(name) and name not in keep:
            remove_file(os.path.join(out, name))


def _print_warning(message):
    print(f"kerasmlic build: warning: {message}", file=sys.stderr)


def _nothing_written(annotations, images, plan_skips, num_empty, images_dir):
    """The one-line error when a plan holds no image, naming the first file and path."""
    head = f"no image of {annotations!r} can be written ({len(images)} images"
    if plan_skips:
        first = plan_skips[0]
        return (
            f"{head}, {num_empty} without labels, {len(plan_skips)} skipped; first: "
            f"{first['file']} (image id {first['image_id']}), tried "
            f"{first.get('path', first['file'])!r}: {first['reason']})"
        )
    if images:
        first = images[0]
        return (
            f"{head}, all without labels; first: {first.file_name} (image id "
            f"{first.image_id}) in {images_dir!r}; pass --keep-empty to keep unlabelled images)"
        )
    return f"{head}: its 'images' list is empty)"


def _repeated_files(images, written_ids):
    """``file_name``s used by several image ids (at least one written), with the ids."""
    by_name = collections.defaultdict(list)
    for img in images:
        by_name[img.file_name].append(img.image_id)
    return [
        {"file": name, "image_ids": ids}
        for name, ids in sorted(by_name.items())
        if len(ids) > 1 and written_ids.intersection(ids)
    ]


def _check_args(annotations, images, split, out, shards, max_side, workers):
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise UsageError(
            f"split name {split!r} must be 1-64 letters, digits, '_' or '-' (it names files)"
        )
    if not os.path.isfile(annotations):
        raise UsageError(f"annotations file {annotations!r} not found")
    if not os.path.isdir(images):
        raise UsageError(f"images folder {images!r} not found")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"output {out!r} exists and is not a folder")
    for name, value in (("--shards", shards), ("--max-side", max_side)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers!r}")


def _shard_tasks(entries, split, out, num_shards, max_side):
    """Cut the plan into ``num_shards`` contiguous blocks, one write task each."""
    tasks = []
    for index in range(num_shards):
        block = entries[
            index * len(entries) // num_shards : (index + 1) * len(entries) // num_shards
        ]
        tasks.append(
            {
                "index": index,
                "split": split,
                "out": out,
                "file": shard_name(split, index, num_shards),
                "sidecar": sidecar_name(split, index, num_shards),
                "entries": block,
                "max_side": max_side,
                "digest": plan_digest(split, index, num_shards, block, max_side),
            }
        )
    return tasks


def _write_split_entry(out, existing, classes, split, entry):
    """Write ``dataset.json`` atomically with ``entry`` as the split's, keeping the others."""
    splits = {**(existing or {}).get("splits", {}), split: entry}
    manifest_lib.write_json_atomic(
        manifest_lib.manifest_path(out),
        {"format_version": manifest_lib.FORMAT_VERSION, "classes": classes, "splits": splits},
    )


def build_split(
    annotations,
    images,
    split,
    out,
    *,
    shards=None,
    max_side=None,
    workers=1,
    keep_empty=False,
    strict=False,
    progress=True,
    warn=None,
):
    """Build one split's TFRecord shards and record it in ``OUT/dataset.json``.

    Args:
        annotations: Path of a COCO instances JSON file.
        images: Folder the annotations' ``file_name`` entries are relative to.
        split: Split name (``train``, ``val``...), used in shard file names.
        out: Output folder (created if missing); may already hold other splits.
        shards: Number of shards, or ``None`` for the default (module doc).
        max_side: Downscale images whose longer side exceeds this many pixels.
        workers: Processes that read, check and re-encode images in parallel
            (this process writes the shards); 1 does everything in this process.
        keep_empty: Keep images without labels (dropped by default, as in the
            COCO-2014 protocol).
        strict: Turn any skip into a :class:`UsageError` (module doc).
        progress: Show a tqdm progress bar on stderr.
        warn: Called with each warning line (classes that are never positive);
            default: print it to stderr.

    Returns:
        A summary dict: ``split``, ``out``, ``num_examples``, ``num_skipped``,
        ``num_empty_dropped``, ``num_shards``, ``shards_written``,
        ``shards_reused``, ``skipped`` (the records), ``reencoded`` (counts by
        reason), ``unused_classes``, ``repeated_files``, ``exif_orientation``
        (the lists also written to ``dataset.json``) and ``elapsed`` (seconds).

    Raises:
        UsageError: Bad arguments, a missing images folder, a malformed
            annotations file, a class list that differs from the splits
            already in ``out``, no image left to write, or a skip under ``strict``.
        RuntimeError: A worker process died (e.g. killed for memory); rerunning
            the same call resumes.
    """
    from tqdm import tqdm

    start = time.monotonic()
    _check_args(annotations, images, split, out, shards, max_side, workers)
    coco = load_coco(annotations)
    coco.coco = None  # the pycocotools index is not needed while writing: free it

    existing = None
    if os.path.isfile(manifest_lib.manifest_path(out)):
        existing = manifest_lib.load_manifest(out)
        if existing.get("classes") != coco.classes:
            raise UsageError(
                f"the categories of {annotations!r} differ from the class list of the splits "
                f"already in {out!r} ({', '.join(sorted(existing.get('splits', {})))}); "
                "build into another folder"
            )

    images_root = os.path.realpath(images)
    entries, plan_skips, num_empty = plan_images(coco.images, images_root, keep_empty)
    early_skips = coco.skipped + plan_skips
    if strict and early_skips:
        raise _strict_error(early_skips)
    if not entries:
        raise UsageError(_nothing_written(annotations, coco.images, plan_skips, num_empty, images))

    num_shards = shards or default_num_shards(len(entries), sum(e[3] for e in entries))
    tasks = _shard_tasks(entries, split, out, num_shards, max_side)

    os.makedirs(out, exist_ok=True)
    _remove_tmp(out, split)

    records = {}
    for task in tasks:
        record = reusable_shard(task)
        if record is not None:
            records[task["index"]] = record
    todo = [t for t in tasks if t["index"] not in records]
    if strict:
        reused_skips = [s for r in records.values() for s in r["skipped"]]
        if reused_skips:
            raise _strict_error(reused_skips)

    if todo and existing is not None and split in existing.get("splits", {}):
        del existing["splits"][split]
        manifest_lib.write_json_atomic(manifest_lib.manifest_path(out), existing)

    if todo:
        # Import TensorFlow (to write records) before the bar starts, so its start-up
        # time and chatter do not land inside the progress bar and its ETA.
        import kerasmlic.data.schema  # noqa: F401

    bar = tqdm(
        total=len(entries),
        initial=sum(len(t["entries"]) for t in tasks if t["index"] in records),
        unit="img",
        desc=f"build {split}",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        written, strict_skip = write_shards(todo, workers, strict, bar) if todo else ({}, None)
    if strict_skip is not None:
        _remove_tmp(out, split)
        raise _strict_error([strict_skip])
    records.update(written)

    labels = {e[0]: (e[6], e[7]) for e in entries}
    ordered = [records[t["index"]] for t in tasks]
    write_skips = [s for r in ordered for s in r["skipped"]]
    reencoded = {}
    for r in ordered:
        for reason, n in r.get("reencoded", {}).items():
            reencoded[reason] = reencoded.get(reason, 0) + n
    num_examples = sum(r["num_examples"] for r in ordered)
    if num_examples == 0:
        first = write_skips[0]
        raise UsageError(
            f"no image of {annotations!r} could be written: {len(write_skips)} skipped "
            f"(first: {first['file']}, tried {first.get('path', first['file'])!r}: "
            f"{first['reason']})"
        )
    stats = _split_stats((labels[i] for r in ordered for i in r["image_ids"]), len(coco.classes))
    skipped = early_skips + write_skips
    unused = [
        {"index": c["index"], "coco_id": c["coco_id"], "name": c["name"]}
        for c in coco.classes
        if stats["label_counts"][c["index"]] == 0
    ]
    if unused:
        names = ", ".join(repr(c["name"]) for c in unused[:5])
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        (warn or _print_warning)(
            f"{len(unused)} of {len(coco.classes)} categories have no annotation on a written "
            f"{split} image: {names}{more}; they stay classes that are never positive here "
            "(listed in dataset.json as unused_classes)"
        )
    written_ids = {i for r in ordered for i in r["image_ids"]}
    repeated = _repeated_files(coco.images, written_ids)
    rotated = [x for r in ordered for x in r["exif_orientation"]]
    entry = {
        "num_examples": num_examples,
        "shards": [
            {"file": r["file"], "num_examples": r["num_examples"], "sha256": r["sha256"]}
            for r in ordered
        ],
        "label_counts": stats["label_counts"],
        "label_mean_area": stats["label_mean_area"],
        "cooccurrence": stats["cooccurrence"],
        "max_labels": stats["max_labels"],
        "num_empty_dropped": num_empty,
        "reencoded": reencoded,
        "skipped": skipped,
        "unused_classes": unused,
        "repeated_files": repeated,
        "exif_orientation": rotated,
        "source": {
            "annotations": os.path.abspath(annotations),
            "images": os.path.abspath(images),
        },
        "options": {"max_side": max_side, "keep_empty": bool(keep_empty)},
    }
    _write_split_entry(out, existing, coco.classes, split, entry)
    _remove_stale(out, split, keep={t["file"] for t in tasks} | {t["sidecar"] for t in tasks})

    return {
        "split": split,
        "out": out,
        "num_examples": num_examples,
        "num_skipped": len(skipped),
        "num_empty_dropped": num_empty,
        "num_shards": num_shards,
        "shards_written": len(written),
        "shards_reused": num_shards - len(written),
        "skipped": skipped,
        "reencoded": reencoded,
        "unused_classes": unused,
        "repeated_files": repeated,
        "exif_orientation": rotated,
        "elapsed": time.monotonic() - start,
    }


def format_summary(summary):
    """Return the one-line summary of a :func:`build_split` result.

    Args:
        summary: The dict returned by :func:`build_split`.

    Returns:
        One line, e.g. ``train: 950 examples in 8 shards (8 written, 0 reused)
        -> out/; 2 skipped (first: a.jpg: empty file (0 bytes)); 48 without
        labels dropped; 12.3s``.
    """
    s = summary
    line = (
        f"{s['split']}: {s['num_examples']} examples in {s['num_shards']} shards "
        f"({s['shards_written']} written, {s['shards_reused']} reused) -> {s['out']}"
    )
    if s["reencoded"]:
        total = sum(s["reencoded"].values())
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(s["reencoded"].items()))
        line += f"; {total} re-encoded ({parts})"
    if s.get("repeated_files"):
        line += (
            f"; {len(s['repeated_files'])} file names used by several image ids "
            "(listed in dataset.json)"
        )
    if s.get("exif_orientation"):
        line += f"; {len(s['exif_orientation'])} with an EXIF rotation (not applied)"
    if s["num_skipped"]:
        first = s["skipped"][0]
        line += (
            f"; {s['num_skipped']} skipped, listed in dataset.json "
            f"(first: {first['file']}: {first['reason']})"
        )
    else:
        line += "; 0 skipped"
    if s["num_empty_dropped"]:
        line += f"; {s['num_empty_dropped']} without labels dropped"
    return line + f"; {s['elapsed']:.1f}s"
