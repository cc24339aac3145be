"""Quiet start-up: TensorFlow's CUDA probing lines are dropped, real messages kept."""

import subprocess
import sys

from helpers_training import REPO, subprocess_env

from kerasmlic.quiet_start import filter_startup_lines

ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
CUDART = (
    "I0000 00:00:1796020199.388765    5477 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
)
ONEDNN = "I0000 00:00:1796020199.388459    5477 port.cc:153] oneDNN custom operations are on.\n"
GUARD = (
    "I0000 00:00:1796020199.464004    5477 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized\nTo enable the following instructions: AVX2, rebuild TensorFlow.\n"
)
CUINIT = (
    "E0000 00:00:1796020204.209238    5477 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL_ERROR = "E0000 00:00:1796020204.3    5477 op_kernel.cc:1857] OP_REQUIRES failed: disk full\n"
REAL_WARNING = "W0000 00:00:1796020204.4    5477 env.cc:12] File system slow\n"
PYTHON = "/x/y.py:3: DeprecationWarning: old API\n  import z\n"


def test_known_startup_lines_are_dropped_and_the_rest_kept():
    text = ABSL + ONEDNN + CUDART + GUARD + ABSL + CUDART + CUINIT + REAL_ERROR
    text += REAL_WARNING + PYTHON
    assert filter_startup_lines(text, min_level=2, gpu=False) == REAL_ERROR + PYTHON
    assert filter_startup_lines(text, min_level=1, gpu=False) == REAL_ERROR + REAL_WARNING + PYTHON
    # With an NVIDIA device present the CUDA lines are real news and stay.
    kept = filter_startup_lines(text, min_level=2, gpu=True)
    assert kept == CUINIT + REAL_ERROR + PYTHON
    kept = filter_startup_lines(text, min_level=0, gpu=True)
    assert kept == ONEDNN + CUDART + GUARD + CUDART + CUINIT + REAL_ERROR + REAL_WARNING + PYTHON


SCRIPT = r"""
import os, sys, warnings
os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
from kerasmlic.cli.app import quiet_tensorflow
quiet_tensorflow()
print("before import", file=sys.stderr, flush=True)
import keras  # imports tensorflow through the hook
import tensorflow as tf
tf.constant(1.0) + 1.0  # devices are up: the cuInit line would be logged by now
print("after import", tf.config.list_physical_devices("CPU")[0].device_type, file=sys.stderr)
warnings.warn("a python warning still shows")
"""


def test_a_command_starts_without_the_cuda_lines_in_a_real_process():
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "before import" and "after import CPU" in lines
    assert "a python warning still shows" in proc.stderr
    for noise in ("cudart_stub", "cuInit", "absl::InitializeLog", "oneDNN custom operations"):
        assert noise not in proc.stderr, proc.stderr


def test_without_the_hook_the_lines_do_appear():
    # The control: on this machine a bare import does print them, so the test above
    # measures the hook, not a quiet machine.
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    proc = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; tf.constant(1.0) + 1.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    from kerasmlic.quiet_start import has_nvidia_device

    if not has_nvidia_device():
        assert "cudart_stub" in proc.stderr or "cuInit" in proc.stderr, proc.stderr
