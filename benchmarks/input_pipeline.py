"""Input-pipeline throughput: kerasmlic's tf.data pipeline against two baselines.

One process, the same TFRecord shards / JPEG files, 224-px training mode,
batch 64, all cores:

(a) ``kerasmlic.data.pipeline.make_dataset(training=True)``: interleaved
    reads, shuffle, parse, random resized crop (``decode_and_crop_jpeg``),
    flip, resize, normalise, batch, prefetch. The crop is asked for
    explicitly (``data.augment.crop_scale: [0.25, 1]``), since the default
    no longer crops; ``--augment`` adds rows for the default (no crop),
    RandAugment and random erasing, with each one's CPU cost per image.
(b) decode-only limit: the same shards read and ``tf.io.decode_jpeg``-decoded
    in parallel, nothing else (no crop, resize, normalisation or batching of
    pixels).
(c) what a Keras user would otherwise write: a ``keras.utils.PyDataset``
    that opens each JPEG with PIL, takes a random resized crop, flips,
    normalises, with ``workers=2`` (threads, and separately processes).

Goals: (a) >= 0.85 x (b) and (a) >= 2 x (c). The data are ~2000 COCO-like
JPEGs (longer side mostly 640 px, quality 90, ~110 KB, 1/f-noise texture
plus flat shapes), generated once and cached under ``benchmarks/_work/``;
shards are written by ``kerasmlic.data.build.build_split``.

Usage::

    .venv/bin/python benchmarks/input_pipeline.py [--images 2000] [--seconds 20] [--repeats 3]

Each repeat times (a) and (b) in alternating ``--slice``-second windows,
each on a fresh iterator after ``--warmup`` batches, until each has run
``--seconds`` (so both see the same load from other programs), then each
(c) for ``--seconds``. The table shows the best
repeat, the median, and images per CPU second (this process and its worker
processes), which other programs on a shared machine disturb less. (a)/(b)
is the median of the per-repeat ratios; (a)/(c) compares best wall-clock
rates (the PyDataset cannot be interleaved: its queue keeps filling).

Where the time goes (one thread, these JPEGs, min of 7 runs of 200 images,
measured with ad-hoc tf.data micro-benchmarks while writing this):
``decode_jpeg`` of the whole image 1.64 ms; ``decode_and_crop_jpeg`` of the
random crop 1.47 ms (Huffman decoding of every row above the crop's bottom
is still needed, so it saves ~10%, not the crop's area share); bilinear
resize to 224 px 0.43 ms from uint8 but 0.27 ms from float32, cast included
(so ``resize_image`` casts first); flip ~0.1 ms; normalisation <0.1 ms;
parsing ~0.1 ms. A parallel ``batch`` after the map stops tf.data fusing
map and batch, and cost ~5% more CPU per image.
"""

import argparse
import io
import json
import multiprocessing
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR_VERSION = 1
A = "(a) kerasmlic make_dataset"
B = "(b) decode_jpeg only"
IMAGE_SIZE = 224
BATCH = 64
SCALE = (0.25, 1.0)
RATIO = (3 / 4, 4 / 3)
# (a)'s augmentation: the random resized crop (as before the default turned it off) and flip.
CROP_AND_FLIP = {"crop_scale": list(SCALE), "crop_ratio": list(RATIO), "flip": True}


# ---- data ---------------------------------------------------------------------------------------


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


# ---- pipelines ----------------------------------------------------------------------------------


def kerasmlic_dataset(shards, **kwargs):
    from kerasmlic.data.pipeline import make_dataset

    kwargs.setdefault("augment", CROP_AND_FLIP)
    return make_dataset(
        shards,
        "train",
        image_size=IMAGE_SIZE,
        batch_size=BATCH,
        training=True,
        repeat=True,
        **kwargs,
    )


# The augmentations whose cost --augment reports, each on top of (a)'s crop and flip.
AUGMENT_VARIANTS = {
    "(a) no crop, flip (default)": {"crop_scale": [1, 1]},
    "(a) + RandAugment 2 ops, M9": {**CROP_AND_FLIP, "randaugment": {"num_ops": 2, "magnitude": 9}},
    "(a) + random erasing p=0.25": {**CROP_AND_FLIP, "erasing": 0.25},
}


def full_decode_dataset(shards):
    """(a) with decode-then-slice instead of ``decode_and_crop_jpeg`` (diagnosis)."""
    import tensorflow as tf

    from kerasmlic.data import preprocessing

    def full_then_crop(image_bytes, scale, ratio, seed, dct_method=""):
        image = tf.io.decode_jpeg(image_bytes, channels=3, dct_method=dct_method)
        window = preprocessing.random_crop_window(tf.shape(image), scale, ratio, seed)
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    original = preprocessing.decode_random_crop
    preprocessing.decode_random_crop = full_then_crop  # read when the map is traced
    try:
        return kerasmlic_dataset(shards)
    finally:
        preprocessing.decode_random_crop = original


