"""`kerasmlic build`: peak memory does not grow with the number of images; worker speed-up.

Builds TFRecord shards from the built-in synthetic COCO-format dataset
(``kerasmlic.data.synth``, generated once and cached under
``benchmarks/_work/build_memory/``), each build in a fresh child process that
imports TensorFlow first (the build needs it to write records), so start-up
is not in the timings.

1. Peak memory: 1k vs 10k 64-px images, ``workers=1``: the child's
   ``ru_maxrss``. Baseline: the 1k row; goal: 10k / 1k <= 1.2. Beside it, the
   peak of a child that only parses the annotations (``load_coco``): the
   build's growth with the number of images comes from there (the JSON is
   parsed whole, as pycocotools does), not from image data, which streams.
2. Throughput: 2k 512-px images, ``workers=1`` vs ``workers=2``, pass-through
   and re-encoded with ``--max-side 256``. images/s from the build's own
   elapsed time (worker start-up included); "CPU s" is the child's user+system
   time plus its workers'. Baseline: the ``workers=1`` row of the same mode.
   "tree peak" sums RSS over the child and its workers (psutil, every 20 ms).

Wall-clock speed-ups need idle cores: the load average at each run is shown.

Usage::

    .venv/bin/python benchmarks/build_memory.py [--small 1000] [--large 10000]
        [--speed-images 2000] [--speed-size 512] [--workers 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_work", "build_memory")

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import psutil
import tensorflow
from kerasmlic.data.build import build_split
from kerasmlic.data.coco import load_coco
mode, ann, images, out, workers, max_side = sys.argv[1:7]
baseline = psutil.Process().memory_info().rss
t0 = os.times()
if mode == "coco":
    load_coco(ann)
    summary = {"elapsed": 0.0, "num_examples": 0, "num_shards": 0}
else:
    summary = build_split(ann, images, "train", out, workers=int(workers),
                          max_side=int(max_side) or None, progress=False)
t1 = os.times()
print(json.dumps({
    "baseline": baseline,
    "maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "maxrss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    "cpu": (t1.user - t0.user) + (t1.system - t0.system)
    + (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system),
    "elapsed": summary["elapsed"],
    "num_examples": summary["num_examples"],
    "num_shards": summary["num_shards"],
}))
"""


def ensure_dataset(n, image_size):
    """Generate (once) a synthetic train split of ``n`` images; return (annotations, images)."""
    from kerasmlic.data.synth import synthesize

    root = os.path.join(WORK, f"synth-{n}-{image_size}px")
    ann = os.path.join(root, "annotations", "instances_train.json")
    if not os.path.isfile(ann):
        print(f"generating {n} synthetic {image_size}px images in {root} ...", flush=True)
        t0 = time.perf_counter()
        synthesize(
            root, train=n, val=0, image_size=image_size, seed=0, contact_sheet=False, progress=False
        )
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    return ann, os.path.join(root, "train")


def run_child(mode, ann, images, workers=1, max_side=None):
    """Run one build (or annotations-only load) in a child process; return its measurements."""
    with tempfile.TemporaryDirectory(dir=WORK) as out:
        args = [mode, ann, images, out, str(workers), str(max_side or 0)]
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_tree = 0
        stop = threading.Event()

        def sample():
            nonlocal peak_tree
            root = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    total = 0
                    for p in [root] + root.children(recursive=True):
                        try:
                            total += p.memory_info().rss
                        except psutil.Error:
                            pass
                    peak_tree = max(peak_tree, total)
                except psutil.Error:
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = os.getloadavg()[0]
        stdout, stderr = proc.communicate()
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"child failed ({proc.returncode}):\n{stderr[-3000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        result.update(peak_tree=peak_tree, load=load, workers=workers, max_side=max_side)
        result["peak"] = max(result["maxrss_self"], result["maxrss_children"])
        result["speed"] = result["num_examples"] / max(result["elapsed"], 1e-9)
        return result


def mb(n):
    return n / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--speed-images", type=int, default=2000)
    parser.add_argument("--speed-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)

    sets = {
        "small": ensure_dataset(args.small, 64),
        "large": ensure_dataset(args.large, 64),
        "speed": ensure_dataset(args.speed_images, args.speed_size),
    }
    memory = []
    for name in ("small", "large"):
        print(f"memory: {name} set ...", flush=True)
        build = run_child("build", *sets[name])
        coco = run_child("coco", *sets[name])
        memory.append((build, coco))
    half = args.speed_size // 2
    speed = []
    for max_side in (None, half):
        for workers in (1, args.workers):
            print(f"speed: workers={workers} max_side={max_side} ...", flush=True)
            speed.append(run_child("build", *sets["speed"], workers=workers, max_side=max_side))

    print()
    print(f"kerasmlic build, synthetic COCO-format JPEGs, {os.cpu_count()} CPUs")
    print()
    print("peak memory, 64-px images, workers=1 (baseline: first row)")
    header = (
        f"{'images':>7} {'shards':>6} {'peak RSS MB':>11} {'ratio':>6} "
        f"{'annotations-only peak MB':>24} {'build - annotations MB':>22} {'seconds':>7}"
    )
    print(header)
    print("-" * len(header))
    base = memory[0][0]["peak"]
    for build, coco in memory:
        print(
            f"{build['num_examples']:>7} {build['num_shards']:>6} {mb(build['peak']):>11.0f} "
            f"{build['peak'] / base:>5.2f}x {mb(coco['peak']):>24.0f} "
            f"{mb(build['peak'] - coco['peak']):>22.1f} {build['elapsed']:>7.1f}"
        )
    print()
    print(f"throughput, {args.speed_size}-px images (baseline: workers=1 row of the same mode)")
    header = (
        f"{'images':>7} {'max_side':>8} {'workers':>7} {'seconds':>7} {'img/s':>7} {'ratio':>6} "
        f"{'CPU s':>6} {'peak RSS MB':>11} {'tree peak MB':>12} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for i, r in enumerate(speed):
        ref = speed[i - i % 2]
        print(
            f"{r['num_examples']:>7} {str(r['max_side'] or '-'):>8} {r['workers']:>7} "
            f"{r['elapsed']:>7.1f} {r['speed']:>7.0f} {r['speed'] / ref['speed']:>5.2f}x "
            f"{r['cpu']:>6.1f} {mb(r['peak']):>11.0f} {mb(r['peak_tree']):>12.0f} {r['load']:>5.1f}"
        )
    ratio = memory[1][0]["peak"] / memory[0][0]["peak"]
    print()
    print(
        f"peak RSS {memory[1][0]['num_examples']} vs {memory[0][0]['num_examples']} images: "
        f"{ratio:.3f}x (goal <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'}); "
        f"workers={args.workers} vs 1: {speed[1]['speed'] / speed[0]['speed']:.2f}x pass-through, "
        f"{speed[3]['speed'] / speed[2]['speed']:.2f}x with --max-side {half}"
    )


if __name__ == "__main__":
    main()
