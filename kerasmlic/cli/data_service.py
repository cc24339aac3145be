"""CLI subcommand ``data-service`` (registered by :mod:`kerasmlic.cli.app`).

Its parser is :func:`add_data_service_parser`.

``kerasmlic data-service dispatcher --port P`` and ``kerasmlic data-service
worker --dispatcher HOST:P [--port Q]`` run the two kinds of tf.data service
server (:mod:`kerasmlic.training.data_service`) in the foreground until
Ctrl-C or SIGTERM; ``kerasmlic train --data-service grpc://HOST:P`` uses them.
"""

import argparse
import signal
import socket

from kerasmlic.training.data_service import (
    DEFAULT_DISPATCHER_PORT,
    DEFAULT_WORKER_WAIT,
    PROTOCOL,
)


def _port(text, *, allow_zero):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in {low}-65535, got {value}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def _listen_port(text):
    return _port(text, allow_zero=False)


def _any_port(text):
    return _port(text, allow_zero=True)


def add_data_service_parser(sub):
    """Add ``kerasmlic data-service dispatcher ... | worker ...``.

    Args:
        sub: The ``add_subparsers()`` object of the main parser.

    Returns:
        The new subparser.
    """
    p = sub.add_parser(
        "data-service",
        help="run a tf.data service dispatcher or worker (input preprocessing elsewhere)",
        description=(
            "Run one server of the tf.data service in the foreground until Ctrl-C or SIGTERM: "
            "one dispatcher, then workers on any hosts that read the shards at the same path; "
            f"then `kerasmlic train --data-service {PROTOCOL}://HOST:PORT` has the workers read, "
            "decode and augment its training batches (docs/distributed.md)."
        ),
    )
    roles = p.add_subparsers(dest="role", metavar="ROLE")
    roles.required = True

    d = roles.add_parser("dispatcher", help="the service's coordinator (one per service)")
    d.add_argument(
        "--port",
        type=_listen_port,
        default=DEFAULT_DISPATCHER_PORT,
        help=f"port to listen on (default {DEFAULT_DISPATCHER_PORT})",
    )
    d.set_defaults(func=cmd_dispatcher)

    w = roles.add_parser("worker", help="runs the input pipelines (one or more per host)")
    w.add_argument(
        "--dispatcher", required=True, metavar="HOST:PORT", help="the dispatcher's address"
    )
    w.add_argument(
        "--port", type=_any_port, default=0, help="port to listen on (default: a free one)"
    )
    w.add_argument(
        "--host",
        default=None,
        metavar="NAME",
        help="name or IP the training hosts reach this worker by (default: this host's name)",
    )
    w.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        default=DEFAULT_WORKER_WAIT,
        help=f"seconds to wait for the dispatcher to come up (default {DEFAULT_WORKER_WAIT:g})",
    )
    w.set_defaults(func=cmd_worker)
    return p


def _stopped(role, signum):
    print(f"data-service: {role} stopped ({signal.Signals(signum).name})", flush=True)
    return 0


def cmd_dispatcher(args):
    """Handle ``kerasmlic data-service dispatcher``."""
    from kerasmlic.training import data_service

    server = data_service.start_dispatcher(args.port)
    host = socket.gethostname()
    print(
        f"data-service: dispatcher listening on port {args.port}; train with "
        f"--data-service {PROTOCOL}://{host}:{args.port} and start workers with "
        f"`kerasmlic data-service worker --dispatcher {host}:{args.port}`",
        flush=True,
    )
    return _stopped("dispatcher", data_service.serve_until_signal(server))


def cmd_worker(args):
    """Handle ``kerasmlic data-service worker``."""
    from kerasmlic.training import data_service

    server, port = data_service.start_worker(
        args.dispatcher, port=args.port, host=args.host, wait=args.wait
    )
    host = args.host or socket.gethostname()
    print(
        f"data-service: worker at {host}:{port} registered with the dispatcher at "
        f"{args.dispatcher}",
        flush=True,
    )
    return _stopped("worker", data_service.serve_until_signal(server))
