"""The synthesize entry point: checks the arguments and writes every split.

Each split's images are written straight to their file names, then its
annotation file is renamed into place (what marks the split complete), then
the contact sheet. Every image comes from its own random stream keyed by
(seed, split, index), so a seed gives byte-identical files and a val image
does not depend on how many train images were asked for.
"""

import io
import os
import re
import time

import numpy as np
from PIL import Image

from kerasmlic.categories import COCO_CATEGORIES, coco_categories_json
from kerasmlic.data.synth.catalog import NAMES
from kerasmlic.data.synth.coco_output import (
    coco_segmentation,
    encode_jpeg,
    write_compact_json_atomic,
)
from kerasmlic.data.synth.rendering import category_swatches, generate_image
from kerasmlic.errors import UsageError

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_IMAGES_PER_SPLIT = 1_000_000
SPLITS = ("train", "val", "test")

_FILE_RE = re.compile(r"^\d{12}\.jpg$")
_OWNED = {"annotations", "train", "val", "test", "contact_sheet.png"}


def _check_args(out_dir, train, val, image_size, seed, test=0):
    numbers = (("train", train), ("val", val), ("test", test))
    for name, v in (*numbers, ("image_size", image_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise UsageError(f"{name} must be an integer, got {v!r}")
    for name, v in numbers:
        if v < 0 or v > MAX_IMAGES_PER_SPLIT:
            raise UsageError(f"--{name} must be between 0 and {MAX_IMAGES_PER_SPLIT}, got {v}")
    if train + val + test == 0:
        raise UsageError("--train, --val and --test are all 0: nothing to generate")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UsageError(
            f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} px, "
            f"got {image_size}"
        )
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir!r} exists and is not a folder")
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - _OWNED)
        if foreign:
            raise UsageError(
                f"{out_dir!r} is not empty and not a synth output "
                f"(found {foreign[0]!r}); pick a new folder"
            )


def _split_images(
    out_dir, split, split_code, n, first_id, first_ann_id, image_size, seed, progress, keep
):
    """Generate one split's images and its COCO dict.

    Args:
        out_dir: Output folder.
        split: Split name, the image folder's name.
        split_code: Number that keys this split's random streams.
        n: Number of images.
        first_id: Image id of the first image (ids are unique across splits).
        first_ann_id: Annotation id of the first annotation.
        image_size: Image side in pixels.
        seed: Random seed.
        progress: Show a progress bar.
        keep: How many of the first images to return decoded for the contact sheet.

    Returns:
        ``(coco dict, samples)`` with samples ``[(PIL image, objects, scene)]``.
    """
    from tqdm import tqdm

    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations, samples = [], [], []
    ann_id = first_ann_id
    names = set()
    for i in tqdm(range(n), desc=f"synth {split}", unit="img", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, split_code, i])
        pixels, objects, scene = generate_image(rng, image_size)
        image_id = first_id + i
        file_name = f"{image_id:012d}.jpg"
        names.add(file_name)
        data = encode_jpeg(pixels)
        # Images go straight to their names: the annotations file, renamed
        # into place last, is what marks a split as complete.
        with open(os.path.join(img_dir, file_name), "wb") as f:
            f.write(data)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image_size,
                "width": image_size,
                "license": 1,
                "scene": scene,
            }
        )
        for obj in objects:
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORIES[obj["category"]][0],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "segmentation": coco_segmentation(obj, image_size),
                    "iscrowd": obj["iscrowd"],
                }
            )
            ann_id += 1
        if len(samples) < keep:
            samples.append((Image.open(io.BytesIO(data)).convert("RGB"), objects, scene))
    # Files a bigger earlier run left behind would otherwise look like images.
    for f in os.listdir(img_dir):
        if _FILE_RE.match(f) and f not in names:
            os.remove(os.path.join(img_dir, f))
    coco = {
        "info": {
            "description": (
                f"kerasmlic synthetic COCO-format dataset ({split}, seed {seed}, {image_size} px)"
            ),
            "url": "",
            "version": "1.0",
            "year": 2025,
            "contributor": "kerasmlic synth",
            "date_created": "",
        },
        "licenses": [
            {
                "id": 1,
                "name": "CC0 1.0 (synthetic)",
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories_json(),
    }
    return coco, samples


def _split_summary(coco, ann_path, img_dir):
    per_image = {}
    crowd = 0
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], set()).add(a["category_id"])
        crowd += a["iscrowd"]
    n = len(coco["images"])
    return {
        "images": n,
        "annotations": len(coco["annotations"]),
        "crowd_annotations": crowd,
        "empty_images": n - len(per_image),
        "mean_labels_per_image": (sum(len(v) for v in per_image.values()) / n) if n else 0.0,
        "annotations_file": ann_path,
        "images_dir": img_dir,
    }


