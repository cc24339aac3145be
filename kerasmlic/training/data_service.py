"""tf.data service: preprocess the training stream on other processes or hosts.

``kerasmlic data-service dispatcher --port P`` starts the service's
dispatcher, ``kerasmlic data-service worker --dispatcher HOST:P`` a worker
(any number, on any hosts that read the shards at the same path), and
``kerasmlic train --data-service grpc://HOST:P`` (``data.service``) sends the
training pipeline there: the workers read, decode, augment and batch, and the
training process only receives finished batches (:func:`distribute`).

Only the training stream goes through the service; validation, evaluation,
calibration and the exported SavedModel read and decode locally as before.

The address checks here run before TensorFlow is asked to connect: TF's
clients and workers retry an unreachable dispatcher without a deadline, so a
typo in a host name would otherwise be a silent hang.
"""

import hashlib
import json
import signal
import socket
import threading
import time

from kerasmlic.errors import UsageError

PROTOCOL = "grpc"
"""The transport of the tf.data service (its default, and the only one TF ships)."""

DEFAULT_DISPATCHER_PORT = 5050
"""The dispatcher's port when ``--port`` is not given (the one TF's guide uses)."""

DEFAULT_WORKER_WAIT = 30.0
"""Seconds a starting worker waits for its dispatcher to accept connections."""

CONNECT_TIMEOUT = 5.0
"""Seconds :func:`check_reachable` waits for the dispatcher's port to answer."""

# Each training element (a batch) is made by exactly one service worker and read by
# exactly one consumer: the dispatcher hands out the source's splits (shard files)
# one at a time, so a pass over the shards is divided among the workers and adding
# workers adds throughput, never duplicates. "parallel_epochs" would run the whole
# pipeline on every worker: with the config's fixed seed they would all shuffle and
# augment alike, so N workers would send every batch N times in a row. The train
# stream repeats forever (a fixed steps_per_epoch ends each epoch), so the
# at-most-once visitation of "distributed_epoch" (a split in flight on a worker that
# dies is not redone) costs a few images of one pass, never an end-of-data stall;
# and with several consumers of one job (multiworker) each batch goes to one of them,
# which is the disjoint split of the data that synchronous training wants.
PROCESSING_MODE = "distributed_epoch"

# Compression ("AUTO": snappy) costs the workers CPU to compress and the trainer CPU
# to uncompress every batch, the CPU the service is there to save it, to shrink
# float32 pixels that vary in their low bits. Uncompressed, a 224-px image is 602 KB:
# free on loopback, ~2,000 images/s on a 10 Gb/s link (docs/distributed.md).
COMPRESSION = None


def parse_address(text, *, what="data.service"):
    """Split a tf.data service address into host and port.

    Args:
        text: ``grpc://HOST:PORT`` or ``HOST:PORT`` (an IPv6 host in brackets,
            ``grpc://[::1]:5050``).
        what: The flag or key the address came from, for the error message.

    Returns:
        ``(host, port)``.

    Raises:
        UsageError: Not of that form, another protocol, or a bad port.
    """
    bad = f"{what} expects grpc://HOST:PORT or HOST:PORT, got {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise UsageError(bad)
    text = text.strip()
    if "://" in text:
        protocol, text = text.split("://", 1)
        if protocol != PROTOCOL:
            raise UsageError(f"{bad} (the tf.data service speaks only {PROTOCOL})")
    host, sep, port = text.rpartition(":")
    if not sep or not host or "/" in text or any(c.isspace() for c in text):
        raise UsageError(bad)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or ("[" in host or "]" in host):
        raise UsageError(bad)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{bad}: the port must be 1-65535")
    return host, int(port)


