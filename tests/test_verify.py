"""Corrupt data is named, not dumped: `kerasmlic verify` and read failures in train/evaluate."""

import os
import shutil
import subprocess

import pytest
from helpers_training import cli_command, cli_main, subprocess_env, tiny_shards

from kerasmlic.data import verify
from kerasmlic.data.manifest import load_manifest, shard_paths


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.mktemp("verify")), train=32, val=16)


def _copy(good, tmp_path, name="data"):
    out = str(tmp_path / name)
    shutil.copytree(good, out)
    return out


def _flip_byte(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(path, keep):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep])


def test_verify_reports_each_bad_shard_and_what_is_wrong(good, tmp_path, capsys):
    data = _copy(good, tmp_path)
    assert verify.verify_data(data)["bad"] == []
    assert cli_main(["verify", data]) == 0
    out = capsys.readouterr()
    assert "4 of 4 shards match dataset.json (48 examples" in out.out and out.err == ""

    train0, train1 = shard_paths(data, "train")
    val0, _ = shard_paths(data, "val")
    _flip_byte(train0, 5000)
    _truncate(train1, os.path.getsize(train1) - 100)
    os.remove(val0)
    bad = {b["path"]: b["problem"] for b in verify.verify_data(data)["bad"]}
    assert bad[train0] == "corrupted: its sha256 differs from the one in dataset.json"
    assert bad[train1].startswith("truncated: cut off after 15 complete records of 16")
    assert bad[val0] == "missing"
    assert len(bad) == 3

    assert cli_main(["verify", data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    for line in err:
        assert line.startswith("kerasmlic verify: shard '")
        assert line.endswith("rerun `kerasmlic build` with the same arguments to rebuild it")
    assert cli_main(["verify", data, "--split", "val"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_framing_check_finds_a_cut_off_file_without_hashing(good, tmp_path):
    data = _copy(good, tmp_path)
    shard = load_manifest(data)["splits"]["train"]["shards"][0]
    path = os.path.join(data, shard["file"])
    assert verify.framing_problem(path, shard["num_examples"]) is None
    _truncate(path, 11)  # inside the first header
    assert (
        verify.framing_problem(path, 16)
        == "truncated: cut off after 0 complete records of 16 (11 bytes)"
    )


def _assert_one_line(stderr, path, command):
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(f"kerasmlic {command}: error:")]
    assert len(ours) == 1, stderr
    assert f"shard {path!r}" in ours[0]
    assert "rerun `kerasmlic build` with the same arguments to rebuild it" in ours[0]
    assert "Traceback" not in stderr and "Detected at node" not in stderr
    return ours[0]


def test_train_on_a_corrupt_shard_names_it_in_one_line_and_exits_2(good, tmp_path):
    data = _copy(good, tmp_path)
    bad = shard_paths(data, "train")[1]
    _flip_byte(bad, os.path.getsize(bad) // 2)
    args = ["train", "--data", data, "--model", "bce", "--epochs", "1", "--batch-size", "8"]
    args += ["--image-size", "32", "--run-dir", str(tmp_path / "run")]
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # the CLI's own default, as a user runs it
    proc = subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _assert_one_line(proc.stderr, os.path.abspath(bad), "train")
    for startup_line in ("cudart_stub", "cuInit", "absl::InitializeLog"):  # quiet start-up
        assert startup_line not in proc.stderr
    assert (
        "corrupted: its sha256 differs" in line and "(TensorFlow read: corrupted record at" in line
    )


def test_evaluate_on_a_truncated_shard_names_it_and_exits_2(good, tmp_path, capsys):
    data = _copy(good, tmp_path)
    run = str(tmp_path / "run")
    args = ["train", "--data", data, "--model", "bce", "--epochs", "1", "--batch-size", "8"]
    assert cli_main([*args, "--image-size", "32", "--run-dir", run]) == 0
    capsys.readouterr()
    bad = shard_paths(data, "val")[0]
    _truncate(bad, os.path.getsize(bad) * 2 // 3)
    assert cli_main(["evaluate", run, "--data", data]) == 2
    line = _assert_one_line(capsys.readouterr().err, os.path.abspath(bad), "evaluate")
    assert "is truncated: cut off after" in line


def test_tune_on_a_corrupt_shard_names_it_in_one_line_and_exits_2(good, tmp_path, capsys):
    data = _copy(good, tmp_path)
    bad = shard_paths(data, "train")[0]
    _flip_byte(bad, os.path.getsize(bad) // 2)
    config = tmp_path / "tune.yaml"
    config.write_text(
        "model: {name: bce, encoder: tiny}\n"
        "data: {image_size: 32, batch_size: 8}\n"
        "train: {epochs: 1}\n"
        "tune: {space: {train.learning_rate: {choice: [0.001, 0.002]}}}\n"
    )
    args = ["tune", str(config), "--data", data, "--directory", str(tmp_path / "tune")]
    assert cli_main([*args, "--tuner", "random", "--max-trials", "1"]) == 2
    line = _assert_one_line(capsys.readouterr().err, os.path.abspath(bad), "tune")
    assert "corrupted: its sha256 differs" in line
