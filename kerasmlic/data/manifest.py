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
          "reencoded": {"mode": 2, "format": 1},  # re-encoded images by reason
                                          # ("mode", "format", "max_side")
          "skipped": [{"file": "x.jpg", "image_id": 7, "reason": "..."}, ...],
          "source": {"annotations": "...", "images": "..."},
          "options": {"max_side": null, "keep_empty": false}
        }
      }
    }

``skipped`` lists every recorded problem: image files (``file`` is the
annotations' ``file_name``) and single annotations (``file`` is the
annotations file, with an extra ``annotation_id``). Beside the shards, hidden
``.SPLIT-00000-of-000NN.done.json`` sidecars let an interrupted build resume
(see :mod:`kerasmlic.data.build`); readers ignore them.
"""

import json
import os
import tempfile

from kerasmlic.errors import UsageError

MANIFEST_NAME = "dataset.json"
FORMAT_VERSION = 1


def manifest_path(data_dir):
    """Return the path of ``dataset.json`` in a shard folder."""
    return os.path.join(data_dir, MANIFEST_NAME)


def write_json_atomic(path, obj):
    """Write JSON to a temporary file in the same folder, then rename it into place.

    Args:
        path: Destination file.
        obj: A JSON-serialisable object.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        # mkstemp creates 0600 files; a manifest is shared data like the shards.
        os.chmod(tmp, 0o644)
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
