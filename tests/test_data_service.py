"""tf.data service: a real dispatcher and two workers on 127.0.0.1, started with the CLI verb.

The servers are ``python -m kerasmlic data-service ...`` subprocesses on free
ports (one service for the module, stopped by SIGTERM in the last test and
killed in the fixture's finaliser whatever happens). The training and
element checks read from them in this process.
"""

import csv
import math
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers_training import cli_command, cli_main, run_cli, subprocess_env, tiny_shards

from kerasmlic.errors import UsageError
from kerasmlic.training import data_service
from kerasmlic.training.config import default_config, load_config

START_TIMEOUT = 120  # seconds for a server process to import TensorFlow on 2 busy cores


class LocalService:
    """A dispatcher and ``workers`` workers on 127.0.0.1, each a ``kerasmlic data-service``.

    Args:
        log_dir: Folder of the processes' output.
        workers: Number of workers.
    """

    def __init__(self, log_dir, workers=2):
        self.port = data_service.free_port()
        self.address = f"grpc://127.0.0.1:{self.port}"
        self.procs, self.logs = [], []
        # All three start at once: the workers wait (--wait) for the dispatcher while
        # TensorFlow imports everywhere in parallel.
        self._start(["dispatcher", "--port", str(self.port)], log_dir / "dispatcher.log")
        for i in range(workers):
            self._start(
                [
                    "worker",
                    "--dispatcher",
                    f"127.0.0.1:{self.port}",
                    "--host",
                    "127.0.0.1",
                    "--wait",
                    str(START_TIMEOUT),
                ],
                log_dir / f"worker{i}.log",
            )
        self.wait_for("dispatcher listening", 0)
        for i in range(workers):
            self.wait_for("registered with the dispatcher", i + 1)

    def _start(self, args, log_path):
        log = open(log_path, "w")
        proc = subprocess.Popen(
            cli_command("data-service", *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
        self.procs.append(proc)
        self.logs.append(log_path)

    def output(self, index):
        """Return what process ``index`` (0: the dispatcher) printed so far."""
        return self.logs[index].read_text()

    def wait_for(self, text, index, timeout=START_TIMEOUT):
        """Wait until process ``index`` prints ``text``; fail with its output if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output(index):
                return
            if self.procs[index].poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"{self.logs[index].name} never said {text!r}:\n{self.output(index)}")

    def kill(self):
        """Kill whatever is still running (the finaliser's last resort)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "tiny-data"))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    local = LocalService(tmp_path_factory.mktemp("service-logs"))
    try:
        yield local
    finally:
        local.kill()


# ---------------------------------------------------------------- addresses and config


@pytest.mark.parametrize(
    "text, expected",
    [
        ("grpc://127.0.0.1:5050", ("127.0.0.1", 5050)),
        ("host.example:1", ("host.example", 1)),
        ("grpc://[::1]:65535", ("::1", 65535)),
    ],
)
def test_parse_address_accepts_grpc_host_port(text, expected):
    assert data_service.parse_address(text) == expected
    host, port = expected
    shown = f"[{host}]" if ":" in host else host
    assert data_service.service_address(text) == f"grpc://{shown}:{port}"


@pytest.mark.parametrize(
    "text",
    ["", "localhost", "grpc://localhost", "http://h:1", "h:0", "h:70000", "h:x", ":5050", "h/a:1"],
)
def test_parse_address_refuses_malformed(text):
    with pytest.raises(UsageError, match="expects grpc://HOST:PORT"):
        data_service.parse_address(text)


def test_config_key_data_service():
    assert default_config()["data"]["service"] is None
    address = "grpc://127.0.0.1:5050"
    config = load_config(None, [f"data.service={address}"], check_model=False)
    assert config["data"]["service"] == address
    with pytest.raises(UsageError, match="data.service"):
        load_config(None, ["data.service=5"], check_model=False)


def test_unreachable_dispatcher_is_one_line_at_once(capfd):
    port = data_service.free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(UsageError, match=f"cannot reach .* at grpc://127.0.0.1:{port}"):
        data_service.check_reachable(f"127.0.0.1:{port}", timeout=2)
    code = cli_main(["data-service", "worker", "--dispatcher", f"127.0.0.1:{port}", "--wait", "0"])
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the tf.data service dispatcher" in err[0], err
    assert time.monotonic() - start < 30


def test_bad_service_address_exits_2_with_one_line(shards, tmp_path):
    result = run_cli(
        ["train", "--data", shards, "--model", "bce", "--data-service", "nohost"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "--data-service expects grpc://HOST:PORT" in lines[0]


# ---------------------------------------------------------------- through a running service


def test_dispatcher_refuses_a_taken_port(service, capfd):
    code = cli_main(["data-service", "dispatcher", "--port", str(service.port)])
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"port {service.port} is not free" in err[0], err


def test_service_yields_the_local_elements(service, shards):
    from kerasmlic.data.pipeline import make_dataset

    def by_id(dataset):
        out = {}
        for images, targets, ids in dataset:
            for image, target, image_id in zip(
                images.numpy(), targets.numpy(), ids.numpy(), strict=True
            ):
                assert image_id not in out, f"image {image_id} came twice"
                out[int(image_id)] = (image, target)
        return out

    # Evaluation mode: no augmentation, so each image's pixels are fixed; one pass.
    local_ds = make_dataset(
        shards, "train", image_size=32, batch_size=8, training=False, with_ids=True
    )
    local = by_id(local_ds)
    served = by_id(data_service.distribute(local_ds, service.address))
    assert sorted(served) == sorted(local) and len(local) == 64
    for image_id, (image, target) in local.items():
        np.testing.assert_array_equal(served[image_id][1], target)
        np.testing.assert_allclose(served[image_id][0], image, rtol=0, atol=1e-6)


def test_train_through_the_service(service, shards, tmp_path):
    run_dir = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--data",
            shards,
            "--model",
            "bce",
            "--backbone",
            "tiny",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--run-dir",
            str(run_dir),
            "--data-service",
            service.address,
            "--set",
            "train.steps_per_epoch=4",
            "--set",
            "train.verbose=0",
        ]
    )
    assert code == 0
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"])), rows
    assert load_config(str(run_dir / "config.yaml"), check_model=False)["data"]["service"] == (
        service.address
    )


def test_deterministic_with_service_is_refused(service, shards, tmp_path, capfd):
    argv = ["train", "--data", shards, "--model", "bce", "--backbone", "tiny", "--epochs", "1"]
    argv += ["--image-size", "32", "--batch-size", "8", "--run-dir", str(tmp_path / "det")]
    argv += ["--data-service", service.address, "--set", "train.deterministic=true"]
    assert cli_main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err and "train.deterministic cannot hold with data.service" in err[-1], err


def test_servers_stop_cleanly_on_sigterm(service):
    # Last in the module: the other tests are done with the service.
    for proc in reversed(service.procs):
        proc.send_signal(signal.SIGTERM)
    for i, proc in enumerate(service.procs):
        assert proc.wait(timeout=30) == 0, service.output(i)
        assert "stopped (SIGTERM)" in service.output(i)
        assert "Traceback" not in service.output(i)


@pytest.mark.slow
def test_multiworker_reads_one_shared_job(shards, tmp_path):
    """Two multi-worker training processes read one shared job of a 2-worker service."""
    from helpers_multiworker import free_ports, kill_all, start_worker, wait_all

    local = LocalService(tmp_path)
    procs = []
    try:
        config = {
            "model": {"name": "bce", "encoder": "tiny"},
            "data": {"dir": shards, "image_size": 32, "batch_size": 8, "service": local.address},
            "train": {"epochs": 2, "steps_per_epoch": 4, "strategy": "multiworker", "verbose": 0},
            "evaluation": {"batch_size": 16},
            "run_dir": str(tmp_path / "run"),
        }
        ports = free_ports(2)
        for i in range(2):
            procs.append(
                start_worker(
                    config, tmp_path / f"w{i}.npz", tmp_path / f"w{i}.log", ports=ports, index=i
                )
            )
        codes = wait_all(procs, timeout=400)
        logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
        assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    finally:
        kill_all(procs)
        local.kill()
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows), rows
    weights = [np.load(tmp_path / f"w{i}.npz") for i in range(2)]
    for key in weights[0].files:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
