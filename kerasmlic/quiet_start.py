"""Keep TensorFlow's CUDA start-up lines off a machine that has no GPU.

Importing TensorFlow prints, before its logging is initialised (so
``TF_CPP_MIN_LOG_LEVEL`` does not apply to them), ``WARNING: All log messages
before absl::InitializeLog() is called ...`` and ``cudart_stub.cc ... Could
not find cuda drivers``, twice; the first device listing then logs ``failed
call to cuInit ... UNKNOWN ERROR (303)`` at error level. Raising the log level
to hide that would also hide real errors, so instead :func:`install` arranges
that the first ``import tensorflow`` (from any module) runs with file
descriptor 2 sent to a temporary file, followed by the physical-device probe
that logs the cuInit line; then everything captured is written to the real
stderr except:

* the ``absl::InitializeLog`` notice;
* lines logged before log initialisation at a level below
  ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow applies the level only after);
* on a machine with no NVIDIA device (no ``/dev/nvidia*``), the
  ``cudart_stub`` and ``cuInit`` lines. Where a GPU exists they are real news
  and pass.

Anything else (Python warnings, real TensorFlow errors) is passed on. Later
output is not touched: stderr is restored as soon as the import is done.
"""

import contextlib
import glob
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

_ABSL_NOTICE = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called")
_NO_GPU_LINES = (
    re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers"),
    re.compile(r"cuda_platform\.cc:\d+\] failed call to cuInit"),
    re.compile(r"cuda_executor\.cc:\d+\] .*(cuInit|CUDA_ERROR_NO_DEVICE)"),
)
# absl's prefix: severity letter, MMDD, time (epoch seconds before log set-up), thread,
# file:line]
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def has_nvidia_device():
    """Return whether this machine exposes an NVIDIA device (``/dev/nvidia<N>``)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def filter_startup_lines(text, *, min_level=None, gpu=None):
    """Drop the known start-up lines from captured stderr text.

    Args:
        text: What was written to stderr during the TensorFlow import.
        min_level: ``TF_CPP_MIN_LOG_LEVEL`` (default: from the environment).
        gpu: Whether the machine has an NVIDIA device (default: probed).

    Returns:
        The text to show (possibly empty). A line continuing a dropped log
        line (one not starting a new log record) is dropped with it.
    """
    if min_level is None:
        try:
            min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            min_level = 0
    gpu = has_nvidia_device() if gpu is None else gpu
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        head = _LOG_LINE.match(line)
        if _ABSL_NOTICE.match(line):
            dropping = True
            continue
        if head:
            dropping = _SEVERITY[head.group(1)] < min_level or (
                not gpu and any(p.search(line) for p in _NO_GPU_LINES)
            )
        elif dropping and line.startswith(("To enable", " ")):
            continue  # the second line of a dropped multi-line record
        else:
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr():
    """Send fd 2 to a temporary file; on exit write it back, filtered."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    saved = os.dup(2)
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
        capture.close()
        shown = filter_startup_lines(text)
        if shown:
            os.write(2, shown.encode("utf-8"))


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader inside :func:`_filtered_stderr`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _filtered_stderr():
            try:
                self._loader.exec_module(module)
            finally:
                module.__loader__ = self._loader
                if getattr(module, "__spec__", None) is not None:
                    module.__spec__.loader = self._loader
            # The cuInit line comes from the first device listing, not the import.
            try:
                module.config.list_physical_devices("GPU")
            except Exception:  # a broken driver is reported by TensorFlow's own use later
                pass

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, wrapping its loader in :class:`_QuietLoader`."""

    def __init__(self):
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        uninstall()
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install():
    """Filter the start-up lines of the first ``import tensorflow`` (module doc).

    Does nothing when TensorFlow is already imported or the hook is installed.
    """
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def uninstall():
    """Remove the import hook (after it has fired, or in tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]
