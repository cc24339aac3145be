"""``dataset.json``: the manifest written beside the TFRecord shards.

Layout (format version 1)::

    {
      "format_version": 1,
      "classes": [{"index": 0, "coco_id": 1, "name": "person",
                   "supercategory": "person"}, ...],
      "splits": {
        "train": {
          "num_examples": 3000,
          "shards": [{"file": "train-00000-of-00004.tfrecord",
                      "num_examples": 750, "sha256": "..."}, ...],
          "label_counts": [...],          # images per class index
          "label_mean_area": [...],       # mean label/areas per class (0 if absent)
          "cooccurrence": [[...], ...],   # C x C image counts, diagonal = label_counts
          "max_labels": 9,                # most labels on one example
          "num_empty_dropped": 48,        # images without labels left out (keep_empty off)
          "reencoded": {"converted": 1},  # images not stored byte for byte, by
                                          # reason: "converted" (a format TensorFlow
                                          # cannot decode, stored as lossless PNG),
                                          # "max_side" (downscaled, stored as JPEG)
          "skipped": [{"file": "x.jpg", "image_id": 7, "reason": "...",
                       "path": "/abs/images/x.jpg"}, ...],
          "unused_classes": [{"index": 4, "coco_id": 5, "name": "airplane"}],
                                          # classes no written image has: never positive
          "repeated_files": [{"file": "a.jpg", "image_ids": [3, 9]}],
                                          # one file_name under several image ids
          "exif_orientation": [{"file": "p.jpg", "image_id": 7, "orientation": 6}],
                                          # EXIF orientation tag not 1 (not applied,
                                          # as TensorFlow's decoders do not apply it)
          "source": {"annotations": "...", "images": "..."},
          "options": {"max_side": null, "keep_empty": false}
        }
      }
    }

``skipped`` lists every recorded problem: image files (``file`` is the
annotations' ``file_name``, ``path`` the path tried) and single annotations
(``file`` is the annotations file, with an extra ``annotation_id``). Beside the shards, hidden
``.SPLIT-00000-of-000NN.done.json`` sidecars let an interrupted build resume
(see :mod:`kerasmlic.data.build`); readers ignore them.
"""

import hashlib
import json
import os
import tempfile

from kerasmlic.errors import UsageError

MANIFEST_NAME = "dataset.json"
FORMAT_VERSION = 1

_LOADED = {}  # absolute data folder -> its manifest, as last loaded by this process


def loaded_data_dirs():
    """Return the shard folders whose ``dataset.json`` this process has loaded.

    When a read of a shard fails (:mod:`kerasmlic.data.verify`), these are the
    folders whose shards are checked to name the bad one.

    Returns:
        A dict: absolute folder path → its manifest, the most recently
        loaded last.
    """
    return dict(_LOADED)


def manifest_path(data_dir):
    """Return the path of ``dataset.json`` in a shard folder."""
    return os.path.join(data_dir, MANIFEST_NAME)


def write_json_atomic(path, obj, *, compact=False, mode=0o644):
    """Write JSON to a temporary file in the same folder, then rename it into place.

    Args:
        path: Destination file.
        obj: A JSON-serialisable object.
        compact: No spaces or indentation (COCO annotation files); otherwise
            indented for people to read (manifests).
        mode: File permissions; mkstemp creates 0600 files, and a manifest is
            shared data like the shards.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            if compact:
                json.dump(obj, f, separators=(",", ":"))
            else:
                json.dump(obj, f, indent=1)
            f.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_manifest(data_dir):
    """Read and check a shard folder's ``dataset.json``.

    Args:
        data_dir: Folder written by ``kerasmlic build``.

    Returns:
        The manifest dict.

    Raises:
        UsageError: The folder or its manifest is missing or unreadable.
    """
    if not os.path.isdir(data_dir):
        raise UsageError(f"data folder {data_dir!r} does not exist")
    path = manifest_path(data_dir)
    if not os.path.isfile(path):
        raise UsageError(f"{path!r} not found: is {data_dir!r} a folder made by `kerasmlic build`?")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path!r}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path!r} is not a kerasmlic dataset.json (format {FORMAT_VERSION})")
    key = os.path.abspath(data_dir)
    _LOADED.pop(key, None)  # most recently loaded last
    _LOADED[key] = manifest
    return manifest


def split_info(manifest, split, data_dir="."):
    """Return one split's entry of a manifest.

    Raises:
        UsageError: The split was not built into this folder.
    """
    splits = manifest.get("splits", {})
    if split not in splits:
        built = ", ".join(sorted(splits)) or "none"
        raise UsageError(f"split {split!r} not found in {data_dir!r} (built splits: {built})")
    return splits[split]


def shard_paths(data_dir, split, manifest=None):
    """Return the full paths of a split's shards, in manifest order."""
    manifest = manifest or load_manifest(data_dir)
    info = split_info(manifest, split, data_dir)
    return [os.path.join(data_dir, s["file"]) for s in info["shards"]]


def class_names(manifest):
    """Return class names in contiguous index order."""
    return [c["name"] for c in sorted(manifest["classes"], key=lambda c: c["index"])]


def file_sha256(path):
    """Return the hex sha256 of a file, read in 1 MiB blocks.

    Args:
        path: A file.

    Returns:
        The digest as 64 hex characters (what ``dataset.json`` records per shard).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
