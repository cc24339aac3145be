"""Test helpers for training, evaluation and reproduce: tiny shards and a CLI runner."""

import contextlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_shards(base_dir, *, train=64, val=32, test=0, image_size=32, seed=0):
    """Synthesise and build a tiny copy of the built-in dataset once per folder.

    Args:
        base_dir: Folder to hold ``synth/`` and ``shards/`` (reused if built).
        train: Train images.
        val: Val images.
        test: Test images (0: no test split).
        image_size: Image side.
        seed: Synth seed.

    Returns:
        The shard folder.
    """
    from kerasmlic.data.build import build_split
    from kerasmlic.data.synth import synthesize

    shards = os.path.join(base_dir, "shards")
    if os.path.isfile(os.path.join(shards, "dataset.json")):
        return shards
    synth = os.path.join(base_dir, "synth")
    synthesize(
        synth,
        train=train,
        val=val,
        test=test,
        image_size=image_size,
        seed=seed,
        contact_sheet=False,
        progress=False,
    )
    for split in ("train", "val", "test")[: 3 if test else 2]:
        build_split(
            os.path.join(synth, "annotations", f"instances_{split}.json"),
            os.path.join(synth, split),
            split,
            shards,
            shards=2,
            progress=False,
        )
    return shards


def cli_main(argv):
    """Run a ``kerasmlic`` command in-process; return its exit code."""
    from kerasmlic.cli import main

    return main(argv)


def cli_command(*args):
    """Return the argv of a ``kerasmlic`` subprocess."""
    return [sys.executable, "-m", "kerasmlic", *args]


def subprocess_env():
    """Environment of test subprocesses: quiet TensorFlow, repo importable."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args, cwd, timeout=300):
    """Run ``kerasmlic ARGS`` in a subprocess; return the CompletedProcess."""
    return subprocess.run(
        cli_command(*args),
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def sigkilled_on_exit(proc):
    """Yield ``proc``; on leaving, SIGKILL it if it still runs and reap it (also on failure)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
