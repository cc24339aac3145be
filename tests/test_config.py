import glob
import os

import pytest
import yaml

from kerasmlic.errors import UsageError
from kerasmlic.training import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_validate_and_are_fresh_copies():
    a = config_lib.default_config()
    a["train"]["epochs"] = 99
    b = config_lib.default_config()
    assert b["train"]["epochs"] == config_lib.DEFAULTS["train"]["epochs"] != 99
    assert config_lib.validate_config(b, check_model=False) is b


def test_load_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model:\n  name: bce\n  dropout: 0.2\ntrain:\n  epochs: 4\n  learning_rate: 0.01\n"
    )
    config = config_lib.load_config(
        str(path),
        ["train.learning_rate=3e-4", "train.use_ema=true", "model.dropout=0.5"],
        **{"train.epochs": 7, "data.dir": "shards", "data.batch_size": None},
    )
    assert config["model"] == {"name": "bce", "dropout": 0.5}
    assert config["train"]["epochs"] == 7  # flag beats the file
    assert config["train"]["learning_rate"] == pytest.approx(3e-4)  # --set beats both
    assert isinstance(config["train"]["learning_rate"], float)
    assert config["train"]["use_ema"] is True
    assert config["data"]["dir"] == "shards"
    assert config["data"]["batch_size"] == config_lib.DEFAULTS["data"]["batch_size"]
    # Untouched keys keep their defaults.
    assert config["evaluation"] == config_lib.DEFAULTS["evaluation"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a.b=3", 3),
        ("a.b=1e-3", 1e-3),
        ("a.b=0.5", 0.5),
        ("a.b=true", True),
        ("a.b=null", None),
        ("a.b=lstm", "lstm"),
        ("a.b=[1, 2]", [1, 2]),
        ("a.b=x=y", "x=y"),
    ],
)
def test_override_values_are_yaml_typed(text, expected):
    key, value = config_lib.parse_override(text)
    assert key == "a.b"
    assert value == expected and type(value) is type(expected)


def test_model_shorthand_and_model_option_overrides():
    config = config_lib.load_config(None, ["model=bce"], check_model=False)
    assert config["model"]["name"] == "bce"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'; valid keys in section 'train'"),
        ("trian.epochs=3", "unknown config key 'trian'; valid keys in the config"),
        ("train.epochs=0", "must be positive"),
        ("train.epochs=2.5", "expects int"),
        ("train.use_ema=1", "expects bool"),
        ("train.strategy=horovod", "is not one of default, mirrored, multiworker"),
        ("train.ema_momentum=1.5", "must be in [0, 1)"),
        ("train.bn_momentum=1", "must be in [0, 1)"),
        ("data.batch_size=null", "needs a value"),
        ("train.epochs", "--set expects KEY=VALUE"),
        ("train.early_stopping_patience=-1", "must be"),
        ("train.early_stopping_patience=1.5", "expects int"),
        ("train.deterministic=yes please", "expects bool"),
        ("evaluation.holdout_fraction=1.5", "must be in [0, 1)"),
        ("evaluation.calibration_split=3", "must be 'train-holdout' or a split name"),
    ],
)
def test_bad_overrides_are_usage_errors(override, message):
    with pytest.raises(UsageError, match=None) as info:
        config_lib.load_config(None, [override], check_model=False)
    assert message in str(info.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UsageError) as info:
        config_lib.load_config(None, ["data.size=3"], check_model=False)
    for key in ("batch_size", "dir", "image_size"):
        assert key in str(info.value)


def test_unknown_model_and_option_list_valid_ones():
    with pytest.raises(UsageError) as info:
        config_lib.load_config(None, ["model.name=resnet_bce"])
    assert "valid models:" in str(info.value) and "seq2seq_attention" in str(info.value)
    with pytest.raises(UsageError) as info:
        config_lib.load_config(None, ["model.name=bce", "model.cell=gru"])
    assert "model.cell" in str(info.value) and "dropout" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        config_lib.load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        config_lib.load_config(str(bad))


def test_save_round_trips(tmp_path):
    config = config_lib.load_config(None, ["model.name=bce", "train.epochs=3"])
    path = tmp_path / "sub" / "config.yaml"
    config_lib.save_config(config, str(path))
    assert yaml.safe_load(path.read_text()) == config
    assert config_lib.load_config(str(path)) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_every_experiment_config_is_valid_and_documented():
    paths = sorted(glob.glob(os.path.join(REPO, "experiments", "*.yaml")))
    # tune_*.yaml add a `tune:` section that `kerasmlic tune` reads (checked in its tests).
    paths = [p for p in paths if not os.path.basename(p).startswith("tune_")]
    assert paths, "experiments/*.yaml missing"
    for path in paths:
        with open(path) as f:
            head = f.read(2000)
        assert "kerasmlic " in head.split("\n\n")[0], f"{path}: no command in the header"
        config = config_lib.load_config(path)
        stem = os.path.basename(path)[: -len(".yaml")]
        if stem not in ("demo",):
            assert config["model"]["name"] == stem


def test_calibration_source_refuses_the_reported_and_training_splits():
    from kerasmlic.training import builder

    def source(**evaluation):
        config = config_lib.load_config(None, check_model=False)
        config["evaluation"].update(evaluation)
        return builder.calibration_source(config)

    assert source() is None  # calibration off
    assert source(calibrate=True) == "train-holdout"
    assert source(calibrate=True, calibration_split="test") == "test"
    for split, message in (
        ("val", "split the figures are reported on"),
        ("train", "training split"),
    ):
        with pytest.raises(UsageError, match=message):
            source(calibrate=True, calibration_split=split)
    with pytest.raises(UsageError, match="holdout_fraction must be in"):
        source(calibrate=True, holdout_fraction=0.0)