def _join(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_address(text, *, what="data.service"):
    """Return the address in the form TensorFlow takes, ``grpc://HOST:PORT``.

    Args:
        text: ``grpc://HOST:PORT`` or ``HOST:PORT``.
        what: The flag or key the address came from, for the error message.

    Returns:
        The normalised address.

    Raises:
        UsageError: A malformed address (see :func:`parse_address`).
    """
    host, port = parse_address(text, what=what)
    return f"{PROTOCOL}://{_join(host, port)}"


def check_reachable(address, *, timeout=CONNECT_TIMEOUT, what="data.service"):
    """Fail with one line unless something accepts connections at the dispatcher's port.

    Args:
        address: The dispatcher, ``grpc://HOST:PORT`` or ``HOST:PORT``.
        timeout: Seconds to wait for the connection.
        what: The flag or key the address came from, for the error message.

    Raises:
        UsageError: Malformed address, unknown host, or nothing listening.
    """
    host, port = parse_address(address, what=what)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        reason = e.strerror or type(e).__name__
        if isinstance(e, TimeoutError | socket.timeout):
            reason = f"no answer in {timeout:g} s"
    raise UsageError(
        f"cannot reach the tf.data service dispatcher at {PROTOCOL}://{_join(host, port)} "
        f"({reason}); start one with `kerasmlic data-service dispatcher --port {port}` "
        f"on {host}, or fix {what}"
    )


def check_port_free(port):
    """Fail with one line when this host's ``port`` is taken.

    gRPC binds with ``SO_REUSEPORT``, so a second dispatcher on a taken port
    would start "successfully" and share the port with the first; a bind
    without it tells the truth (``SO_REUSEADDR`` only lets it past the
    TIME_WAIT connections of a server stopped a moment ago).

    Args:
        port: A TCP port; 0 (any free port) always passes.

    Raises:
        UsageError: The port is in use.
    """
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise UsageError(
                f"port {port} is not free ({e.strerror}); pick another --port"
            ) from None


def free_port():
    """Return a TCP port that is free on this host now.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _check_port_number(port, *, allow_zero):
    ok = isinstance(port, int) and not isinstance(port, bool) and 0 <= port < 65536
    if not ok or (port == 0 and not allow_zero):
        low = 0 if allow_zero else 1
        raise UsageError(f"--port must be {low}-65535, got {port!r}")


def start_dispatcher(port=DEFAULT_DISPATCHER_PORT):
    """Start a tf.data service dispatcher in this process.

    Args:
        port: TCP port to listen on (all interfaces).

    Returns:
        The started ``tf.data.experimental.service.DispatchServer``.

    Raises:
        UsageError: A bad or taken port.
    """
    _check_port_number(port, allow_zero=False)
    check_port_free(port)
    import tensorflow as tf

    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(port=port, protocol=PROTOCOL))


def start_worker(dispatcher, *, port=0, host=None, wait=DEFAULT_WORKER_WAIT):
    """Start a tf.data service worker in this process and register it.

    Args:
        dispatcher: The dispatcher, ``HOST:PORT`` or ``grpc://HOST:PORT``.
        port: TCP port to listen on; 0 picks a free one.
        host: The name or IP clients reach this worker by (the dispatcher
            passes it on to them); default this machine's host name. Use an
            address the training hosts can resolve.
        wait: Seconds to wait for the dispatcher to accept connections, so
            that a dispatcher and its workers may start together.

    Returns:
        ``(server, port)``: the started
        ``tf.data.experimental.service.WorkerServer`` and its port.

    Raises:
        UsageError: A bad address or port, or no dispatcher within ``wait``.
    """
    _check_port_number(port, allow_zero=True)
    check_port_free(port)
    dispatcher_host, dispatcher_port = parse_address(dispatcher, what="--dispatcher")
    # WorkerServer's start blocks, retrying forever, until the dispatcher answers, so
    # the worker asks first. It waits only after TensorFlow has started (seconds): a
    # dispatcher started at the same time is then likely up already.
    deadline = time.monotonic() + wait
    try:
        check_reachable(dispatcher, what="--dispatcher")
        reachable = True
    except UsageError:
        if wait <= 0:
            raise
        reachable = False
    import tensorflow as tf

    while not reachable:
        try:
            check_reachable(dispatcher, what="--dispatcher")
            reachable = True
        except UsageError as e:
            if time.monotonic() >= deadline:
                raise UsageError(f"{e} (waited {wait:g} s)") from None
            time.sleep(0.5)
    service = tf.data.experimental.service
    # The worker tells the dispatcher where clients reach it: a fixed port (a free one
    # picked here for port 0) so that the address, and the start-up line, name it.
    port = port or free_port()
    config = service.WorkerConfig(
        dispatcher_address=_join(dispatcher_host, dispatcher_port),
        worker_address=_join(host or socket.gethostname(), port),
        port=port,
        protocol=PROTOCOL,
    )
    return service.WorkerServer(config), port


def serve_until_signal(server, *, stop_signals=(signal.SIGINT, signal.SIGTERM), poll=0.5):
    """Block until SIGINT or SIGTERM, then stop ``server``.

    ``server.join()`` waits inside TensorFlow's C++ code, where Python never
    runs a signal handler; a short Python wait loop keeps Ctrl-C and
    ``kill`` working and the exit clean.

    Args:
        server: A started ``DispatchServer`` or ``WorkerServer``.
        stop_signals: The signals that stop it.
        poll: Seconds between checks of the stop flag.

    Returns:
        The signal number that stopped the server.
    """
    received = []
    stop = threading.Event()

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
    try:
        while not stop.wait(poll):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    server.stop()
    return received[0]


def shared_job_name(config):
    """Name the one service job that all workers of a multi-worker run read from.

    Every worker runs the same command, so the same config gives every worker
    the same name; a different run (or a changed data pipeline) gets another
    job, never the stale stream of an earlier one.

    Args:
        config: A resolved config.

    Returns:
        A name of the form ``kerasmlic-<16 hex digits>``.
    """
    keys = {
        "run_dir": config.get("run_dir"),
        "model": config.get("model"),
        "data": {k: v for k, v in config["data"].items() if k != "service"},
        "seed": config["train"]["seed"],
    }
    text = json.dumps(keys, sort_keys=True, default=str)
    return "kerasmlic-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def distribute(dataset, address, *, job_name=None):
    """Run ``dataset`` on the tf.data service and read its elements from there.

    The dataset's graph (its reading, decoding and augmentation) is sent to
    the dispatcher and run by the service's workers, which must read the
    shard files at the same paths as this process. Elements come back in
    the order the workers finish them (not deterministic).

    Args:
        dataset: A ``tf.data.Dataset``, typically the repeated training stream.
        address: The dispatcher, ``grpc://HOST:PORT`` or ``HOST:PORT``.
        job_name: Consumers that pass the same name share one job and split
            its elements between them (multi-worker training); None gives
            this consumer a job of its own.

    Returns:
        A ``tf.data.Dataset`` with the same element spec, fed by the service.

    Raises:
        UsageError: A malformed address or an unreachable dispatcher.
    """
    address = service_address(address)
    check_reachable(address)
    import tensorflow as tf

    service = tf.data.experimental.service
    # With a job name the dataset gets a fixed id too: the consumers of a shared job
    # must name the same dataset, and the first one to register it defines it.
    dataset_id = service.register_dataset(
        address, dataset, compression=COMPRESSION, dataset_id=job_name
    )
    distributed = service.from_dataset_id(
        PROCESSING_MODE,
        address,
        dataset_id,
        element_spec=dataset.element_spec,
        job_name=job_name,
    )
    options = tf.data.Options()
    # The service already divides the elements between consumers: tf.distribute must
    # not shard them again (by data it would throw away all but 1 in N batches).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return distributed.with_options(options)