def decode_only_dataset(shards):
    """Read + parse the JPEG bytes + decode_jpeg in parallel; yields decoded heights."""
    import tensorflow as tf

    from kerasmlic.data import manifest, schema

    files = manifest.shard_paths(shards, "train")
    spec = {schema.IMAGE_ENCODED: schema.FEATURE_SPEC[schema.IMAGE_ENCODED]}

    def decode(record):
        data = tf.io.parse_single_example(record, spec)[schema.IMAGE_ENCODED]
        # The height needs the decoded pixels, so the decode cannot be pruned.
        return tf.shape(tf.io.decode_jpeg(data, channels=3))[0]

    ds = tf.data.Dataset.from_tensor_slices(files).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(files),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def make_py_dataset(coco_dir, workers, use_multiprocessing):
    """The PyDataset a Keras user would write: PIL decode, crop, resize, flip, scale."""
    from kerasmlic.categories import COCO_CATEGORIES

    ann = json.load(open(os.path.join(coco_dir, "annotations", "instances_train.json")))
    index = {c[0]: i for i, c in enumerate(COCO_CATEGORIES)}
    labels = {img["id"]: np.zeros(80, np.float32) for img in ann["images"]}
    for a in ann["annotations"]:
        labels[a["image_id"]][index[a["category_id"]]] = 1.0
    paths = [os.path.join(coco_dir, "train", img["file_name"]) for img in ann["images"]]
    targets = np.stack([labels[img["id"]] for img in ann["images"]])
    return PilJpegDataset(paths, targets, workers=workers, use_multiprocessing=use_multiprocessing)


