"""Worker processes that die with their parent, and a pool of them for long tasks.

:func:`exit_with_parent` makes a spawned worker exit when the process that
started it is gone (``kill -9`` included), so no orphan keeps writing into a
folder that a rerun is about to use. :class:`WorkerPool` runs tasks in a fixed
number of such workers, each kept for many tasks (a TensorFlow import costs
about 8 s), and, unlike :class:`concurrent.futures.ProcessPoolExecutor` on
Python 3.11, kills its workers at once when a task fails or the caller stops,
and reports a worker that died instead of waiting for it.

This module imports no other kerasmlic module (the ground layer).
"""

import collections
import io
import multiprocessing
import os
import pickle
import sys
import time
import traceback
from multiprocessing import connection


def exit_with_parent(parent_pid):
    """Exit this process when ``parent_pid`` is no longer its parent.

    A pool worker blocks on a pipe or queue whose other end it may hold
    itself, so it never sees the parent die; a daemon thread polls the parent
    id instead (every 0.5 s).

    Args:
        parent_pid: The pid of the process that started this one.
    """
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class WorkerDied(RuntimeError):
    """A worker process ended while it ran a task (killed, out of memory, a crash)."""


class _PrefixedLines(io.TextIOBase):
    """A text stream that writes each complete line to ``stream`` behind ``prefix``.

    Two workers print at once; the prefix says whose line it is. Not a
    terminal, so Keras prints one line per epoch instead of a progress bar.
    """

    def __init__(self, stream, prefix):
        super().__init__()
        self._stream, self._prefix, self._pending = stream, prefix, ""

    def writable(self):
        return True

    def write(self, text):
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            # A bar's carriage returns would overwrite the prefix: keep the last state.
            self._stream.write(f"{self._prefix}{line.rsplit(chr(13), 1)[-1]}\n")
        self._stream.flush()
        return len(text)

    def flush(self):
        self._stream.flush()


def _picklable(error):
    """``error`` if it survives the trip to the parent, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))  # some exceptions pickle but cannot be rebuilt
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _worker_main(conn, parent_pid, initializer, initargs, expected_errors):
    """A worker's loop: run ``(label, function, args)`` messages until ``None``."""
    exit_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)
    stdout = sys.stdout
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        label, function, args = message
        sys.stdout = _PrefixedLines(stdout, f"[{label}] ") if label else stdout
        try:
            reply = ("ok", function(*args))
        except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent
            if not isinstance(error, expected_errors):
                traceback.print_exc()  # the parent gets the exception, not where it came from
            reply = ("error", _picklable(error))
        finally:
            sys.stdout.flush()
            sys.stdout = stdout
        conn.send(reply)


class WorkerPool:
    """A fixed number of spawned worker processes that run tasks one at a time each.

    ``spawn``, not ``fork``: the parent may already run TensorFlow's threads.
    Leaving the ``with`` block normally asks the workers to finish; leaving it
    by an exception (a failed task, Ctrl-C) kills them at once, which is safe
    wherever the tasks' output is written atomically or resumable.

    Args:
        size: Number of worker processes (at least 1).
        initializer: Optional picklable function each worker runs first.
        initargs: Its arguments.
        expected_errors: Exception types that reach the parent without the
            worker printing their traceback (a usage error's one line is
            the whole story); any other failure's traceback goes to stderr.

    Example:
        >>> with WorkerPool(2) as pool:  # doctest: +SKIP
        ...     for result in pool.map_unordered(pow, [("a", (2, 3)), ("b", (3, 2))]):
        ...         print(result)
    """

    def __init__(self, size, initializer=None, initargs=(), expected_errors=()):
        context = multiprocessing.get_context("spawn")
        self._workers = []
        for _ in range(size):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(child_end, os.getpid(), initializer, initargs, tuple(expected_errors)),
                daemon=True,
            )
            process.start()
            child_end.close()
            self._workers.append((process, parent_end))

    @property
    def pids(self):
        """The workers' process ids."""
        return [process.pid for process, _ in self._workers]

    def map_unordered(self, function, tasks):
        """Run ``function(*args)`` for every ``(label, args)`` task; yield results as they end.

        Args:
            function: A module-level (picklable) function.
            tasks: ``(label, args)`` pairs; a worker prefixes the lines the task
                prints with ``[label]`` (none when the label is empty).

        Yields:
            Each task's return value, in the order the tasks finish.

        Raises:
            Exception: The first exception a task raised (re-raised here).
            WorkerDied: A worker ended while running a task.
        """
        pending = collections.deque(tasks)
        idle = list(self._workers)
        busy = {}  # pipe end → (process, label)
        while pending or busy:
            while idle and pending:
                process, conn = idle.pop()
                label, args = pending.popleft()
                conn.send((label, function, tuple(args)))
                busy[conn] = (process, label)
            connection.wait(list(busy))
            for conn, (process, label) in list(busy.items()):
                if not conn.poll():  # a dead worker's pipe polls as readable: at its end
                    continue
                try:
                    status, value = conn.recv()
                except EOFError:
                    process.join()
                    raise WorkerDied(
                        f"the worker running {label or function.__name__} ended "
                        f"(exit code {process.exitcode})"
                    ) from None
                del busy[conn]
                idle.append((process, conn))
                if status == "error":
                    raise value
                yield value

    def close(self, kill=False):
        """Stop the workers: ask them to finish (``kill=False``) or kill them."""
        for process, conn in self._workers:
            if kill:
                process.kill()
            else:
                try:
                    conn.send(None)
                except OSError:
                    process.kill()
        for process, conn in self._workers:
            process.join(timeout=None if kill else 30)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)
