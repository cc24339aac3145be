"""Load and validate a COCO instances file; turn it into per-image label sets.

Any COCO ``instances_*.json`` (2014, 2017, or one written by ``kerasmlic synth``)
is read with :mod:`json`, checked and cleaned here, and the cleaned dict is
indexed by ``pycocotools``. Cleaning first matters because ``COCO()`` itself
trusts its input (and prints to stdout): a wrong type becomes a traceback deep
inside it.

What is an error and what is a recorded skip:

* A file that is not COCO at all — missing, not JSON, no ``images`` /
  ``annotations`` / ``categories`` list, an entry of the wrong type, no
  categories, a repeated category id — raises :class:`UsageError`. So does an
  image or category id outside the signed 64-bit range (JSON integers are
  unbounded; the shards store ids as int64), before any shard is written.
* A problem with one entry of an otherwise good file is a *skip* (a dict with
  ``file``, ``image_id``, ``reason``) and never loses a valid image:

  - a repeated image id: the first entry is kept, later ones are skipped;
  - an annotation on an image id not in ``images``: the annotation is dropped;
  - an annotation with a category id not in ``categories``: the annotation is
    dropped, the image keeps its other labels.

  Annotation skips name the annotations file in ``file`` (that is where the
  problem is) and carry ``annotation_id``.

Sparse category ids map to contiguous indices in ascending id order (COCO's
1..90 with 80 used become 0..79). Crowd annotations count as labels.
"""

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field

from kerasmlic.errors import UsageError


@dataclass
class ImageLabels:
    """One image entry of the annotations and its aggregated labels.

    Attributes:
        image_id: COCO image id.
        file_name: ``file_name`` as written in the annotations.
        width: Declared width in pixels, or ``None`` when the file has none.
        height: Declared height in pixels, or ``None``.
        label_ids: Contiguous class indices, ascending, no repeats.
        label_areas: Per label, summed instance area over the declared image area
            (0 when the image has no declared size). Overlapping instances can
            make it exceed 1; it is not clipped.
        label_instances: Per label, the number of instances (crowd included).
    """

    image_id: int
    file_name: str
    width: int | None
    height: int | None
    label_ids: list = field(default_factory=list)
    label_areas: list = field(default_factory=list)
    label_instances: list = field(default_factory=list)


@dataclass
class CocoLabels:
    """A validated annotations file, reduced to what a classifier needs.

    Attributes:
        classes: Class list in ``dataset.json`` form (``index``, ``coco_id``,
            ``name``, ``supercategory``), in category-id order.
        images: :class:`ImageLabels` for every distinct image id, ascending id.
        skipped: Recorded problems with single entries (see the module doc).
        coco: The ``pycocotools.coco.COCO`` index of the cleaned file.
    """

    classes: list
    images: list
    skipped: list
    coco: object

    @property
    def coco_id_to_index(self):
        """Return ``{coco category id: contiguous index}``."""
        return {c["coco_id"]: c["index"] for c in self.classes}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _out_of_int64(value):
    return not INT64_MIN <= value <= INT64_MAX


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_annotations(path):
    """Read an annotations file and check its top-level COCO structure.

    Args:
        path: Path of a COCO instances JSON file.

    Returns:
        The parsed dict.

    Raises:
        UsageError: The file is missing, not JSON, or not a COCO instances file.
    """
    if not os.path.isfile(path):
        raise UsageError(f"annotations file {path!r} not found")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        # ValueError covers JSONDecodeError and UnicodeDecodeError.
        raise UsageError(f"annotations file {path!r} is not valid JSON: {e}") from None
    check_structure(data, path)
    return data


def check_structure(data, name="annotations"):
    """Check that a parsed dict has COCO's lists with entries of the right types.

    Args:
        data: The parsed JSON.
        name: How to name the file in messages.

    Raises:
        UsageError: On the first structural problem, in one line.
    """

    def fail(msg):
        raise UsageError(f"{name!r} is not a COCO instances file: {msg}")

    if not isinstance(data, dict):
        fail(f"top level is a {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            fail(f"no {key!r} list")
        if not isinstance(data[key], list):
            fail(f"{key!r} is a {type(data[key]).__name__}, expected a list")
    if not data["categories"]:
        fail("'categories' is empty")
    seen = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict):
            fail(f"categories[{i}] is not an object")
        if not _is_int(cat.get("id")):
            fail(f"categories[{i}].id must be an integer, got {cat.get('id')!r}")
        if not isinstance(cat.get("name"), str):
            fail(f"categories[{i}].name must be a string")
        if not isinstance(cat.get("supercategory", ""), str):
            fail(f"categories[{i}].supercategory must be a string")
        if _out_of_int64(cat["id"]):
            fail(f"categories[{i}].id {cat['id']} is outside the 64-bit integer range")
        if cat["id"] in seen:
            fail(f"category id {cat['id']} appears twice")
        seen.add(cat["id"])
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            fail(f"images[{i}] is not an object")
        if not _is_int(img.get("id")):
            fail(f"images[{i}].id must be an integer, got {img.get('id')!r}")
        if _out_of_int64(img["id"]):
            fail(
                f"images[{i}].id {img['id']} ({img.get('file_name')!r}) is outside the "
                "64-bit integer range that shards store ids in"
            )
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            fail(f"images[{i}].file_name must be a non-empty string")
        for key in ("width", "height"):
            if img.get(key) is not None and not _is_number(img[key]):
                fail(f"images[{i}].{key} must be a number, got {img[key]!r}")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            fail(f"annotations[{i}] is not an object")
        for key in ("image_id", "category_id"):
            if not _is_int(ann.get(key)):
                fail(f"annotations[{i}].{key} must be an integer, got {ann.get(key)!r}")
            if _out_of_int64(ann[key]):
                fail(f"annotations[{i}].{key} {ann[key]} is outside the 64-bit integer range")
        if ann.get("area") is not None and not _is_number(ann["area"]):
            fail(f"annotations[{i}].area must be a number, got {ann['area']!r}")


