"""Test helpers for multi-worker training: local worker processes on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from helpers_training import subprocess_env

SCRIPTED_MAP_ENV = "KERASMLIC_TEST_SCRIPTED_MAP"
"""Test hook of the worker script: comma-separated val mAPs that replace the real ones."""

# A worker process: train(config) with --strategy multiworker, then dump its final
# weights (flattened, in variable order) for the identical-weights check.
WORKER_SCRIPT = r"""
import json, os, sys
import numpy as np
from kerasmlic.training import train
config = json.loads(sys.argv[1])
out = sys.argv[2]
scripted = os.environ.get("KERASMLIC_TEST_SCRIPTED_MAP")
if scripted:
    from kerasmlic.training import callbacks
    values = iter(float(v) for v in scripted.split(","))
    real = callbacks.MultiLabelEvaluation.evaluate
    def evaluate(self):
        results = real(self)
        results["mAP"] = next(values)
        return results
    callbacks.MultiLabelEvaluation.evaluate = evaluate
from kerasmlic.training import multiworker
original = multiworker._run
def run(config, strategy, model, *args):
    result = original(config, strategy, model, *args)
    np.savez(out, **{f"{i}:{v.path}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)})
    return result
multiworker._run = run
train(config, log=lambda *a: print(*a, flush=True))
"""


def free_ports(count):
    """Return ``count`` free TCP ports on 127.0.0.1 (bound once, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    """Return the ``TF_CONFIG`` JSON of worker ``index`` in a local cluster."""
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def start_worker(config, weights_out, log_path, *, ports=None, index=0, extra_env=None):
    """Start one worker process; return the ``Popen`` (stdout+stderr to ``log_path``)."""
    env = subprocess_env()
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("TF_CONFIG", None)
    if ports is not None:
        env["TF_CONFIG"] = tf_config(ports, index)
    # A SIGKILLed worker cannot delete its temporary folder: keep it in the test's tmp.
    env["TMPDIR"] = os.path.dirname(os.path.abspath(log_path))
    env.update(extra_env or {})
    log = open(log_path, "w")  # noqa: SIM115  (closed by the child's exit; kept for the test)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, json.dumps(config), str(weights_out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def wait_all(procs, timeout):
    """Wait for every process until ``timeout`` seconds in all; return their exit codes."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def kill_all(procs):
    """SIGKILL every process still running (by its own process group) and reap it."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
