"""Kill -9 anywhere loses at most the work in flight: ``build`` and ``train``, real processes.

``build`` is SIGKILLed at random moments (before any shard, inside the shard
writes) with one and with two worker processes; the same command then
finishes, its shards are byte-identical to an uninterrupted build, ``kerasmlic
verify`` passes and no worker process is left behind. ``train`` is SIGKILLed
the moment an epoch's row reaches ``history.csv`` (the end-of-epoch writes:
history row, then the backup); the same command continues and ``history.csv``
holds each epoch once. Mid-epoch kills of ``train`` (default strategy) and of a
multi-worker worker are in ``test_training.py`` and ``test_multiworker.py``.
"""

import csv
import json
import os
import random
import re
import signal
import subprocess
import time

import psutil
import pytest
from helpers_data import write_tiny_coco
from helpers_training import cli_command, sigkilled_on_exit, subprocess_env, tiny_shards

from kerasmlic.data.verify import verify_data


def _build_args(tiny, out, workers):
    return [
        "build",
        "--annotations",
        tiny.annotations,
        "--images",
        tiny.images,
        "--split",
        "train",
        "--out",
        out,
        "--shards",
        "16",
        "--workers",
        str(workers),
    ]


def _run(args, timeout=300):
    return subprocess.run(
        cli_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def _sidecars(out):
    if not os.path.isdir(out):
        return 0
    return sum(n.endswith(".done.json") for n in os.listdir(out))


def _kill_build(args, out, when, rng):
    """Start a build and SIGKILL its main process; return the worker pids it had."""
    proc = subprocess.Popen(
        cli_command(*args),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = set()
    with sigkilled_on_exit(proc):
        deadline = time.monotonic() + 120
        start = _sidecars(out)
        if when == "early":
            time.sleep(rng.uniform(0.2, 1.0))  # during start-up or the plan
        else:
            # Inside the writes: after one more shard completed, plus a random delay.
            while _sidecars(out) <= start and proc.poll() is None:
                assert time.monotonic() < deadline, "no shard completed in time"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        try:
            workers = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return proc.returncode, workers


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    tiny = write_tiny_coco(root, num_images=480, image_size=128, seed=5)
    clean = str(root / "clean")
    assert _run(_build_args(tiny, clean, 1)).returncode == 0
    with open(os.path.join(clean, "dataset.json")) as f:
        reference = json.load(f)["splits"]["train"]["shards"]
    return tiny, reference


@pytest.mark.parametrize("workers", [1, 2])
def test_build_killed_anywhere_then_rerun_gives_the_uninterrupted_shards(
    dataset, tmp_path, workers
):
    tiny, reference = dataset
    out = str(tmp_path / "out")
    args = _build_args(tiny, out, workers)
    rng = random.Random(workers)
    killed = 0
    for when in ("early", "writing", "writing"):
        code, children = _kill_build(args, out, when, rng)
        if code == -signal.SIGKILL:
            killed += 1
        # No orphan: worker processes of a killed build exit by themselves.
        deadline = time.monotonic() + 30
        while any(
            psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in children
        ):
            assert time.monotonic() < deadline, f"orphaned build workers: {children}"
            time.sleep(0.1)
        if os.path.exists(os.path.join(out, "dataset.json")):
            # Killed after the manifest was written: what it lists is whole.
            assert verify_data(out)["bad"] == []
    assert killed >= 2, "the build ended before it could be killed"

    done = _run(args)
    assert done.returncode == 0, done.stderr[-2000:]
    written, reused = (
        int(x) for x in re.search(r"\((\d+) written, (\d+) reused\)", done.stdout).groups()
    )
    assert written + reused == 16 and reused >= 1, done.stdout  # finished shards were kept
    with open(os.path.join(out, "dataset.json")) as f:
        shards = json.load(f)["splits"]["train"]["shards"]
    assert shards == reference  # byte-identical to an uninterrupted build
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    check = _run(["verify", out])
    assert check.returncode == 0 and "16 of 16 shards match" in check.stdout, check.stderr


def _history_epochs(path):
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch", "").isdigit()]


# About 45 s on two idle cores (two training processes). The default run keeps
# the mid-epoch kill of test_training.py and the multi-worker kill.
@pytest.mark.slow
def test_train_killed_at_the_end_of_an_epoch_continues_with_each_epoch_once(tmp_path):
    data = tiny_shards(str(tmp_path / "data"), train=32, val=16)
    run_dir = tmp_path / "run"
    args = ["train", "--data", data, "--model", "bce", "--epochs", "3", "--batch-size", "8"]
    args += ["--image-size", "32", "--run-dir", str(run_dir), "--set", "train.verbose=2"]
    history = str(run_dir / "history.csv")
    proc = subprocess.Popen(
        cli_command(*args),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not _history_epochs(history):  # epoch 0's row is written: kill now
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch ended in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()

    second = _run(args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert _history_epochs(history) == [0, 1, 2]  # each epoch once
    assert (run_dir / "summary.json").exists()
