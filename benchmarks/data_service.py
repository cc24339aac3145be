"""Training-stream throughput and the trainer's CPU per image: local tf.data vs the tf.data service.

The consumer (this process) reads kerasmlic's training stream
(``make_dataset(training=True)``: interleaved reads, shuffle, parse, random
resized crop of the JPEG, flip, resize to 224 px, normalise, batch 64,
prefetch) in three ways:

(a) local: the pipeline runs in this process, on all its cores;
(b) service, 1 worker: ``kerasmlic.training.data_service.distribute`` sends
    the same pipeline to a tf.data service dispatcher with one
    ``kerasmlic data-service worker`` process, and this process only receives
    the finished batches over gRPC (loopback);
(c) service, 2 workers: the same with two worker processes.

Dispatchers and workers are separate processes (started with the real CLI
verb, stopped at the end), so this process's CPU time (``getrusage``,
user + system) is the trainer's own cost per image: what the service should
cut (goal: >= 50% less than (a), at no loss of images/s). The workers' CPU
per image is shown beside it (their sum is what the service costs in total).

The data are the JPEGs and shards of ``benchmarks/coco_like_data.py``
(COCO-like, longer side mostly 640 px, quality 90), generated once and cached
under ``benchmarks/_work/input_pipeline``.

Each repeat times (a), (b), (c) in alternating ``--slice``-second windows,
each on a fresh iterator (a new service job) after ``--warmup`` batches,
until each has run ``--seconds``, so all see the same load from other
programs. After a service window the script waits until that service's
workers are idle (a released job's buffers full), so their leftover work does
not take CPU from the next window; each repeat prints the workers' CPU
seconds spent while the other inputs were timed, which should be ~0. The
table shows the best and median images/s over repeats and the median CPU
milliseconds per image; ratios are against (a).

Usage::

    .venv/bin/python benchmarks/data_service.py [--images 2000] [--seconds 20] [--repeats 3]

On a machine with few cores the workers and the trainer share them, so
images/s cannot rise with the service there; the CPU per image of the
trainer is the figure that carries over. Measure images/s on a host whose
spare cores (or other hosts) run the workers.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import coco_like_data  # noqa: E402  (the benchmarks' COCO-like JPEGs and shards)
import input_pipeline  # noqa: E402  (the training augmentation of issue 2)

A = "(a) local tf.data"
B = "(b) service, 1 worker"
C = "(c) service, 2 workers"
START_TIMEOUT = 120  # seconds for a server process to come up on a busy machine


def _own_cpu_seconds():
    """User + system CPU seconds of this process alone (not its child servers)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pids):
    """User + system CPU seconds of the given processes (0 for one that is gone)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _settle(pids, idle_cores=0.05, poll=0.5, timeout=30.0):
    """Wait until the processes together use under ``idle_cores`` of CPU, or ``timeout`` s.

    A released service job's workers go on filling its buffers for a moment;
    that work serves no timed image and would take CPU from the next window.
    """
    deadline = time.monotonic() + timeout
    last = _cpu_of(pids)
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = _cpu_of(pids)
        if now - last < idle_cores * poll:
            return
        last = now


class Service:
    """A dispatcher and ``workers`` worker processes on 127.0.0.1, via the real CLI verb.

    Args:
        workers: Number of worker processes.
        log_dir: Where each process's output goes.
        name: Prefix of the log files.
    """

    def __init__(self, workers, log_dir, name):
        from kerasmlic.training.data_service import free_port

        self.port = free_port()
        self.address = f"grpc://127.0.0.1:{self.port}"
        self.procs, self.logs = [], []
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        self._start(["dispatcher", "--port", str(self.port)], env, log_dir, f"{name}-dispatcher")
        self._wait_for("dispatcher listening", 0)
        for i in range(workers):
            args = ["worker", "--dispatcher", f"127.0.0.1:{self.port}", "--host", "127.0.0.1"]
            self._start(args, env, log_dir, f"{name}-worker{i}")
            self._wait_for("registered", len(self.procs) - 1)

    def _start(self, args, env, log_dir, name):
        path = os.path.join(log_dir, f"{name}.log")
        log = open(path, "w")
        cmd = [sys.executable, "-m", "kerasmlic", "data-service", *args]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        self.logs.append(path)

    def _wait_for(self, text, index):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.logs[index]) as f:
                if text in f.read():
                    return
            if self.procs[index].poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        with open(self.logs[index]) as f:
            raise RuntimeError(f"{self.logs[index]} did not say {text!r}:\n{f.read()}")

    @property
    def worker_pids(self):
        """Process ids of the workers (the dispatcher excluded)."""
        return [p.pid for p in self.procs[1:]]

    def stop(self):
        """Stop every process of this service (SIGTERM, then SIGKILL)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def local_dataset(shards):
    """(a): kerasmlic's training stream with input_pipeline's crop and flip."""
    return input_pipeline.kerasmlic_dataset(shards)


def service_dataset(shards, address):
    """(b), (c): the same stream, made by the service's workers."""
    from kerasmlic.training.data_service import distribute

    return distribute(local_dataset(shards), address)


