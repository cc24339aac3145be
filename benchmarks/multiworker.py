"""Training images/s of 1 vs 2 local multi-worker processes on the same data.

Both runs use the multi-worker step driver (``train.strategy=multiworker``)
with the same global batch, model and shards; the 2-worker run is two worker
processes on 127.0.0.1 (``TF_CONFIG``), each with half the global batch. Four
epochs, validation after epochs 2 and 4: the training figure is epoch 3 (the
first pays tracing, the second validation's tracing), the validation figure
the pass after epoch 4 (``val_seconds`` in ``history.csv``). Validation is
sharded: each worker predicts its share of the val split and one all-gather
collects the scores, so with free cores 2 workers take about half the time
of 1.

On a machine with fewer free cores than workers the two processes share the
same cores, so 2 workers cannot be faster: the extra time per step is the
cost of the gradient all-reduce and the synchronisation between workers,
reported as the communication overhead per step. Unlike the other
benchmarks this one must start processes (one per worker); it still prints
one table with ratios vs the 1-worker baseline.

Usage:
    python benchmarks/multiworker.py [--model bce] [--image-size 64]
        [--batch-size 16] [--steps 20] [--images 128] [--val-images 64]
        [--workdir DIR]
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
    "from kerasmlic.training import train\n"
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


def _shards(workdir, images, image_size, val_images):
    from kerasmlic.data.build import build_split
    from kerasmlic.data.synth import synthesize

    shards = os.path.join(workdir, "shards")
    if os.path.isfile(os.path.join(shards, "dataset.json")):
        return shards
    synth = os.path.join(workdir, "synth")
    synthesize(
        synth,
        train=images,
        val=val_images,
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
    """Run ``workers`` worker processes of one config; return the chief's history.

    Args:
        config: The run's config (``train.strategy=multiworker``).
        workers: Worker processes on 127.0.0.1 (1: no ``TF_CONFIG``).
        log_dir: Folder for each worker's log.
        timeout: Seconds for the whole cluster.

    Returns:
        ``history.csv``'s rows, as dicts of floats.

    Raises:
        RuntimeError: A worker failed.
    """
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
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bce")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--images", type=int, default=128, help="train images")
    parser.add_argument("--val-images", type=int, default=64, help="val images (synthesised)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="kerasmlic-mw-bench-")
    shards = _shards(workdir, args.images, args.image_size, args.val_images)
    rows = []
    for workers in (1, 2):
        run_dir = os.path.join(workdir, f"run{workers}")
        shutil.rmtree(run_dir, ignore_errors=True)
        config = {
            "model": {"name": args.model},
            "data": {"dir": shards, "image_size": args.image_size, "batch_size": args.batch_size},
            "train": {
                "epochs": 4,
                "steps_per_epoch": args.steps,
                "strategy": "multiworker",
                "seed": 0,
                "verbose": 0,
            },
            # Validation after epochs 2 and 4: epoch 3 is training alone, the
            # pass after epoch 4 is warm (traced after epoch 2).
            "evaluation": {"batch_size": 16, "every": 2},
            "run_dir": run_dir,
        }
        history = run_cluster(config, workers, workdir)
        seconds, val_seconds = history[2]["epoch_seconds"], history[3]["val_seconds"]
        rows.append(
            (workers, seconds / args.steps, args.steps * args.batch_size / seconds, val_seconds)
        )
    base_step, base_rate, base_val = rows[0][1], rows[0][2], rows[0][3]
    print(
        f"model {args.model}, {args.image_size} px, global batch {args.batch_size}, "
        f"{args.steps} steps (epoch 3), {args.val_images} val images (sharded), "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'workers':>7} {'s/step':>8} {'images/s':>9} {'vs 1 worker':>12} {'overhead/step':>14} "
        f"{'val pass s':>11} {'vs 1 worker':>12}"
    )
    for workers, step, rate, val in rows:
        print(
            f"{workers:>7} {step:>8.3f} {rate:>9.1f} {rate / base_rate:>11.2f}x "
            f"{1000 * (step - base_step):>11.0f} ms {val:>11.2f} {val / base_val:>11.2f}x"
        )


if __name__ == "__main__":
    main()