def _annotation_area(ann):
    """Instance area in pixels: ``area``, else the bbox, else 0."""
    area = ann.get("area")
    if area is None:
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
            area = bbox[2] * bbox[3]
        else:
            area = 0.0
    area = float(area)
    # A negative or NaN area carries no size information; it still counts as a label.
    return area if math.isfinite(area) and area > 0 else 0.0


def _make_coco(dataset):
    """Index a cleaned dataset dict with pycocotools, keeping its stdout quiet."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def load_coco(path):
    """Read, validate and index a COCO instances file.

    Args:
        path: Path of the annotations JSON.

    Returns:
        A :class:`CocoLabels`.

    Raises:
        UsageError: The file is not a COCO instances file (see the module doc).
    """
    return labels_from_dataset(read_annotations(path), os.path.basename(path))


def labels_from_dataset(data, source_name="annotations"):
    """Clean a parsed COCO dict and aggregate labels per image.

    Args:
        data: A parsed COCO instances dict.
        source_name: File name recorded in annotation-level skips.

    Returns:
        A :class:`CocoLabels`.

    Raises:
        UsageError: ``data`` is not a COCO instances dict.
    """
    check_structure(data, source_name)
    skipped = []

    categories = sorted(data["categories"], key=lambda c: c["id"])
    classes = [
        {
            "index": i,
            "coco_id": c["id"],
            "name": c["name"],
            "supercategory": c.get("supercategory", ""),
        }
        for i, c in enumerate(categories)
    ]

    # Minimal copies: pycocotools needs only these fields, and dropping the
    # segmentation polygons keeps memory down on the real 2017 train file.
    images = {}
    for img in data["images"]:
        image_id = img["id"]
        if image_id in images:
            first = images[image_id]["file_name"]
            skipped.append(
                {
                    "file": img["file_name"],
                    "image_id": image_id,
                    "reason": f"duplicate image id {image_id} (first used by {first!r}); "
                    "this entry is ignored",
                }
            )
            continue
        images[image_id] = {
            "id": image_id,
            "file_name": img["file_name"],
            "width": img.get("width"),
            "height": img.get("height"),
        }

    known_categories = {c["coco_id"] for c in classes}
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", f"#{i}")
        image_id, cat_id = ann["image_id"], ann["category_id"]
        if image_id not in images:
            skipped.append(
                {
                    "file": source_name,
                    "image_id": image_id,
                    "annotation_id": ann_id,
                    "reason": f"annotation {ann_id} refers to image id {image_id}, "
                    "which is not in 'images'; annotation ignored",
                }
            )
            continue
        if cat_id not in known_categories:
            skipped.append(
                {
                    "file": source_name,
                    "image_id": image_id,
                    "annotation_id": ann_id,
                    "reason": f"annotation {ann_id} on {images[image_id]['file_name']!r} has "
                    f"unknown category id {cat_id}; annotation ignored",
                }
            )
            continue
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_id,
                "area": _annotation_area(ann),
                "iscrowd": 1 if ann.get("iscrowd") else 0,
            }
        )

    cleaned = {
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [
            {"id": c["coco_id"], "name": c["name"], "supercategory": c["supercategory"]}
            for c in classes
        ],
    }
    coco = _make_coco(cleaned)
    index_of = {c["coco_id"]: c["index"] for c in classes}

    result = []
    for image_id in sorted(coco.imgs):
        img = coco.imgs[image_id]
        width, height = img["width"], img["height"]
        area = float(width) * float(height) if width and height and width > 0 else 0.0
        per_class = {}
        for ann in coco.imgToAnns.get(image_id, []):
            idx = index_of[ann["category_id"]]
            total, count = per_class.get(idx, (0.0, 0))
            per_class[idx] = (total + ann["area"], count + 1)
        ids = sorted(per_class)
        result.append(
            ImageLabels(
                image_id=image_id,
                file_name=img["file_name"],
                width=None if width is None else int(width),
                height=None if height is None else int(height),
                label_ids=ids,
                label_areas=[per_class[i][0] / area if area > 0 else 0.0 for i in ids],
                label_instances=[per_class[i][1] for i in ids],
            )
        )
    return CocoLabels(classes=classes, images=result, skipped=skipped, coco=coco)
