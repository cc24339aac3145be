"""`kerasmlic demo`: its config, and the whole demo end to end (slow)."""

import json
import os

import pytest


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from kerasmlic.cli.demo import run_demo

    out = run_demo(workdir=str(tmp_path / "data"))
    # The demo's target, 70 test mAP; the runs on record (experiments/demo.md) all
    # scored well above it.
    assert out["results"]["mAP"] >= 0.70
    for path in out["plots"].values():
        assert os.path.getsize(path) > 5000
    assert os.path.isfile(os.path.join(out["run_dir"], "eval_val.json"))  # model selection
    assert out["split"] == "test"  # the figures: a split no choice has seen
    test = json.load(open(os.path.join(out["run_dir"], "eval_test.json")))
    from kerasmlic.data.manifest import load_manifest

    built = load_manifest(out["shard_dir"])["splits"]["test"]["num_examples"]
    assert 950 <= test["num_images"] == built <= 1000  # images with no label are not built
    assert test["mAP"] == out["results"]["mAP"]


def test_demo_config_adds_its_training_settings_with_or_without_the_repository(monkeypatch):
    """The demo trains on the EMA weights with precise BatchNorm; the fallback matches the yaml."""
    from kerasmlic.cli import demo
    from kerasmlic.reporting import reproduce

    from_yaml = demo.demo_config("shards", "run")
    # The study reads the same yaml without them: every model keeps one recipe there.
    study = reproduce.run_config("seq2seq_attention", "shards", "out")
    assert study["train"]["use_ema"] is False and study["train"]["precise_bn_batches"] == 0
    monkeypatch.setattr(reproduce, "model_config_path", lambda name: None)
    fallback = demo.demo_config("shards", "run")
    for config in (from_yaml, fallback):
        assert config["train"]["use_ema"] is True and config["train"]["precise_bn_batches"] == 16
        assert config["data"]["dir"] == "shards" and config["run_dir"] == "run"
    # An installed package (no experiments/) trains what the repository's demo trains.
    assert fallback["train"] == from_yaml["train"] and fallback["data"] == from_yaml["data"]
    for key, value in fallback["model"].items():
        assert value is None or from_yaml["model"][key] == value, key