def synthesize(
    out_dir,
    *,
    train=4000,
    val=1000,
    test=0,
    image_size=64,
    seed=0,
    contact_sheet=True,
    progress=True,
):
    """Write the built-in synthetic dataset in COCO layout.

    Args:
        out_dir: Output folder (created; may already hold an earlier synth run,
            which is overwritten).
        train: Number of train images.
        val: Number of val images.
        test: Number of test images (0: no test split). Final figures are
            reported on it while val serves model selection. Each split
            draws from its own random streams, so adding a test split leaves
            train and val byte-identical.
        image_size: Side of the square images in pixels, 32..1024.
        seed: Random seed; the same seed gives byte-identical files.
        contact_sheet: Also write ``OUT/contact_sheet.png`` (sample train images
            with their labels, and the look of every category).
        progress: Show a progress bar on stderr.

    Returns:
        A summary dict: ``out_dir``, ``image_size``, ``seed``, per split
        (``splits[name]``) the image, annotation, crowd and empty-image counts,
        ``mean_labels_per_image`` and paths, the overall
        ``mean_labels_per_image``, ``contact_sheet`` (path or None) and
        ``elapsed_s``; flat aliases ``num_train``, ``num_val``, ``num_test``,
        ``mean_labels_train``, ``mean_labels_val`` and ``elapsed``.

    Raises:
        UsageError: Bad sizes, counts or seed, or an output folder that holds
            something else.
    """
    start = time.perf_counter()
    _check_args(out_dir, train, val, image_size, seed, test)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    counts = {"train": int(train), "val": int(val), "test": int(test)}
    summary = {"out_dir": out_dir, "image_size": int(image_size), "seed": int(seed), "splits": {}}
    samples, sample_split = [], None
    first_id, first_ann = 1, 1
    for code, split in enumerate(SPLITS):
        if split == "test" and not counts[split]:
            _remove_split(out_dir, split)  # a test split of an earlier run is not this one
            continue
        coco, got = _split_images(
            out_dir,
            split,
            code,
            counts[split],
            first_id,
            first_ann,
            int(image_size),
            int(seed),
            progress,
            keep=24 if (contact_sheet and not samples) else 0,
        )
        if got and not samples:
            samples, sample_split = got, split
        ann_path = os.path.join(out_dir, "annotations", f"instances_{split}.json")
        write_compact_json_atomic(ann_path, coco)
        summary["splits"][split] = _split_summary(coco, ann_path, os.path.join(out_dir, split))
        first_id += counts[split]
        first_ann += len(coco["annotations"])
    total = sum(s["images"] for s in summary["splits"].values())
    summary["mean_labels_per_image"] = (
        sum(s["mean_labels_per_image"] * s["images"] for s in summary["splits"].values()) / total
    )
    summary["contact_sheet"] = None
    path = os.path.join(out_dir, "contact_sheet.png")
    if contact_sheet:
        from kerasmlic.data.contact_sheet import write_contact_sheet

        title = f"kerasmlic synth: sample {sample_split} images and their labels (seed {seed})"
        write_contact_sheet(path, _sheet_samples(samples), legend=category_swatches(), title=title)
        summary["contact_sheet"] = path
    elif os.path.exists(path):
        os.remove(path)  # a sheet from an earlier run would show other images
    summary["elapsed_s"] = round(time.perf_counter() - start, 3)
    # Flat aliases, for callers that print a one-line summary.
    summary["num_train"] = summary["splits"]["train"]["images"]
    summary["num_val"] = summary["splits"]["val"]["images"]
    summary["num_test"] = summary["splits"].get("test", {}).get("images", 0)
    summary["mean_labels_train"] = summary["splits"]["train"]["mean_labels_per_image"]
    summary["mean_labels_val"] = summary["splits"]["val"]["mean_labels_per_image"]
    summary["elapsed"] = summary["elapsed_s"]
    return summary


def _remove_split(out_dir, split):
    """Delete a split's annotation file and images left by an earlier run."""
    ann = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    if os.path.exists(ann):
        os.remove(ann)  # first: without it the folder no longer counts as a split
    img_dir = os.path.join(out_dir, split)
    if os.path.isdir(img_dir):
        for f in os.listdir(img_dir):
            if _FILE_RE.match(f):
                os.remove(os.path.join(img_dir, f))
        if not os.listdir(img_dir):
            os.rmdir(img_dir)


def _sheet_samples(samples):
    """Turn generated samples into ``(image, [label lines], caption)`` for the sheet."""
    out = []
    for image, objects, scene in samples:
        per_cat = {}
        for obj in objects:
            n, crowd = per_cat.get(obj["category"], (0, False))
            per_cat[obj["category"]] = (n + 1, crowd or bool(obj["iscrowd"]))
        lines = []
        for cat in sorted(per_cat):
            n, crowd = per_cat[cat]
            lines.append(NAMES[cat] + (f" x{n}" if n > 1 else "") + (" (crowd)" if crowd else ""))
        out.append((image, lines or ["(no labels)"], scene))
    return out
