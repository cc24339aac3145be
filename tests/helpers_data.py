"""Test helper: a tiny COCO-format dataset of real JPEG files.

``write_tiny_coco`` writes ``root/images/*.jpg`` and ``root/instances.json``.
Each label is a filled rectangle of its class's colour on a noisy gray
background, and its annotation's bbox/area match the rectangle, so pipelines
can learn from it and area fractions can be checked by hand.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from kerasmlic.categories import COCO_CATEGORIES

PALETTE = [
    (220, 20, 20),
    (20, 200, 20),
    (20, 20, 220),
    (230, 230, 20),
    (230, 20, 230),
    (20, 220, 220),
    (250, 140, 0),
    (120, 0, 200),
    (0, 0, 0),
    (255, 255, 255),
]


@dataclass
class TinyCoco:
    """Paths and contents of a tiny dataset.

    Attributes:
        root: The folder everything was written under.
        annotations: Path of the instances JSON.
        images: Folder of the image files.
        dataset: The JSON dict that was written.
        labels: ``{image_id: sorted list of coco category ids}``.
        areas: ``{image_id: {coco category id: summed area / image area}}``.
        instances: ``{image_id: {coco category id: instance count}}``.
    """

    root: str
    annotations: str
    images: str
    dataset: dict
    labels: dict = field(default_factory=dict)
    areas: dict = field(default_factory=dict)
    instances: dict = field(default_factory=dict)

    def save(self):
        """Rewrite the annotations file from ``self.dataset`` (after a test edits it)."""
        with open(self.annotations, "w") as f:
            json.dump(self.dataset, f)

    def path_of(self, image_id):
        """Return the file path of an image id."""
        for img in self.dataset["images"]:
            if img["id"] == image_id:
                return os.path.join(self.images, img["file_name"])
        raise KeyError(image_id)


def write_tiny_coco(
    root,
    num_images=8,
    image_size=32,
    seed=0,
    num_classes=5,
    *,
    category_ids=None,
    num_empty=0,
    first_id=1,
    max_labels=3,
):
    """Write a tiny COCO instances dataset of real JPEGs.

    Args:
        root: Output folder (created).
        num_images: Images with at least one label.
        image_size: Side of the square images in pixels.
        seed: Random seed; the same arguments give identical files.
        num_classes: Number of categories (ignored when ``category_ids`` is given).
        category_ids: Sparse COCO category ids to use, e.g. ``[1, 5, 90]``;
            default: the first ``num_classes`` real COCO ids.
        num_empty: Extra images without any annotation (ids after the others).
        first_id: Image id of the first image; ids step by 3 (sparse on purpose).
        max_labels: Most distinct labels per image.

    Returns:
        A :class:`TinyCoco`.
    """
    rng = np.random.default_rng(seed)
    root = os.fspath(root)
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    if category_ids is None:
        cats = [
            {"id": cid, "name": name, "supercategory": sup}
            for cid, name, sup in COCO_CATEGORIES[:num_classes]
        ]
    else:
        cats = [
            {"id": int(cid), "name": f"class{cid}", "supercategory": "thing"}
            for cid in category_ids
        ]
    colours = {
        c["id"]: PALETTE[i] if i < len(PALETTE) else tuple(int(v) for v in rng.integers(0, 256, 3))
        for i, c in enumerate(cats)
    }
    tiny = TinyCoco(root, os.path.join(root, "instances.json"), images_dir, {})
    images, annotations = [], []
    size = image_size
    for n in range(num_images + num_empty):
        image_id = first_id + 3 * n
        file_name = f"{image_id:012d}.jpg"
        pixels = rng.integers(100, 156, (size, size, 3)).astype(np.uint8)
        labelled = n < num_images
        k = int(rng.integers(1, min(max_labels, len(cats)) + 1)) if labelled else 0
        chosen = sorted(rng.choice(len(cats), size=k, replace=False).tolist())
        tiny.labels[image_id] = sorted(cats[i]["id"] for i in chosen)
        tiny.areas[image_id], tiny.instances[image_id] = {}, {}
        for i in chosen:
            cid = cats[i]["id"]
            copies = 2 if rng.random() < 0.3 else 1
            for _ in range(copies):
                w = int(rng.integers(size // 6, size // 2 + 1))
                h = int(rng.integers(size // 6, size // 2 + 1))
                x = int(rng.integers(0, size - w + 1))
                y = int(rng.integers(0, size - h + 1))
                pixels[y : y + h, x : x + w] = colours[cid]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cid,
                        "bbox": [x, y, w, h],
                        "area": float(w * h),
                        "iscrowd": 0,
                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    }
                )
                tiny.areas[image_id][cid] = tiny.areas[image_id].get(cid, 0.0) + w * h / size**2
                tiny.instances[image_id][cid] = tiny.instances[image_id].get(cid, 0) + 1
        Image.fromarray(pixels).save(os.path.join(images_dir, file_name), quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
    tiny.dataset = {
        "info": {"description": "kerasmlic tiny test set"},
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }
    tiny.save()
    return tiny