def run_interleaved(datasets, worker_pids, seconds, warmup, slice_s):
    """Time the streams in alternating ``slice_s`` windows until each ran ``seconds``.

    Returns:
        ``({name: (images per wall second, own CPU ms per image, workers' CPU ms per
        image)}, {service name: its workers' CPU seconds during the other inputs'
        windows})``. The latter should be ~0: a service's workers still busy
        (filling the buffers of a released job) would take CPU from the input timed.
    """
    totals = {name: [0, 0.0, 0.0, 0.0] for name in datasets}
    all_pids = {name: pids for name, pids in worker_pids.items() if pids}
    stray = dict.fromkeys(all_pids, 0.0)
    while min(t[1] for t in totals.values()) < seconds:
        for name, ds in datasets.items():
            others = {other: _cpu_of(pids) for other, pids in all_pids.items() if other != name}
            it = iter(ds)
            for _ in range(warmup):
                next(it)
            pids = worker_pids.get(name, [])
            n, t0, c0, w0 = 0, time.perf_counter(), _own_cpu_seconds(), _cpu_of(pids)
            while time.perf_counter() - t0 < slice_s:
                n += int(next(it)[0].shape[0])
            t = totals[name]
            t[0] += n
            t[1] += time.perf_counter() - t0
            t[2] += _own_cpu_seconds() - c0
            t[3] += _cpu_of(pids) - w0
            for other, start in others.items():
                stray[other] += _cpu_of(all_pids[other]) - start
            del it  # releases the service job
            _settle(pids)  # ... whose workers finish filling its buffers before the next window
    rates = {
        name: (n / wall, 1e3 * cpu / max(n, 1), 1e3 * wcpu / max(n, 1))
        for name, (n, wall, cpu, wcpu) in totals.items()
    }
    return rates, stray


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slice", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--work", default=os.path.join(HERE, "_work", "input_pipeline"))
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    _, shards = coco_like_data.prepare_data(args.work, args.images, workers=cores)
    log_dir = os.path.join(HERE, "_work", "data_service_logs")
    os.makedirs(log_dir, exist_ok=True)

    import tensorflow as tf

    from kerasmlic.data import manifest

    info = manifest.split_info(manifest.load_manifest(shards), "train")
    print(
        f"data: {info['num_examples']} JPEGs, {len(info['shards'])} shards; {cores} cores; "
        f"TF {tf.__version__}; {input_pipeline.IMAGE_SIZE}-px training mode, batch "
        f"{input_pipeline.BATCH}; load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    services = {}
    try:
        services[B] = Service(1, log_dir, "one")
        services[C] = Service(2, log_dir, "two")
        datasets = {A: local_dataset(shards)}
        for name, service in services.items():
            datasets[name] = service_dataset(shards, service.address)
        worker_pids = {name: s.worker_pids for name, s in services.items()}
        results = {name: [] for name in datasets}
        for r in range(args.repeats):
            load = os.getloadavg()[0]
            timed, stray = run_interleaved(
                datasets, worker_pids, args.seconds, args.warmup, args.slice
            )
            for name, row in timed.items():
                results[name].append(row)
                rate, own, workers = row
                print(
                    f"  run {r + 1}: {name:24s} {rate:7.1f} img/s  trainer {own:6.2f} CPU-ms/img"
                    f"  workers {workers:6.2f} CPU-ms/img  (load avg {load:.1f} at start)",
                    flush=True,
                )
            print(
                "  workers' CPU s while other inputs were timed (should be ~0): "
                + ", ".join(f"{name} {cpu:.1f}" for name, cpu in stray.items()),
                flush=True,
            )
    finally:
        for service in services.values():
            service.stop()

    best = {name: max(r[0] for r in rows) for name, rows in results.items()}
    median = {name: statistics.median(r[0] for r in rows) for name, rows in results.items()}
    own = {name: statistics.median(r[1] for r in rows) for name, rows in results.items()}
    wrk = {name: statistics.median(r[2] for r in rows) for name, rows in results.items()}
    print()
    print(
        f"{'input':24s} {'best img/s':>10s} {'median':>8s} {'vs (a)':>7s} "
        f"{'trainer CPU-ms/img':>19s} {'vs (a)':>7s} {'workers CPU-ms/img':>19s}"
    )
    for name in results:
        print(
            f"{name:24s} {best[name]:10.1f} {median[name]:8.1f} {median[name] / median[A]:7.2f} "
            f"{own[name]:19.2f} {own[name] / own[A]:7.2f} "
            f"{f'{wrk[name]:.2f}' if name != A else '-':>19s}"
        )
    print()
    for name in (B, C):
        cut = 1 - own[name] / own[A]
        keeps = median[name] >= median[A]
        print(
            f"{name}: trainer CPU per image {100 * cut:.0f}% less than (a) (goal >= 50%: "
            f"{'met' if cut >= 0.5 else 'MISSED'}); median img/s {median[name] / median[A]:.2f}x "
            f"(a) (goal >= 1: {'met' if keeps else 'MISSED'})"
        )
    print(f"load avg at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