class PilJpegDataset(keras.utils.PyDataset):
    """Loads JPEG files with PIL: random resized crop, flip, [0, 1] scaling.

    Endless (``num_batches`` is None) so that the timing sees steady state,
    not the enqueuer restarting at each epoch, which is the kinder setting.
    """

    def __init__(self, paths, targets, **kwargs):
        super().__init__(max_queue_size=10, **kwargs)
        self.paths, self.targets = paths, targets
        self.per_epoch = len(paths) // BATCH

    @property
    def num_batches(self):
        return None

    def _crop_box(self, rng, w, h):
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(*SCALE)
            aspect = np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1])))
            cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return x, y, x + cw, y + ch
        return 0, 0, w, h

    def __getitem__(self, idx):
        epoch, step = divmod(idx, self.per_epoch)
        order = np.random.default_rng(epoch).permutation(len(self.paths))
        rows = order[step * BATCH : (step + 1) * BATCH]
        rng = np.random.default_rng(idx)
        x = np.empty((len(rows), IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        for k, row in enumerate(rows):
            with Image.open(self.paths[row]) as img:
                img = img.convert("RGB")
                box = self._crop_box(rng, *img.size)
                img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR, box=box)
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                x[k] = np.asarray(img, np.float32) * (1.0 / 255.0)
        return x, self.targets[rows]


# ---- timing -------------------------------------------------------------------------------------


def _cpu_seconds():
    """User + system CPU seconds of this process and its live children."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def time_batches(next_batch, count, seconds, warmup):
    """Time ``next_batch()`` for ``seconds`` after ``warmup`` batches.

    Returns:
        ``(images per wall second, images per CPU second)``; the CPU figure
        counts this process and its worker processes, so it is less
        disturbed by other programs sharing the cores.
    """
    for _ in range(warmup):
        next_batch()
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - t0 < seconds:
        n += count(next_batch())
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return n / wall, n / max(cpu, 1e-9)


def _count(batch):
    import tensorflow as tf

    return int(tf.nest.flatten(batch)[0].shape[0])


def run_tf_interleaved(factories, seconds, warmup, slice_s):
    """Time several tf.data pipelines in alternating ``slice_s`` windows.

    Other programs on a shared machine come and go; alternating windows
    exposes every pipeline to the same conditions, so their ratio holds up
    better than that of back-to-back runs. Each window starts a fresh
    iterator (after deleting the last one, so no idle pipeline keeps
    working in the background) and skips ``warmup`` batches before timing.

    Returns:
        ``{name: (images per wall second, images per CPU second)}``.
    """
    datasets = {name: make() for name, make in factories.items()}
    totals = {name: [0, 0.0, 0.0] for name in datasets}
    while min(t[1] for t in totals.values()) < seconds:
        for name, ds in datasets.items():
            it = iter(ds)
            for _ in range(warmup):
                next(it)
            n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
            while time.perf_counter() - t0 < slice_s:
                n += _count(next(it))
            totals[name][0] += n
            totals[name][1] += time.perf_counter() - t0
            totals[name][2] += _cpu_seconds() - c0
            del it
    return {name: (n / wall, n / max(cpu, 1e-9)) for name, (n, wall, cpu) in totals.items()}


def run_pydataset(py_ds, seconds, warmup):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    # What model.fit does with a PyDataset: an adapter whose enqueuer runs the workers.
    adapter = PyDatasetAdapter(py_ds, shuffle=False)
    adapter.on_epoch_begin()
    it = adapter.get_numpy_iterator()
    try:
        return time_batches(lambda: next(it), lambda b: len(b[0]), seconds, warmup)
    finally:
        adapter.on_epoch_end()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--slice", type=float, default=10.0, help="seconds per alternating window for (a), (b)"
    )
    parser.add_argument("--work", default=os.path.join(HERE, "_work", "input_pipeline"))
    parser.add_argument(
        "--variants", action="store_true", help="also time kerasmlic variants (diagnosis)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated name substrings to time (diagnosis)"
    )
    parser.add_argument(
        "--augment", action="store_true", help="also time (a) with each augmentation op"
    )
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    coco_dir, shards = prepare_data(args.work, args.images, workers=cores)

    import tensorflow as tf

    from kerasmlic.data import manifest

    info = manifest.split_info(manifest.load_manifest(shards), "train")
    sizes = [
        os.path.getsize(os.path.join(coco_dir, "train", f))
        for f in os.listdir(os.path.join(coco_dir, "train"))
    ]
    print(
        f"data: {info['num_examples']} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB, "
        f"{len(info['shards'])} shards; {cores} cores; TF {tf.__version__}; "
        f"{IMAGE_SIZE}-px training mode, batch {BATCH}; load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    tf_configs = {
        A: lambda: kerasmlic_dataset(shards),
        B: lambda: decode_only_dataset(shards),
    }
    if args.variants:
        tf_configs["(a) but full decode, then crop"] = lambda: full_decode_dataset(shards)
        tf_configs["(a) + dct INTEGER_FAST"] = lambda: kerasmlic_dataset(
            shards, dct_method="INTEGER_FAST"
        )
        tf_configs["(a) + antialias"] = lambda: kerasmlic_dataset(shards, antialias=True)
    if args.augment:
        for name, augment in AUGMENT_VARIANTS.items():
            tf_configs[name] = lambda augment=augment: kerasmlic_dataset(shards, augment=augment)
    py_configs = {
        "(c) PyDataset+PIL, 2 threads": (2, False),
        "(c) PyDataset+PIL, 2 processes": (2, True),
    }
    if args.only:
        keep = [w.strip() for w in args.only.split(",")]
        tf_configs = {k: v for k, v in tf_configs.items() if any(w in k for w in keep)}
        py_configs = {k: v for k, v in py_configs.items() if any(w in k for w in keep)}

    results = {name: [] for name in [*tf_configs, *py_configs]}
    for r in range(args.repeats):
        load = os.getloadavg()[0]
        timed = run_tf_interleaved(tf_configs, args.seconds, args.warmup, args.slice)
        for name, (workers, processes) in py_configs.items():
            py_ds = make_py_dataset(coco_dir, workers, processes)
            timed[name] = run_pydataset(py_ds, args.seconds, 2)
        for name, (rate, cpu_rate) in timed.items():
            results[name].append((rate, cpu_rate))
            print(
                f"  run {r + 1}: {name:32s} {rate:7.1f} img/s {cpu_rate:7.1f} img/cpu-s"
                f"  (load avg {load:.1f} at start)",
                flush=True,
            )

    best = {name: max(r for r, _ in v) for name, v in results.items()}
    per_cpu = {name: max(c for _, c in v) for name, v in results.items()}
    print()
    print(f"{'pipeline':34s} {'best img/s':>10s} {'median':>8s} {'img/cpu-s':>10s}")
    for name, runs in results.items():
        median = statistics.median(r for r, _ in runs)
        print(f"{name:34s} {best[name]:10.1f} {median:8.1f} {per_cpu[name]:10.1f}")
    if A not in results:
        return 0
    extra = [k for k in AUGMENT_VARIANTS if k in results]
    if extra:
        print()
        print("cost per image against (a), CPU milliseconds (from img/cpu-s):")
        for name in extra:
            cost = 1e3 / per_cpu[name] - 1e3 / per_cpu[A]
            print(f"  {name:34s} {cost:+6.2f} ms  ({per_cpu[name] / per_cpu[A]:.2f}x (a)'s rate)")
    print()
    if B in results:
        paired = [ra / rb for (ra, _), (rb, _) in zip(results[A], results[B], strict=True)]
        ratio = statistics.median(paired)
        print(
            f"(a)/(b) = {ratio:.2f}  median of per-run ratios, (a) and (b) timed in alternating"
            f" {args.slice:g}-s windows: {', '.join(f'{x:.2f}' for x in paired)};"
            f" per CPU second {per_cpu[A] / per_cpu[B]:.2f}"
        )
        print(f"           goal >= 0.85: {'met' if ratio >= 0.85 else 'MISSED'}")
    c_names = [k for k in results if k.startswith("(c)")]
    if c_names:
        c_name = max(c_names, key=best.get)
        ratio = best[A] / best[c_name]
        print(
            f"(a)/(c) = {ratio:.2f}  best (a) over best {c_name}, wall clock;"
            f" per CPU second {per_cpu[A] / per_cpu[c_name]:.2f}"
        )
        print(f"           goal >= 2: {'met' if ratio >= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
