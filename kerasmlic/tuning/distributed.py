"""keras-tuner's chief/worker mode: roles from the environment, and the chief's server.

Distributed tuning runs the same ``kerasmlic tune`` command in several
processes that share the project ``--directory`` (a shared file system across
hosts) and differ only in three environment variables:

- ``KERASTUNER_TUNER_ID``: ``chief`` for the process holding the oracle, any
  other unique name (``tuner0``, ``tuner1``...) for a worker;
- ``KERASTUNER_ORACLE_IP``: the chief's address (workers connect, the chief
  listens on it);
- ``KERASTUNER_ORACLE_PORT``: the chief's port.

The chief runs no trial: it serves the oracle over gRPC, hands each worker
the next trial when it asks, and, once every worker was told to stop, writes
the results (leaderboard, best config, best run directory). Workers train
trials and report ``val_mAP`` back.
"""

import os
import time

from kerasmlic.errors import UsageError

ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"


def role(environ=None):
    """Return this process's part in a search: ``"single"``, ``"chief"`` or ``"worker"``.

    Args:
        environ: Environment mapping (default ``os.environ``).

    Returns:
        The role string.

    Raises:
        UsageError: ``KERASTUNER_ORACLE_IP`` set without the port or the tuner id,
            or a port that is not a number.
    """
    env = os.environ if environ is None else environ
    if ENV_ORACLE_IP not in env:
        return "single"
    missing = [k for k in (ENV_ORACLE_PORT, ENV_TUNER_ID) if not env.get(k)]
    if missing:
        raise UsageError(
            f"{ENV_ORACLE_IP} is set, so this is distributed tuning, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not"
        )
    if not env[ENV_ORACLE_PORT].isdigit():
        raise UsageError(f"{ENV_ORACLE_PORT} must be a port number, got {env[ENV_ORACLE_PORT]!r}")
    # keras-tuner's own test: a tuner id containing "chief" is the chief.
    return "chief" if "chief" in env[ENV_TUNER_ID] else "worker"


def tuner_id(environ=None):
    """Return this process's tuner id (keras-tuner's default ``tuner0`` when unset).

    Args:
        environ: Environment mapping (default ``os.environ``).

    Returns:
        A string.
    """
    env = os.environ if environ is None else environ
    return env.get(ENV_TUNER_ID) or "tuner0"


def oracle_address(environ=None):
    """Return ``IP:PORT`` of the chief oracle.

    Args:
        environ: Environment mapping (default ``os.environ``).

    Returns:
        A string.
    """
    env = os.environ if environ is None else environ
    return f"{env[ENV_ORACLE_IP]}:{env[ENV_ORACLE_PORT]}"


def serve_oracle(oracle, *, poll_seconds=0.5, log=print):
    """Serve an oracle to the workers until the search is over (the chief's loop).

    The same protocol as ``keras_tuner``'s ``oracle_chief.start_server``, which
    polls every 20 s once the first worker was told to stop; this one polls
    every ``poll_seconds`` and shuts the server down when it returns.

    Args:
        oracle: The chief's ``keras_tuner.Oracle``.
        poll_seconds: How often to check whether the search is over.
        log: A ``print``-like function.

    Raises:
        UsageError: The port cannot be bound.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    address = oracle_address()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise UsageError(f"the chief cannot listen on {address}: {e}") from None
    if not port:
        raise UsageError(f"the chief cannot listen on {address} (port in use?)")
    server.start()
    log(f"chief: oracle listening on {address}; waiting for workers")
    try:
        # Over when a worker was told to stop and no worker is left with a trial
        # or still registered: every worker has asked for a trial and been refused.
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)
    log("chief: every worker has finished")
