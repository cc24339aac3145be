"""Training images/s of 1 vs 2 local multi-worker processes on the same data.

Both runs use the multi-worker step driver (``train.strategy=multiworker``)
with the same global batch, model and shards; the 2-worker run is two worker
processes on 127.0.0.1 (``TF_CONFIG``), each with half the global batch. The
figure is the second epoch (the first pays tracing; no validation runs on it).

On a machine with fewer free cores than workers the two processes share the
same cores, so 2 workers cannot be faster: the extra time per step is the
cost of the gradient all-reduce and the synchronisation between workers,
reported as the communication overhead per step. Unlike the other
benchmarks this one must start processes (one per worker); it still prints
one table with ratios vs the 1-worker baseline.

Usage:
    python benchmarks/multiworker.py [--model bce] [--image-size 64]
        [--batch-size 16] [--steps 20] [--images 128] [--workdir DIR]
"""

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = (
    "import json, sys\n"
    "from kerasmlic.training.trainer import train\n"
    "train(json.loads(sys.argv[1]), log=lambda *a: print(*a, flush=True))\n"
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _shards(workdir, images, image_size):
    from kerasmlic.data.build import build_split
    from kerasmlic.data.synth import synthesize

    shards = os.path.join(workdir, "shards")
    if os.path.isfile(os.path.join(shards, "dataset.json")):
        return shards
    synth = os.path.join(workdir, "synth")
    synthesize(
        synth,
        train=images,
        val=16,
        image_size=image_size,
        seed=0,
        contact_sheet=False,
        progress=False,
    )
    for split in ("train", "val"):
        build_split(
            os.path.join(synth, "annotations", f"instances_{split}.json"),
            os.path.join(synth, split),
            split,
            shards,
            shards=2,
            progress=False,
        )
    return shards


def run_cluster(config, workers, log_dir, timeout=900):
    """Run ``workers`` worker processes of one config; return the chief's epoch seconds."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    ports = _free_ports(workers)
    procs = []
    try:
        for index in range(workers):
            worker_env = dict(env)
            if workers > 1:
                worker_env["TF_CONFIG"] = json.dumps(
                    {
                        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                        "task": {"type": "worker", "index": index},
                    }
                )
            log = open(os.path.join(log_dir, f"{workers}w{index}.log"), "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, json.dumps(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=worker_env,
                )
            )
        deadline = time.monotonic() + timeout
        for proc in procs:
            if proc.wait(timeout=max(1, deadline - time.monotonic())) != 0:
                raise RuntimeError(f"a worker failed; see the logs in {log_dir}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(os.path.join(config["run_dir"], "history.csv"), newline="") as f:
        return [float(row["epoch_seconds"]) for row in csv.DictReader(f)]


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bce")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--images", type=int, default=128, help="train images")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="kerasmlic-mw-bench-")
    shards = _shards(workdir, args.images, args.image_size)
    rows = []
    for workers in (1, 2):
        run_dir = os.path.join(workdir, f"run{workers}")
        shutil.rmtree(run_dir, ignore_errors=True)
        config = {
            "model": {"name": args.model},
            "data": {"dir": shards, "image_size": args.image_size, "batch_size": args.batch_size},
            "train": {
                "epochs": 3,
                "steps_per_epoch": args.steps,
                "strategy": "multiworker",
                "seed": 0,
                "verbose": 0,
            },
            # Validation only on the last epoch, so the timed epoch 2 is training alone.
            "evaluation": {"batch_size": 16, "every": 100},
            "run_dir": run_dir,
        }
        seconds = run_cluster(config, workers, workdir)[1]
        rows.append((workers, seconds / args.steps, args.steps * args.batch_size / seconds))
    base_step, base_rate = rows[0][1], rows[0][2]
    print(
        f"model {args.model}, {args.image_size} px, global batch {args.batch_size}, "
        f"{args.steps} steps (epoch 2), {os.cpu_count()} CPUs"
    )
    print(f"{'workers':>7} {'s/step':>8} {'images/s':>9} {'vs 1 worker':>12} {'overhead/step':>14}")
    for workers, step, rate in rows:
        print(
            f"{workers:>7} {step:>8.3f} {rate:>9.1f} {rate / base_rate:>11.2f}x "
            f"{1000 * (step - base_step):>11.0f} ms"
        )


if __name__ == "__main__":
    main()
