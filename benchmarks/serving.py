"""Serving cost: the exported SavedModel (bytes in) against the Keras model, greedy vs beam-3.

One process, CPU only (``CUDA_VISIBLE_DEVICES=-1``, as an export runs), on a
sequence model (``seq2seq_attention``, 80 classes, untrained weights) at two
sizes:

- ``tiny`` encoder, 64 px;
- ``mobilenet_v3_small`` encoder, 224 px, ``weights=None``.

For each, greedy and beam-3 models share their weights and are exported with
:func:`kerasmlic.export.export_saved_model`, reloaded with plain
``tf.saved_model.load``, and timed at batch 1 (latency) and batch 32
(throughput):

(a) baseline: the Keras model called through ``tf.function`` on pre-decoded,
    resized, normalised float32 tensors (the cheapest way to run it);
(b) ``model.predict_on_batch`` on the same tensors (what a Keras user calls);
(c) the SavedModel's ``serving_images`` signature on uint8 pixels at the
    model's size (graph overhead without JPEG decoding);
(d) the SavedModel's ``serving_default`` signature on JPEG bytes at the
    model's size (decode + resize + normalise + model + ranking);
(e) as (d) with 640x480 JPEGs (COCO-size uploads: adds a full-size decode).

Goals: (d) / (a) <= 1.25 (serving overhead) and beam-3 / greedy <= 1.6 on
(d). Untrained greedy and beam decoders would stop after different numbers of
steps, so the END logit is pushed down and both decode the full
``max_labels + 1`` = 11 steps (the worst case); the table prints the steps.
Calls are interleaved round-robin; a ratio is the median over rounds of the
time ratio of two calls made back to back, which stays fair when other
processes load the machine (best and median times are shown too).

Serving under load (``--load``, issue 11): one loaded SavedModel
(``serving_default``), N client threads sending requests of a fixed batch
size for a fixed time; about one request in eight holds one bad image (not an
image, empty bytes, a truncated JPEG) and odd valid images (1x1, 4000x3000,
grayscale, PNG with alpha) are mixed in with ordinary 640x480 JPEGs. Each
valid request's scores are checked against the same images sent alone, each
bad one must fail with ``INVALID_ARGUMENT`` naming its index. Reported per
batch size: requests/s and images/s (valid requests), p50/p95/max latency.

Usage::

    .venv/bin/python benchmarks/serving.py [--repeats 30] [--only tiny|mobilenet]
    .venv/bin/python benchmarks/serving.py --load [--threads 8] [--seconds 20]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasmlic.data.preprocessing import normalize  # noqa: E402
from kerasmlic.data.sequences import END  # noqa: E402
from kerasmlic.export import export_saved_model  # noqa: E402
from kerasmlic.models.registry import build_model  # noqa: E402

NUM_CLASSES = 80
CONFIGS = {
    "tiny": {"encoder": "tiny", "image_size": 64},
    "mobilenet": {"encoder": "mobilenet_v3_small", "image_size": 224},
}


def _jpegs(n, height, width, seed):
    """Smooth random images with blocks (JPEG sizes like photos, not noise)."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        small = rng.randint(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
        img = tf.image.resize(small[None], [height, width], method="bicubic")[0].numpy()
        y, x = rng.randint(0, height // 2), rng.randint(0, width // 2)
        img[y : y + height // 3, x : x + width // 3] = rng.randint(0, 255, 3)
        img = np.clip(img, 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(img, quality=90).numpy())
    return out


def _measure_interleaved(fns, repeats, warmup=3):
    """Time several callables round-robin; return {key: seconds per round}.

    Interleaving spreads any disturbance from other processes over all of
    them, so their ratios stay fair on a busy machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: np.array(v) for key, v in times.items()}


def paired_ratio(times, num, den):
    """Median over rounds of num/den: calls of one round ran back to back."""
    return float(np.median(times[num] / times[den]))


def _full_length_decoding(model):
    """Push the END logit down so every sequence runs all ``max_labels + 1`` steps.

    Untrained greedy and beam decoders stop after different numbers of steps;
    with END suppressed both run the worst case, which makes their times
    comparable.
    """
    for layer in model.layers:
        dense = getattr(layer, "output_dense", None)
        if dense is not None:
            bias = np.asarray(dense.bias)
            bias[END] -= 30.0
            dense.bias.assign(bias)
            return
    raise RuntimeError("no decoder output layer found")


def bench_config(name, cfg, repeats, work):
    size = cfg["image_size"]
    keras.utils.set_random_seed(0)
    common = {"num_classes": NUM_CLASSES, "image_size": size, "encoder": cfg["encoder"]}
    greedy = build_model("seq2seq_attention", decoding="greedy", **common)
    beam = build_model("seq2seq_attention", decoding="beam", beam_width=3, **common)
    _full_length_decoding(greedy)
    beam.set_weights(greedy.get_weights())
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    served = {}
    for decoding, model in (("greedy", greedy), ("beam-3", beam)):
        path = os.path.join(work, f"{name}-{decoding}")
        shutil.rmtree(path, ignore_errors=True)  # weights are new each run
        start = time.perf_counter()
        export_saved_model(model, path, class_names=names, version=1, explain=False)
        print(f"  exported {decoding} in {time.perf_counter() - start:.1f} s", flush=True)
        served[decoding] = tf.saved_model.load(os.path.join(path, "1"))
    rows = []
    for batch in (1, 32):
        jpegs_small = tf.constant(_jpegs(batch, size, size, seed=batch))
        jpegs_big = tf.constant(_jpegs(batch, 480, 640, seed=100 + batch))
        pixels = tf.stack([tf.io.decode_jpeg(j) for j in jpegs_small])
        floats = normalize(pixels, greedy.normalization)
        fns, steps = {}, {}
        for decoding, model in (("greedy", greedy), ("beam-3", beam)):
            call = tf.function(lambda x, m=model: m(x, training=False))
            by_bytes = served[decoding].signatures["serving_default"]
            by_pixels = served[decoding].signatures["serving_images"]
            fns[decoding, "a"] = lambda c=call, x=floats: c(x)
            fns[decoding, "b"] = lambda m=model, x=floats: m.predict_on_batch(x)
            fns[decoding, "c"] = lambda s=by_pixels, x=pixels: s(images=x)
            fns[decoding, "d"] = lambda s=by_bytes, x=jpegs_small: s(image_bytes=x)
            fns[decoding, "e"] = lambda s=by_bytes, x=jpegs_big: s(image_bytes=x)
            sequence = np.asarray(model(floats, training=False)["sequence"])
            steps[decoding] = float((sequence > 2).sum(axis=1).mean() + 1)
        reps = repeats if batch == 1 else max(5, repeats // 2)
        times = _measure_interleaved(fns, reps)
        for decoding in ("greedy", "beam-3"):
            row = {"config": name, "decoding": decoding, "batch": batch, "steps": steps[decoding]}
            for k in "abcde":
                t = times[decoding, k]
                # (median ms, best ms, best images/s)
                row[k] = (1000 * float(np.median(t)), 1000 * t.min(), batch / t.min())
            row["ratios"] = {k: paired_ratio(times, (decoding, k), (decoding, "a")) for k in "bcde"}
            if decoding == "beam-3":
                row["beam_vs_greedy"] = {
                    k: paired_ratio(times, ("beam-3", k), ("greedy", k)) for k in "ad"
                }
            rows.append(row)
            print(
                f"  {decoding} batch {batch}: (a) {row['a'][1]:.1f} ms, (d) {row['d'][1]:.1f} ms "
                "(best)",
                flush=True,
            )
    return rows


def print_tables(rows):
    print()
    print("Per-call time in ms: best (least disturbed) and (median) of interleaved runs;")
    print("batch 32 also as images/s of the best run. Ratios: median over rounds of the")
    print("time ratio of calls made back to back (robust to other processes' load).")
    print("(a) Keras tf.function on decoded tensors = baseline; (b) predict_on_batch;")
    print("(c) SavedModel uint8 signature; (d) SavedModel JPEG bytes at model size;")
    print("(e) SavedModel 640x480 JPEG bytes. steps = mean decoding steps (labels + END).")
    print()
    header = (
        f"{'model':<10} {'decoding':<8} {'batch':>5} {'steps':>5} | "
        + " ".join(f"{'(' + k + ') ms':>15}" for k in "abcde")
        + f" | {'(d) im/s':>8} | {'d/a':>5} {'c/a':>5} {'e/a':>5} {'b/a':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = " ".join(f"{r[k][1]:>7.1f} ({r[k][0]:>5.1f})" for k in "abcde")
        ratios = [r["ratios"][k] for k in "dceb"]
        print(
            f"{r['config']:<10} {r['decoding']:<8} {r['batch']:>5} {r['steps']:>5.1f} | {cells} "
            f"| {r['d'][2]:>8.1f} | " + " ".join(f"{x:>5.2f}" for x in ratios)
        )
    print()
    print("Beam-3 / greedy time ratio (paired median; goal <= 1.6 on the SavedModel, (d)):")
    by_key = {(r["config"], r["decoding"], r["batch"]): r for r in rows}
    for config in dict.fromkeys(r["config"] for r in rows):
        for batch in (1, 32):
            g, b = by_key.get((config, "greedy", batch)), by_key.get((config, "beam-3", batch))
            if g and b:
                ratio = b["beam_vs_greedy"]
                print(
                    f"  {config:<10} batch {batch:>2}: SavedModel (d) {ratio['d']:.2f}, "
                    f"Keras tf.function (a) {ratio['a']:.2f} "
                    f"(steps {g['steps']:.1f} vs {b['steps']:.1f})"
                )


def _load_images(seed):
    """Ordinary 640x480 JPEGs, odd valid images and bad ones, as encoded bytes."""
    import io

    from PIL import Image

    def encode(img, fmt="JPEG", **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    ordinary = _jpegs(8, 480, 640, seed)
    big = Image.fromarray(
        tf.image.resize(np.random.RandomState(seed).rand(1, 30, 40, 3) * 255, [3000, 4000])
        .numpy()[0]
        .astype(np.uint8)
    )
    rgba = Image.open(io.BytesIO(ordinary[1])).convert("RGBA")
    rgba.putalpha(128)
    odd = [
        encode(Image.new("RGB", (1, 1), (200, 30, 30))),
        encode(big, quality=85),
        encode(Image.open(io.BytesIO(ordinary[2])).convert("L")),
        encode(rgba, "PNG"),
    ]
    bad = [b"this is not an image" * 4, b"", ordinary[3][: len(ordinary[3]) // 2]]
    return ordinary, odd, bad


def bench_load(threads, seconds, batch_sizes, work):
    """N client threads on one loaded SavedModel (see the module doc); returns table rows."""
    import random
    import threading

    cfg = CONFIGS["tiny"]
    keras.utils.set_random_seed(0)
    model = build_model("bce", num_classes=NUM_CLASSES, **cfg)
    path = os.path.join(work, "load-bce")
    shutil.rmtree(path, ignore_errors=True)
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    export_saved_model(model, path, class_names=names, version=1, explain=False)
    serve = tf.saved_model.load(os.path.join(path, "1")).signatures["serving_default"]
    ordinary, odd, bad = _load_images(seed=7)
    valid = ordinary + odd
    alone = [serve(image_bytes=tf.constant([v]))["scores"].numpy()[0] for v in valid]
    rows = []
    for batch in batch_sizes:
        stop = time.monotonic() + seconds
        stats = {"latency": [], "images": 0, "valid": 0, "bad": 0, "wrong": 0}
        lock = threading.Lock()

        def client(worker, batch=batch, stop=stop, stats=stats, lock=lock):
            rng = random.Random(worker)
            while time.monotonic() < stop:
                # Odd images one time in four; a bad image in one request in eight.
                picks = [
                    rng.randrange(len(valid))
                    if rng.random() < 0.25
                    else rng.randrange(len(ordinary))
                    for _ in range(batch)
                ]
                data = [valid[i] for i in picks]
                bad_at = rng.randrange(batch) if rng.random() < 0.125 else None
                if bad_at is not None:
                    data[bad_at] = rng.choice(bad)
                start = time.perf_counter()
                try:
                    out = serve(image_bytes=tf.constant(data))
                    ok = bad_at is None and np.allclose(
                        out["scores"].numpy(), np.stack([alone[i] for i in picks]), atol=1e-5
                    )
                except tf.errors.InvalidArgumentError as e:
                    ok = bad_at is not None and f"image_bytes[{bad_at}]" in e.message
                elapsed = time.perf_counter() - start
                with lock:
                    stats["wrong"] += not ok
                    if bad_at is None:
                        stats["latency"].append(elapsed)
                        stats["images"] += batch
                        stats["valid"] += 1
                    else:
                        stats["bad"] += 1

        began = time.monotonic()
        pool = [threading.Thread(target=client, args=(w,)) for w in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.monotonic() - began
        lat = np.array(stats["latency"]) * 1000
        rows.append(
            {
                "batch": batch,
                "requests_s": stats["valid"] / wall,
                "images_s": stats["images"] / wall,
                "p50": float(np.percentile(lat, 50)),
                "p95": float(np.percentile(lat, 95)),
                "max": float(lat.max()),
                "valid": stats["valid"],
                "bad": stats["bad"],
                "wrong": stats["wrong"],
            }
        )
        print(f"  batch {batch}: {rows[-1]}", flush=True)
    return rows


def print_load_table(rows, threads, seconds):
    print()
    print(
        f"Serving under load: bce, tiny encoder 64 px, {threads} client threads, {seconds} s per "
        "batch size, one loaded SavedModel; 640x480 JPEGs with odd (1x1, 4000x3000, gray, "
        "RGBA PNG) and bad (not an image, empty, truncated JPEG) ones mixed in."
    )
    print()
    print("| batch | requests/s | images/s | p50 ms | p95 ms | max ms | valid | bad | wrong |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['requests_s']:.1f} | {r['images_s']:.1f} | {r['p50']:.1f} | "
            f"{r['p95']:.1f} | {r['max']:.1f} | {r['valid']} | {r['bad']} | {r['wrong']} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls at batch 1")
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--keep", default=None, help="keep the exports in this folder")
    parser.add_argument("--load", action="store_true", help="serving under load instead")
    parser.add_argument("--threads", type=int, default=8, help="--load: client threads")
    parser.add_argument("--seconds", type=float, default=20, help="--load: per batch size")
    parser.add_argument("--batches", default="1,8,32", help="--load: batch sizes")
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, no GPU")
    if args.load:
        work = args.keep or tempfile.mkdtemp(prefix="kerasmlic-serving-")
        try:
            batches = [int(b) for b in args.batches.split(",")]
            rows = bench_load(args.threads, args.seconds, batches, work)
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
        print_load_table(rows, args.threads, args.seconds)
        return 0 if all(r["wrong"] == 0 for r in rows) else 1
    work = args.keep or tempfile.mkdtemp(prefix="kerasmlic-serving-")
    rows = []
    try:
        for name, cfg in CONFIGS.items():
            if args.only and name != args.only:
                continue
            print(f"{name}: {cfg}", flush=True)
            rows += bench_config(name, cfg, args.repeats, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print_tables(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
