"""Input-pipeline throughput: kerasmlic's tf.data pipeline against its limit and a baseline.

One process, the same TFRecord shards / JPEG files, training mode, batch 64,
all cores, at each ``--sizes`` side (default 224 and 448 px) and on each data
set: ``coco640`` (~1000 COCO-like JPEGs, longer side mostly 640 px) and
``max512`` (the same images built with ``kerasmlic build --max-side 512``;
both made and cached by ``benchmarks/coco_like_data.py``):

(a) ``kerasmlic.data.pipeline.make_dataset(training=True)`` as a kerasmlic
    model gets it: uint8 pixels out (the model normalises inside itself),
    the default augmentation (no crop, random flip), JPEGs decoded at a
    reduced DCT scale where the image is at least 2, 4 or 8 times the target
    side. Variant rows: a near-2x rule (``dct_min_fraction=0.9``: the shorter
    axis may be stretched by up to 11%, an option); DCT scaling off; float32
    normalised output (what a plain Keras model asks for); the random resized crop on (area 0.25-1,
    ``decode_and_crop_jpeg``), with and without DCT scaling; with
    ``--heavy``, random erasing and RandAugment (each with its CPU cost per
    image against (a)).
(b) decode-only limit: the same shards read and ``tf.io.decode_jpeg``-decoded
    at full scale in parallel, nothing else.
(c) what a Keras user would otherwise write: a ``keras.utils.PyDataset``
    that opens each JPEG with PIL, resizes, flips and scales to [0, 1]
    (as (a): no crop), ``workers=2`` (threads, and separately processes).

Goals (issue 12, at 224 px, per CPU second): (a) >= 0.95 x (b) and
(a) >= 2.3 x (c). Images per CPU second (this process and its worker
processes) is the measure: other programs on a shared machine disturb it
less than wall-clock rates, which are printed too.

Usage::

    .venv/bin/python benchmarks/input_pipeline.py [--images 1000] [--seconds 20] [--repeats 3]
        [--slice 10] [--c-seconds S] [--sizes 224,448] [--datasets coco640,max512]
        [--goal] [--no-c] [--heavy] [--only NAMES] [--ops]

The goal figures, three repeats per size in about 4 minutes each::

    .venv/bin/python benchmarks/input_pipeline.py --goal --datasets coco640 \
        --sizes 224 --repeats 3 --seconds 12 --slice 4 --c-seconds 10

Each repeat times the tf.data rows of one (data set, size) in alternating
``--slice``-second windows, each on a fresh iterator after ``--warmup``
batches, until each has run ``--seconds`` (so all see the same load from
other programs), then each (c) for ``--c-seconds`` (default ``--seconds``).
``--goal`` keeps the rows the goals need ((a), (a) with the exact DCT rule,
(b), both (c)). Tables show the best repeat, the median and the best images
per CPU second; (a)/(b) is also given as the median of per-repeat ratios
(interleaved windows), per CPU second and wall clock.

``--ops`` instead times single operations on one thread (CPU milliseconds
per image, best of ``--repeats`` rounds over 300 images, the variants in turn
within each round): full decode, DCT decode, and the whole per-image map with
and without DCT scaling. This is the measurement behind keeping DCT scaling
(``preprocessing.decode_for_size``).

Where the time goes (one thread, CPU ms per image, best of 5-9 rounds over
300 of the coco640 JPEGs at 224 px, ad-hoc tf.data micro-benchmarks at load
average 4-7 on the shared 2-core machine, so directional only): full
``decode_jpeg`` 1.35-1.6, the same at 1/2 DCT scale 1.2-1.3 (Huffman decoding
of every coefficient is still needed, so 1/2 saves only 10-20%); after the
decode, cast + bilinear resize to 224 + uint8 cost +0.45 ms from full scale
(the cast alone of a 640x427 image ~0.15) and +0.3 from 1/2 scale; the flip
~0.02; the header read and the scale branches up to ~0.08; parsing labels,
the per-example seeds and the multi-hot ~0.1-0.15; the 9.6 MB uint8 batch
buffer is page-faulted anew (~28 minor faults per image, ~0.05-0.1 ms of
system time here; tcmalloc or ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` avoid most). So with no crop, whatever the decode
saves, (a) pays ~0.4-0.5 ms (0.3 of a full decode) that (b) does not: the
no-crop default lands near 0.8-0.85 x (b) at 224 px, and the crop path is
cheaper than it because ``decode_and_crop_jpeg`` neither IDCTs the pixels
outside the window nor entropy-decodes the rows below it (and casts a
smaller array). Resizing from float32 is faster than from uint8 even
counting the cast (so ``resize_image`` casts first); ``QuantizedResizeBilinear``,
``crop_and_resize``, ``ImageProjectiveTransformV3`` and nearest-neighbour were
all slower. A float32 batch is 4x the bytes of a uint8 one, hence uint8 out.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from coco_like_data import describe, prepare_data, prepare_max_side  # noqa: E402
from PIL import Image  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SIZE = 224
BATCH = 64
SCALE = (0.25, 1.0)
RATIO = (3 / 4, 4 / 3)
# The random resized crop (off by default) and flip: the "crop + flip" rows, and what
# kerasmlic_dataset gives unless told otherwise (benchmarks/data_service.py uses it).
CROP_AND_FLIP = {"crop_scale": list(SCALE), "crop_ratio": list(RATIO), "flip": True}


# ---- data ---------------------------------------------------------------------------------------


# ---- pipelines ----------------------------------------------------------------------------------


def kerasmlic_dataset(shards, size=IMAGE_SIZE, **kwargs):
    """(a): ``make_dataset`` in training mode (crop and flip unless ``augment`` says)."""
    from kerasmlic.data.pipeline import make_dataset

    kwargs.setdefault("augment", CROP_AND_FLIP)
    return make_dataset(
        shards, "train", image_size=size, batch_size=BATCH, training=True, repeat=True, **kwargs
    )


DEFAULT_AUGMENT = {"crop_scale": [1, 1], "flip": True}
"""The training default (``config.DEFAULTS``' ``data.augment``): no crop, flip."""

A = "(a) kerasmlic, default aug, uint8, DCT"
B = "(b) decode_jpeg only"
C_THREADS = "(c) PyDataset+PIL, 2 threads"
C_PROCESSES = "(c) PyDataset+PIL, 2 processes"

# name -> make_dataset keyword arguments (besides the data and size) of the (a) rows.
A_NEAR = "(a) DCT min_fraction 0.9 (option)"

A_ROWS = {
    A: {"augment": DEFAULT_AUGMENT},
    A_NEAR: {"augment": DEFAULT_AUGMENT, "dct_min_fraction": 0.9},
    "(a) DCT off": {"augment": DEFAULT_AUGMENT, "dct_scaling": False},
    "(a) float32 out (normalised in tf.data)": {
        "augment": DEFAULT_AUGMENT,
        "normalization": "unit",
    },
    "(a) crop + flip, DCT": {"augment": CROP_AND_FLIP},
    "(a) crop + flip, DCT off": {"augment": CROP_AND_FLIP, "dct_scaling": False},
}
HEAVY_ROWS = {
    "(a) + random erasing p=0.25": {"augment": {**DEFAULT_AUGMENT, "erasing": 0.25}},
    "(a) + RandAugment 2 ops, M9": {
        "augment": {**DEFAULT_AUGMENT, "randaugment": {"num_ops": 2, "magnitude": 9}}
    },
}


def decode_only_dataset(shards):
    """(b): read + parse the JPEG bytes + full ``decode_jpeg`` in parallel; yields heights."""
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


def make_py_dataset(images_dir, size, workers, use_multiprocessing):
    """(c): the PyDataset a Keras user would write, over the JPEG files of a folder."""
    paths = sorted(
        os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.endswith(".jpg")
    )
    targets = np.zeros((len(paths), 80), np.float32)  # the labels cost nothing to load
    return PilJpegDataset(
        paths, targets, size=size, workers=workers, use_multiprocessing=use_multiprocessing
    )


class PilJpegDataset(keras.utils.PyDataset):
    """Loads JPEG files with PIL: resize (optionally a random resized crop), flip, [0, 1].

    Endless (``num_batches`` is None) so that the timing sees steady state,
    not the enqueuer restarting at each epoch, which is the kinder setting.
    """

    def __init__(self, paths, targets, size=IMAGE_SIZE, crop=False, **kwargs):
        super().__init__(max_queue_size=10, **kwargs)
        self.paths, self.targets, self.size, self.crop = paths, targets, size, crop
        self.per_epoch = max(1, len(paths) // BATCH)

    @property
    def num_batches(self):
        return None

    def _crop_box(self, rng, w, h):
        if not self.crop:
            return 0, 0, w, h
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
        size = self.size
        x = np.empty((len(rows), size, size, 3), np.float32)
        for k, row in enumerate(rows):
            with Image.open(self.paths[row]) as img:
                img = img.convert("RGB")
                box = self._crop_box(rng, *img.size)
                img = img.resize((size, size), Image.BILINEAR, box=box)
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                x[k] = np.asarray(img, np.float32) * (1.0 / 255.0)
        return x, self.targets[rows]


# ---- data sets ----------------------------------------------------------------------------------


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


# ---- one block: a data set at one size ----------------------------------------------------------


GOAL_ROWS = (A, A_NEAR, B, C_THREADS, C_PROCESSES)
"""The rows ``--goal`` times: what the issue-12 ratios need, plus the exact DCT rule."""


def measure_block(shards, images_dir, size, args):
    """Time every selected row on one data set at one size; return ``{name: [(wall, cpu)]}``."""
    rows = {**A_ROWS, **(HEAVY_ROWS if args.heavy else {})}
    if args.goal:
        rows = {name: kw for name, kw in rows.items() if name in GOAL_ROWS}
    tf_configs = {
        name: (lambda kw=kw: kerasmlic_dataset(shards, size, **kw)) for name, kw in rows.items()
    }
    tf_configs[B] = lambda: decode_only_dataset(shards)
    py_configs = {C_THREADS: (2, False), C_PROCESSES: (2, True)}
    if args.no_c:
        py_configs = {}
    if args.only:
        keep = [w.strip() for w in args.only.split(",")]
        tf_configs = {k: v for k, v in tf_configs.items() if any(w in k for w in keep)}
        py_configs = {k: v for k, v in py_configs.items() if any(w in k for w in keep)}
    results = {name: [] for name in [*tf_configs, *py_configs]}
    for r in range(args.repeats):
        load = os.getloadavg()[0]
        timed = run_tf_interleaved(tf_configs, args.seconds, args.warmup, args.slice)
        for name, (workers, processes) in py_configs.items():
            py_ds = make_py_dataset(images_dir, size, workers, processes)
            timed[name] = run_pydataset(py_ds, args.c_seconds or args.seconds, 2)
        for name, (rate, cpu_rate) in timed.items():
            results[name].append((rate, cpu_rate))
            print(
                f"  run {r + 1}: {name:42s} {rate:7.1f} img/s {cpu_rate:7.1f} img/cpu-s"
                f"  (load avg {load:.1f} at start)",
                flush=True,
            )
    return results


def report_block(results, size):
    """Print one block's table, ratios to (b) and (c), heavy-op costs and the goals."""
    best = {name: max(w for w, _ in v) for name, v in results.items()}
    per_cpu = {name: max(c for _, c in v) for name, v in results.items()}
    c_names = [k for k in results if k.startswith("(c)")]
    c_best = max(c_names, key=per_cpu.get) if c_names else None
    print()
    print(
        f"{'pipeline':44s} {'best img/s':>10s} {'median':>8s} {'img/cpu-s':>10s}"
        f" {'/(b) cpu':>9s} {'/(c) cpu':>9s}"
    )
    for name, runs in results.items():
        median = statistics.median(w for w, _ in runs)
        vs_b = f"{per_cpu[name] / per_cpu[B]:9.2f}" if B in per_cpu else f"{'':9s}"
        vs_c = f"{per_cpu[name] / per_cpu[c_best]:9.2f}" if c_best else f"{'':9s}"
        print(f"{name:44s} {best[name]:10.1f} {median:8.1f} {per_cpu[name]:10.1f} {vs_b} {vs_c}")
    heavy = [k for k in HEAVY_ROWS if k in results]
    if heavy and A in per_cpu:
        print("cost per image against (a), CPU milliseconds (from img/cpu-s):")
        for name in heavy:
            cost = 1e3 / per_cpu[name] - 1e3 / per_cpu[A]
            print(f"  {name:42s} {cost:+6.2f} ms  ({per_cpu[name] / per_cpu[A]:.2f}x (a)'s rate)")
    if A not in results:
        return
    goals = size == IMAGE_SIZE
    if B in results:
        paired = [ra / rb for (ra, _), (rb, _) in zip(results[A], results[B], strict=True)]
        paired_cpu = [ca / cb for (_, ca), (_, cb) in zip(results[A], results[B], strict=True)]
        ratio = per_cpu[A] / per_cpu[B]
        print(
            f"(a)/(b) = {ratio:.2f} per CPU second (best of each); per CPU second, median of"
            f" per-run ratios: {statistics.median(paired_cpu):.2f}"
            f" ({', '.join(f'{x:.2f}' for x in paired_cpu)})"
        )
        print(
            f"          wall clock, median of per-run ratios: {statistics.median(paired):.2f}"
            f" ({', '.join(f'{x:.2f}' for x in paired)})"
        )
        if goals:
            print(f"           goal >= 0.95 per CPU second: {'met' if ratio >= 0.95 else 'MISSED'}")
    if c_best:
        ratio = per_cpu[A] / per_cpu[c_best]
        print(
            f"(a)/(c) = {ratio:.2f} per CPU second, against {c_best};"
            f" wall clock {best[A] / best[c_best]:.2f}"
        )
        if goals:
            print(f"           goal >= 2.3 per CPU second: {'met' if ratio >= 2.3 else 'MISSED'}")


# ---- single operations on one thread (--ops) ----------------------------------------------------


def measure_ops(shards, size, repeats, count=300):
    """CPU ms per image of decode and per-image-map variants, on one thread.

    The training-map rows run on all images, and again on those alone that the
    DCT rule decodes at a reduced scale at this size (where it can pay).

    Returns:
        ``{name: milliseconds}``, plus ``"share with DCT < 1"``: the fraction of
        the images that the DCT rule decodes at a reduced scale at this size.
    """
    import tensorflow as tf

    from kerasmlic.data import manifest, preprocessing, schema

    files = manifest.shard_paths(shards, "train")
    records = tf.data.TFRecordDataset(files).take(count)
    data = [schema.parse_example(r)[schema.IMAGE_ENCODED].numpy() for r in records]
    seed = tf.constant([1, 2], tf.int64)

    def train_map(dct_scaling, normalization=None, fraction=preprocessing.DCT_MIN_FRACTION):
        return lambda x: preprocessing.preprocess_for_train(
            x,
            size,
            normalization,
            seed=seed,
            scale=(1.0, 1.0),
            dct_scaling=dct_scaling,
            dct_min_fraction=fraction,
        )

    def reduced(x):
        shape = tf.io.extract_jpeg_shape(x)
        index = preprocessing.dct_ratio_index(
            shape[0], shape[1], size, preprocessing.DCT_MIN_FRACTION
        )
        return int(index) > 0

    def resized(ratio):
        def fn(x):
            image = preprocessing.resize_image(tf.io.decode_jpeg(x, channels=3, ratio=ratio), size)
            return preprocessing.quantize_pixels(image, clip=False)

        return fn

    subset = [x for x in data if reduced(tf.constant(x))]
    variants = {
        "decode_jpeg, full scale": (data, lambda x: tf.shape(tf.io.decode_jpeg(x, channels=3))),
        "decode_jpeg, 1/2 scale": (
            data,
            lambda x: tf.shape(tf.io.decode_jpeg(x, channels=3, ratio=2)),
        ),
        "decode_for_size (DCT rule)": (
            data,
            lambda x: tf.shape(preprocessing.decode_for_size(x, size)),
        ),
        "full decode + cast + resize + uint8": (data, resized(1)),
        "1/2 decode + cast + resize + uint8": (data, resized(2)),
        "training map, uint8, DCT off": (data, train_map(False)),
        "training map, uint8, DCT on (exact rule)": (data, train_map(True)),
        "training map, uint8, DCT min_fraction 0.9": (data, train_map(True, fraction=0.9)),
        "training map, float32 unit, DCT on": (data, train_map(True, "unit")),
    }
    if subset:
        variants["reduced images only: map, DCT off"] = (subset, train_map(False))
        variants["reduced images only: map, DCT on"] = (subset, train_map(True))
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    datasets = {
        name: (tf.data.Dataset.from_tensor_slices(images).map(fn).with_options(options), images)
        for name, (images, fn) in variants.items()
    }
    best = {name: float("inf") for name in datasets}
    # Rounds over all variants in turn, so that each sees the same load from others.
    for _ in range(repeats):
        for name, (ds, images) in datasets.items():
            c0 = time.process_time()
            for _ in ds:
                pass
            best[name] = min(best[name], (time.process_time() - c0) / len(images))
    out = {name: seconds * 1e3 for name, seconds in best.items()}
    out["share with DCT < 1"] = len(subset) / len(data)
    return out


# ---- main ---------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=1000, help="JPEGs in the data set (generated once, cached)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    parser.add_argument(
        "--c-seconds", type=float, default=0.0, help="timed seconds per (c) row (default --seconds)"
    )
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--slice", type=float, default=10.0, help="seconds per alternating window of tf.data rows"
    )
    parser.add_argument("--sizes", default="224,448", help="comma-separated target sides")
    parser.add_argument(
        "--datasets", default="coco640,max512", help="comma-separated: coco640, max512"
    )
    parser.add_argument("--max-side", type=int, default=512, help="max512's --max-side")
    parser.add_argument("--heavy", action="store_true", help="add erasing and RandAugment rows")
    parser.add_argument(
        "--goal",
        action="store_true",
        help="time only the rows the goals need: (a), (a) DCT min_fraction 0.9, (b), both (c)",
    )
    parser.add_argument("--no-c", action="store_true", help="skip the (c) PyDataset rows")
    parser.add_argument(
        "--only", default="", help="comma-separated name substrings to time (diagnosis)"
    )
    parser.add_argument(
        "--ops", action="store_true", help="time single operations on one thread instead"
    )
    parser.add_argument("--work", default=os.path.join(HERE, "_work", "input_pipeline"))
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    coco_dir, shards = prepare_data(args.work, args.images, workers=cores)
    sets = {"coco640": (shards, os.path.join(coco_dir, "train"))}
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if "max512" in names:
        sets["max512"] = prepare_max_side(args.work, coco_dir, args.max_side, cores)
    sizes = [int(s) for s in args.sizes.split(",")]

    import tensorflow as tf

    print(
        f"{cores} cores; TF {tf.__version__}; training mode, batch {BATCH};"
        f" load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    for name in names:
        if name not in sets:
            parser.error(f"unknown data set {name!r}; choose from coco640, max512")
        shard_dir, images_dir = sets[name]
        print(f"{name}: {describe(shard_dir, images_dir)}", flush=True)
        for size in sizes:
            print(f"\n=== {name}, {size} px (load avg {os.getloadavg()[0]:.2f}) ===", flush=True)
            if args.ops:
                for op, value in measure_ops(shard_dir, size, args.repeats).items():
                    unit = "" if op.startswith("share") else " ms/image (1 thread, CPU)"
                    print(f"  {op:40s} {value:7.3f}{unit}", flush=True)
                continue
            report_block(measure_block(shard_dir, images_dir, size, args), size)
    print(f"\nload avg at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
