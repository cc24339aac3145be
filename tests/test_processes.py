"""WorkerPool: results from worker processes, their failures, and a worker that dies.

The tasks are this module's own functions (a spawned worker imports them by
name); none imports TensorFlow, so each test takes about a second.
"""

import os
import signal
import time

import psutil
import pytest

from kerasmlic.processes import WorkerDied, WorkerPool


def square_with_pid(x):
    print(f"squaring {x}")
    return x * x, os.getpid()


def wait_or_touch(role, path):
    """``wait``: return once ``path`` exists; ``touch``: create it. So ``wait`` ends last."""
    if role == "touch":
        open(path, "w").close()
        return role
    deadline = time.time() + 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    return role


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"no {x}")
    time.sleep(60)  # the other task: still running when the failure arrives
    return x


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def alive(pid):
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_results_come_from_the_workers_with_labelled_lines(capfd):
    with WorkerPool(2) as pool:
        pids = pool.pids
        results = list(pool.map_unordered(square_with_pid, [(f"t{x}", (x,)) for x in range(5)]))
    assert sorted(r[0] for r in results) == [0, 1, 4, 9, 16]
    ran_in = {r[1] for r in results}
    assert ran_in <= set(pids) and os.getpid() not in ran_in
    out = capfd.readouterr().out
    for x in range(5):
        assert f"[t{x}] squaring {x}\n" in out  # each line behind its task's label
    assert wait_gone(pids) == []  # a normal end lets the workers finish


def test_results_arrive_in_the_order_tasks_finish(tmp_path):
    # The first task cannot end before the second: however slow the machine, the
    # second's result must come first (in submission order it would come last).
    flag = str(tmp_path / "flag")
    with WorkerPool(2) as pool:
        tasks = [("first", ("wait", flag)), ("second", ("touch", flag))]
        assert list(pool.map_unordered(wait_or_touch, tasks)) == ["touch", "wait"]


def test_a_failing_task_raises_here_and_kills_the_other_worker(capfd):
    with pytest.raises(ValueError, match="no 1"):
        with WorkerPool(2, expected_errors=(ValueError,)) as pool:
            pids = pool.pids
            list(pool.map_unordered(fail_on, [("a", (0, 1)), ("b", (1, 1))]))
    # The task sleeping for 60 s does not hold the caller: its worker is killed.
    assert wait_gone(pids, timeout=5) == []
    assert "Traceback" not in capfd.readouterr().err  # an expected error: one line, no dump


def test_an_unexpected_error_prints_its_traceback_in_the_worker(capfd):
    with pytest.raises(ValueError, match="no 0"):
        with WorkerPool(1) as pool:
            list(pool.map_unordered(fail_on, [("a", (0, 0))]))
    err = capfd.readouterr().err
    assert "Traceback" in err and "in fail_on" in err


def test_a_worker_that_dies_is_reported_not_waited_for():
    start = time.time()
    with pytest.raises(WorkerDied, match=r"running doomed ended \(exit code -9\)"):
        with WorkerPool(2) as pool:
            list(pool.map_unordered(die, [("doomed", ())]))
    assert time.time() - start < 30
