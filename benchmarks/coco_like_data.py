"""COCO-like JPEGs and their shards, the data of the input-pipeline benchmarks.

``benchmarks/input_pipeline.py`` and ``benchmarks/data_service.py`` time
their pipelines on these: about 1000 JPEGs whose size, texture and
compressed bytes resemble COCO's (longer side mostly 640 px, 1/f luma, smooth
chroma, a few flat shapes), with COCO annotations, built into shards by
``kerasmlic``'s own ``build_split``, plus the ``--max-side`` copy of them. Both
are cached under the work folder and rebuilt when ``GENERATOR_VERSION`` or the
image count changes.

Example::

    coco_dir, shards = prepare_data("benchmarks/_work/input_pipeline", 1000, workers=2)
"""

import io
import json
import multiprocessing
import os
import time

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 1
"""Bump when the generated images change, so the cached data are rebuilt."""


def _noise(rng, cells, w, h, channels):
    """Gaussian noise on a coarse grid, upsampled bicubically to (h, w)."""
    gh, gw = max(2, cells * h // max(w, h)), max(2, cells * w // max(w, h))
    small = rng.normal(0, 1, (gh, gw, channels)).astype(np.float32)
    return np.stack(
        [
            np.asarray(Image.fromarray(small[..., c]).resize((w, h), Image.BICUBIC))
            for c in range(channels)
        ],
        axis=-1,
    )


def coco_like_jpeg(index, seed=0):
    """One COCO-like JPEG: 1/f luma texture, smooth chroma, a few flat shapes."""
    rng = np.random.default_rng([seed, index])
    long = 640 if rng.random() < 0.8 else int(rng.integers(320, 641))
    short = int(long * rng.choice([0.75, 0.667, 0.75, 0.5625, rng.uniform(0.5, 1.0)]))
    w, h = (long, short) if rng.random() < 0.75 else (short, long)
    luma, amp = np.zeros((h, w, 1), np.float32), 45.0
    for cells in (3, 6, 12, 24, 48, 96, 192, 384):
        luma += amp * _noise(rng, cells, w, h, 1)
        amp *= 0.92
    luma += rng.normal(0, 6, luma.shape)
    chroma = 25 * _noise(rng, 4, w, h, 3) + 12 * _noise(rng, 16, w, h, 3)
    pixels = np.clip(rng.uniform(70, 180, 3) + luma + chroma, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    labels = sorted(rng.choice(80, size=int(rng.integers(1, 6)), replace=False).tolist())
    return buf.getvalue(), w, h, labels


def _write_image(args):
    folder, index = args
    data, w, h, labels = coco_like_jpeg(index)
    name = f"{index + 1:012d}.jpg"
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(folder, name))
    return index + 1, name, w, h, labels


def prepare_data(work, num_images, workers):
    """Generate the JPEGs + COCO annotations and build the shards (cached)."""
    from kerasmlic.categories import COCO_CATEGORIES, coco_categories_json
    from kerasmlic.data import manifest

    coco_dir = os.path.join(work, "coco")
    shards = os.path.join(work, "shards")
    stamp = os.path.join(work, "stamp.json")
    want = {"version": GENERATOR_VERSION, "images": num_images}
    if os.path.isfile(stamp) and json.load(open(stamp)) == want:
        if os.path.isfile(manifest.manifest_path(shards)):
            return coco_dir, shards
    os.makedirs(os.path.join(coco_dir, "train"), exist_ok=True)
    print(f"generating {num_images} COCO-like JPEGs under {coco_dir} ...", flush=True)
    t0 = time.perf_counter()
    jobs = [(os.path.join(coco_dir, "train"), i) for i in range(num_images)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rows = pool.map(_write_image, jobs, chunksize=16)
    images, annotations = [], []
    for image_id, name, w, h, labels in rows:
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for cls in labels:
            bw, bh = w // 4, h // 4
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORIES[cls][0],
                    "bbox": [0, 0, bw, bh],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                    "segmentation": [[0, 0, bw, 0, bw, bh, 0, bh]],
                }
            )
    ann_path = os.path.join(coco_dir, "annotations", "instances_train.json")
    coco = {"images": images, "annotations": annotations, "categories": coco_categories_json()}
    manifest.write_json_atomic(ann_path, coco)
    print(f"  {time.perf_counter() - t0:.0f} s; building shards ...", flush=True)
    from kerasmlic.data.build import build_split

    build_split(
        ann_path, os.path.join(coco_dir, "train"), "train", shards, workers=workers, progress=False
    )
    manifest.write_json_atomic(stamp, want)
    return coco_dir, shards


def prepare_max_side(work, coco_dir, max_side, workers):
    """Build the ``--max-side`` shards of the same JPEGs, and write their images as files.

    The PyDataset reads files, so the re-encoded images are written out from
    the shards: (a), (b) and (c) then see the same bytes.

    Returns:
        ``(shards folder, images folder)``.
    """
    import tensorflow as tf

    from kerasmlic.data import manifest, schema
    from kerasmlic.data.build import build_split

    shards = os.path.join(work, f"shards-max{max_side}")
    files = os.path.join(work, f"files-max{max_side}")
    stamp = os.path.join(work, f"stamp-max{max_side}.json")
    want = {
        "version": GENERATOR_VERSION,
        "source": json.load(open(os.path.join(work, "stamp.json"))),
    }
    if os.path.isfile(stamp) and json.load(open(stamp)) == want:
        return shards, files
    print(f"building --max-side {max_side} shards under {shards} ...", flush=True)
    ann = os.path.join(coco_dir, "annotations", "instances_train.json")
    build_split(
        ann,
        os.path.join(coco_dir, "train"),
        "train",
        shards,
        max_side=max_side,
        workers=workers,
        progress=False,
    )
    os.makedirs(files, exist_ok=True)
    for path in manifest.shard_paths(shards, "train"):
        for record in tf.data.TFRecordDataset(path):
            example = schema.parse_example(record)
            name = f"{int(example[schema.IMAGE_ID]):012d}.jpg"
            with open(os.path.join(files, name), "wb") as f:
                f.write(example[schema.IMAGE_ENCODED].numpy())
    manifest.write_json_atomic(stamp, want)
    return shards, files


def describe(shards, images_dir):
    """One line on a data set: image count, mean file size, sides."""
    from kerasmlic.data import manifest

    info = manifest.split_info(manifest.load_manifest(shards), "train")
    names = [f for f in os.listdir(images_dir) if f.endswith(".jpg")]
    sizes = [os.path.getsize(os.path.join(images_dir, f)) for f in names]
    longest = []
    for f in names[:200]:
        with Image.open(os.path.join(images_dir, f)) as img:
            longest.append(max(img.size))
    return (
        f"{info['num_examples']} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB, "
        f"longer side median {int(np.median(longest))} px, {len(info['shards'])} shards"
    )
