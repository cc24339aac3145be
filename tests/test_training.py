import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml
from helpers_training import REPO, cli_command, cli_main, subprocess_env, tiny_shards

from kerasmlic.data.manifest import file_sha256
from kerasmlic.errors import UsageError
from kerasmlic.metrics import RESULT_KEYS, evaluate_predictions
from kerasmlic.training import callbacks as cb
from kerasmlic.training import config as config_lib
from kerasmlic.training import rundir
from kerasmlic.training.losses import WeightedBinaryCrossentropy, class_weights
from kerasmlic.training.optim import ema_weights, make_schedule

TINY = {"data.image_size": 32, "data.batch_size": 8}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "tiny-data"))


def tiny_config(shards, run_dir, model="bce", epochs=2, **extra):
    config = {
        "model": {"name": model},
        "data": {"dir": shards, "image_size": 32, "batch_size": 8},
        "train": {"epochs": epochs, "verbose": 0},
        "run_dir": str(run_dir),
    }
    for key, value in extra.items():
        section, name = key.split("__")
        config.setdefault(section, {})[name] = value
    return config


def history_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- unit pieces


def test_schedule_warms_up_then_decays_to_the_floor():
    schedule = make_schedule(1e-2, total_steps=100, warmup_steps=10, min_ratio=0.1)
    lr = [float(schedule(step)) for step in (0, 5, 10, 55, 100, 500)]
    assert lr[0] == pytest.approx(0.0, abs=1e-9)
    assert lr[1] == pytest.approx(5e-3, rel=1e-5)  # linear warm-up
    assert lr[2] == pytest.approx(1e-2, rel=1e-5)  # peak
    # Half-way through the cosine: floor + (peak - floor) / 2.
    assert lr[3] == pytest.approx(1e-3 + 0.5 * 9e-3, rel=1e-4)
    assert lr[4] == pytest.approx(1e-3, rel=1e-4) and lr[5] == pytest.approx(1e-3, rel=1e-4)


def test_class_weights_hand_worked():
    pos, cls = class_weights([50, 10, 1, 0], 100, "pos_weight", max_pos_weight=20.0)
    np.testing.assert_allclose(pos, [1.0, 9.0, 20.0, 20.0])  # neg/pos, clipped to [1, 20]
    np.testing.assert_allclose(cls, 1.0)
    pos, cls = class_weights([1000, 10], 2000, "class_balanced", beta=0.9)
    effective = np.array([(1 - 0.9**1000) / 0.1, (1 - 0.9**10) / 0.1])
    expected = (1 / effective) / (1 / effective).mean()
    np.testing.assert_allclose(cls, expected, rtol=1e-6)
    assert cls[1] > cls[0]  # the rare class weighs more
    with pytest.raises(UsageError):
        class_weights([1], 2, "focal")


def test_weighted_bce_matches_hand_computation():
    y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = np.array([[0.8, 0.3], [0.6, 0.9]], np.float32)
    loss = WeightedBinaryCrossentropy([2.0, 1.0], [1.0, 3.0])  # from logits by default
    logits = np.log(p) - np.log1p(-p)
    per_example = keras.ops.convert_to_numpy(loss.call(y, logits))
    expected = [
        -(2 * math.log(0.8)) - 3 * math.log(0.7),
        -math.log(0.4) - 3 * math.log(0.9),
    ]
    np.testing.assert_allclose(per_example, expected, rtol=1e-5)
    on_probabilities = WeightedBinaryCrossentropy([2.0, 1.0], [1.0, 3.0], from_logits=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(on_probabilities.call(y, p)), expected, rtol=1e-5
    )
    restored = WeightedBinaryCrossentropy.from_config(loss.get_config())
    assert restored.pos_weight == [2.0, 1.0] and restored.class_weight == [1.0, 3.0]


def test_trim_history_and_backup_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.5\n")
    rundir.trim_history(str(path), 2)
    assert [r["epoch"] for r in history_rows(path)] == ["0", "1"]
    rundir.trim_history(str(path), 5)  # nothing to drop
    assert len(history_rows(path)) == 2
    backup = tmp_path / "backup"
    assert rundir.backup_epoch(str(backup)) is None
    backup.mkdir()
    (backup / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    assert rundir.backup_epoch(str(backup)) == 3


def test_stop_on_nan_names_the_step():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 2), np.float32)
    x[5] = np.nan  # batch size 2: the third batch holds it
    with pytest.raises(cb.TrainingDiverged, match=r"epoch 1, step 3 \(global step 3\)"):
        model.fit(
            x, np.zeros((8, 1)), batch_size=2, shuffle=False, callbacks=[cb.StopOnNaN()], verbose=0
        )


def test_ema_weights_swaps_in_the_average_and_restores():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.AdamW(0.1, use_ema=True, ema_momentum=0.5), "mse")
    for _ in range(3):  # train_on_batch, unlike fit, does not finalise the EMA into the weights
        model.train_on_batch(np.ones((8, 2)), np.full((8, 1), 3.0))
    raw = [w.copy() for w in model.get_weights()]
    averages = [
        keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average
    ]
    assert not np.allclose(raw[0], averages[0])
    with ema_weights(model) as swapped:
        assert swapped
        np.testing.assert_allclose(model.get_weights()[0], averages[0])
    np.testing.assert_allclose(model.get_weights()[0], raw[0])
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain.compile("sgd", "mse")
    with ema_weights(plain) as swapped:
        assert not swapped


# ------------------------------------------------------------- train end to end


def test_train_writes_the_run_dir(shards, tmp_path):
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.training import train

    run_dir = tmp_path / "run"
    lines = []
    assert train(tiny_config(shards, run_dir), log=lines.append) == str(run_dir)
    names = set(os.listdir(run_dir))
    for expected in (
        "config.yaml",
        "dataset.json",
        "history.csv",
        "best.keras",
        "best.json",
        "eval_val.json",
        "predictions_val.npz",
        "summary.json",
        "checkpoints",
    ):
        assert expected in names, expected
    assert not [n for n in names if n.startswith(".tmp")]
    assert os.path.isfile(run_dir / "checkpoints" / "last.weights.h5")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "bce" and config["train"]["epochs"] == 2
    ref = json.loads((run_dir / "dataset.json").read_text())
    assert ref["sha256"] == file_sha256(os.path.join(shards, "dataset.json"))
    assert ref["path"] == os.path.abspath(shards) and ref["num_classes"] == 80

    rows = history_rows(run_dir / "history.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    losses = [float(r["loss"]) for r in rows]
    assert losses[1] < losses[0]  # it learns
    maps = [float(r["val_mAP"]) for r in rows]
    assert all(0 < m <= 1 for m in maps) and float(rows[1]["lr"]) < float(rows[0]["lr"])

    results = json.loads((run_dir / "eval_val.json").read_text())
    assert set(results) == {*RESULT_KEYS, "thresholds_from"} and results["num_images"] == 32
    assert results["thresholds_from"] is None  # not calibrated
    best = json.loads((run_dir / "best.json").read_text())
    assert best["val_mAP"] == pytest.approx(max(maps))
    assert results["mAP"] == pytest.approx(best["val_mAP"], abs=1e-6)
    # The stored predictions reproduce the JSON, and best.keras reproduces them.
    with np.load(run_dir / "predictions_val.npz") as npz:
        again = evaluate_predictions(npz["y_true"], npz["scores"], npz["predicted"])
        scores = npz["scores"]
    assert again["OF1_top3"] == pytest.approx(results["OF1_top3"])
    from kerasmlic.evaluation.predict import predict_split

    fresh = predict_split(load_model(str(run_dir / "best.keras")), shards, "val")
    np.testing.assert_allclose(fresh["scores"], scores, atol=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == best["epoch"] and summary["epochs_logged"] == 2
    assert any("val mAP" in line for line in lines)

    with pytest.raises(UsageError, match="already holds a finished run"):
        train(tiny_config(shards, run_dir))


def test_freeze_then_fine_tune_keeps_the_encoder_fixed_in_phase_one(shards, tmp_path):
    from kerasmlic.models.encoders import get_encoder
    from kerasmlic.models.registry import build_model
    from kerasmlic.training import train

    run_dir = tmp_path / "frozen"
    config = tiny_config(
        shards,
        run_dir,
        epochs=2,
        train__freeze_encoder_epochs=1,
        train__class_weighting="pos_weight",  # the compiled-loss path, on the way
    )
    config["evaluation"] = {"every": 2}
    train(config, log=lambda line: None)
    keras.utils.set_random_seed(0)  # the trainer's seed: the same initial weights
    initial = build_model("bce", num_classes=80, image_size=32)
    after_phase1 = build_model("bce", num_classes=80, image_size=32)
    after_phase1.load_weights(str(run_dir / "checkpoints" / "phase0.weights.h5"))
    final = build_model("bce", num_classes=80, image_size=32)
    final.load_weights(str(run_dir / "checkpoints" / "phase1.weights.h5"))
    enc = [get_encoder(m).get_weights() for m in (initial, after_phase1, final)]
    assert all(np.array_equal(a, b) for a, b in zip(enc[0], enc[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(enc[1], enc[2], strict=True))
    head = [m.get_layer("logits").get_weights()[0] for m in (initial, after_phase1)]
    assert not np.array_equal(head[0], head[1])
    assert rundir.read_state(str(run_dir)) == {"phases_done": 2}
    rows = history_rows(run_dir / "history.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert math.isnan(float(rows[0]["val_mAP"])) and float(rows[1]["val_mAP"]) > 0


def test_resume_after_sigkill_continues_from_the_last_completed_epoch(shards, tmp_path):
    run_dir = tmp_path / "killed"
    args = [
        "train",
        "--data",
        shards,
        "--model",
        "bce",
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--image-size",
        "32",
        "--run-dir",
        str(run_dir),
        "--set",
        "train.verbose=2",
    ]
    backup = run_dir / "backup" / "phase0"
    proc = subprocess.Popen(
        cli_command(*args),
        cwd=str(tmp_path),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while (rundir.backup_epoch(str(backup)) or 0) < 2:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no backup of epoch 2 in time"
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = rundir.backup_epoch(str(backup))
    assert 2 <= killed_at < 6 and not (run_dir / "summary.json").exists()

    second = subprocess.run(
        cli_command(*args),
        cwd=str(tmp_path),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"restoring the backup of epoch {killed_at}" in second.stdout
    assert "Epoch 1/6" not in second.stdout  # not from scratch
    assert f"Epoch {killed_at + 1}/6" in second.stdout
    rows = history_rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(6))  # each epoch once
    assert (run_dir / "summary.json").exists()


def test_nan_loss_stops_with_one_line_and_exit_2(shards, tmp_path, capsys):
    code = cli_main(
        [
            "train",
            "--data",
            shards,
            "--model",
            "bce",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--run-dir",
            str(tmp_path / "nan"),
            "--set",
            "train.learning_rate=1e30",
            "--set",
            "train.global_clipnorm=0",
            "--set",
            "train.warmup_epochs=0",
            "--set",
            "train.verbose=0",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert "training diverged: loss is nan at epoch 1, step" in err[0]
    assert not (tmp_path / "nan" / "summary.json").exists()


MIRRORED_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from kerasmlic.models.registry import build_model
from kerasmlic.training.strategy import make_strategy

strategy = make_strategy("mirrored")
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync

# The model's own loss must be scaled per replica: replica losses sum to the global mean.
with strategy.scope():
    model = build_model("bce", num_classes=80, image_size=32)
rng = np.random.default_rng(0)
x = rng.random((8, 32, 32, 3)).astype("float32")
y = (rng.random((8, 80)) < 0.05).astype("float32")
full = float(model.compute_loss(x=x, y=y, y_pred=model(x)))
xs = strategy.experimental_distribute_values_from_function(
    lambda ctx: x[ctx.replica_id_in_sync_group * 4 : (ctx.replica_id_in_sync_group + 1) * 4])
ys = strategy.experimental_distribute_values_from_function(
    lambda ctx: y[ctx.replica_id_in_sync_group * 4 : (ctx.replica_id_in_sync_group + 1) * 4])
per = strategy.run(lambda a, b: model.compute_loss(x=a, y=b, y_pred=model(a)), args=(xs, ys))
total = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None))
print("LOSS", full, total)
assert abs(total - full) < 1e-4 * abs(full), (total, full)

from kerasmlic.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # 40-55 s: a subprocess on two virtual CPU devices
def test_mirrored_strategy_on_two_virtual_cpus(shards, tmp_path):
    run_dir = tmp_path / "mirrored"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MIRRORED_SCRIPT,
            "train",
            "--data",
            shards,
            "--model",
            "bce",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--run-dir",
            str(run_dir),
            "--strategy",
            "mirrored",
            "--set",
            "train.verbose=2",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "LOSS" in result.stdout
    rows = history_rows(run_dir / "history.csv")
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    # BatchNorm statistics were averaged over the replicas, so the saved model
    # scores the val split exactly as the in-training evaluation did.
    results = json.loads((run_dir / "eval_val.json").read_text())
    assert results["mAP"] == pytest.approx(float(rows[0]["val_mAP"]), abs=1e-6)


# ------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_and_exit_2(shards, tmp_path, capsys):
    base = ["train", "--data", shards, "--image-size", "32", "--batch-size", "8"]
    cases = [
        (["train", "--data", str(tmp_path / "missing")], "does not exist"),
        (base + ["--model", "resnet_bce"], "unknown model 'resnet_bce'; valid models:"),
        (base + ["--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
        (base + ["--model", "bce", "--set", "model.cell=gru"], "unknown option(s) model.cell"),
        (
            base + ["--model", "bce", "--backbone", "resnet50", "--image-size", "16"],
            "rejects image size 16",
        ),
        (
            base + ["--model", "seq2seq", "--set", "train.class_weighting=pos_weight"],
            "applies to the bce model only",
        ),
        (base + ["--set", "data.val_split=test"], "split 'test' not found"),
        (
            base + ["--strategy", "mirrored", "--set", "train.precise_bn_batches=4"],
            "works with the default strategy only",
        ),
    ]
    for argv, message in cases:
        argv = argv + ["--run-dir", str(tmp_path / "bad-run")]
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "bad-run").exists()  # nothing half-made


def test_resuming_with_another_config_is_refused(shards, tmp_path):
    from kerasmlic.data.manifest import load_manifest
    from kerasmlic.training.builder import resolve

    run_dir = tmp_path / "started"
    first = resolve(tiny_config(shards, run_dir))
    manifest = load_manifest(shards)
    assert rundir.prepare_run_dir(str(run_dir), first, shards, manifest) is False
    assert rundir.prepare_run_dir(str(run_dir), first, shards, manifest) is True
    other = resolve(tiny_config(shards, run_dir, train__learning_rate=0.5))
    with pytest.raises(UsageError, match="differs in train.learning_rate"):
        rundir.prepare_run_dir(str(run_dir), other, shards, manifest)


@pytest.mark.slow
def test_mixed_precision_ema_and_xla_flags_train(shards, tmp_path):
    from kerasmlic.training import train

    policy = keras.mixed_precision.global_policy().name
    run_dir = tmp_path / "flags"
    config = tiny_config(
        shards,
        run_dir,
        model="seq2seq_attention",
        epochs=1,
        train__mixed_precision=True,
        train__use_ema=True,
        train__jit_compile=True,
    )
    config["model"].update({"embedding_dim": 16, "hidden_dim": 32})
    train(config, log=lambda line: None)
    assert keras.mixed_precision.global_policy().name == policy  # restored
    results = json.loads((run_dir / "eval_val.json").read_text())
    assert 0 < results["mAP"] <= 1


def test_precise_batchnorm_runs_before_each_validation_pass_only(shards, tmp_path, monkeypatch):
    from kerasmlic.training import precise_bn, train

    real, calls = precise_bn.recompute_batchnorm_statistics, []

    def spy(model, batches, forward=None):
        calls.append((len(lines), real(model, batches, forward)))
        return calls[-1][1]

    monkeypatch.setattr(precise_bn, "recompute_batchnorm_statistics", spy)
    lines = []
    # Validated: epoch 3 (every 3) and epochs 4-5 (the last 2); 1 and 2 are not.
    config = tiny_config(
        shards,
        tmp_path / "precise",
        epochs=5,
        train__precise_bn_batches=2,
        evaluation__every=3,
        evaluation__last_epochs=2,
    )
    train(config, log=lines.append)
    evaluated = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert [lines[i].split(":")[0] for i in evaluated] == ["epoch 3", "epoch 4", "epoch 5"]
    # Each validation pass: 2 batches averaged just before it; none on the other epochs.
    assert [count for _, count in calls] == [2, 2, 2]
    assert calls[0][0] <= evaluated[0] < calls[1][0] <= evaluated[1] < calls[2][0] <= evaluated[2]
    val = [float(row["val_mAP"]) for row in history_rows(tmp_path / "precise" / "history.csv")]
    assert [math.isfinite(v) for v in val] == [False, False, True, True, True]


def test_validation_schedule_every_n_and_the_last_epochs_hand_worked():
    evaluation = cb.MultiLabelEvaluation(None, [], every=3, last_epochs=3, final_epoch=10)
    assert [e + 1 for e in range(10) if evaluation.due(e)] == [3, 6, 8, 9, 10]
    evaluation = cb.MultiLabelEvaluation(None, [], every=4, final_epoch=10)
    assert [e + 1 for e in range(10) if evaluation.due(e)] == [4, 8, 10]  # the last one always
    with pytest.raises(UsageError, match="last_epochs"):
        config_lib.load_config(None, ["evaluation.last_epochs=0"], **{"model.name": "bce"})


# ------------------------------------------- early stopping, determinism, holdout


def test_patience_counter_counts_evaluated_epochs_without_a_gain():
    counter = cb.PatienceCounter(2)
    nan = {"val_mAP": float("nan")}
    assert not counter.update({"val_mAP": 0.3}, improved=True)
    assert not counter.update(nan, improved=False)  # not evaluated: not counted
    assert not counter.update({"val_mAP": 0.2}, improved=False)
    assert counter.update({"val_mAP": 0.25}, improved=False)
    history = {"epoch": [0.0, 1.0, 2.0, 3.0], "val_mAP": [0.3, float("nan"), 0.2, 0.25]}
    assert cb.evaluations_without_gain(history, best_epoch=1) == 2
    assert cb.evaluations_without_gain(history, best_epoch=4) == 0
    assert cb.evaluations_without_gain(history, best_epoch=None) == 3


def test_early_stopping_ends_the_run_after_patience_evaluations(shards, tmp_path, monkeypatch):
    from kerasmlic.training import train

    # A scripted val mAP (the real evaluation runs, its mAP is replaced):
    # best at epoch 2, then two passes without a gain.
    script = iter([0.50, 0.60, 0.55, 0.60, 0.90, 0.95])
    real = cb.MultiLabelEvaluation.evaluate

    def scripted(self):
        results = real(self)
        results["mAP"] = next(script)
        return results

    monkeypatch.setattr(cb.MultiLabelEvaluation, "evaluate", scripted)
    run_dir = tmp_path / "early"
    config = tiny_config(shards, run_dir, epochs=6, train__early_stopping_patience=2)
    lines = []
    train(config, log=lines.append)
    rows = history_rows(run_dir / "history.csv")
    assert [float(r["val_mAP"]) for r in rows] == [0.50, 0.60, 0.55, 0.60]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == 2 and summary["stopped_early_at"] == 4
    assert json.loads((run_dir / "best.json").read_text())["epoch"] == 2
    assert any("early stop after epoch 4" in line for line in lines)
    assert json.loads((run_dir / "state.json").read_text())["stopped_early_at"] == 4


def test_deterministic_runs_repeat_history_and_weights(shards, tmp_path):
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.training import train

    runs = []
    for name in ("a", "b"):
        config = tiny_config(shards, tmp_path / name, epochs=2, train__deterministic=True)
        train(config, log=lambda line: None)
        runs.append(tmp_path / name)
    rows = [history_rows(r / "history.csv") for r in runs]
    for key in ("loss", "val_mAP"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]], key
    weights = [load_model(str(r / "best.keras")).get_weights() for r in runs]
    for w0, w1 in zip(*weights, strict=True):
        np.testing.assert_array_equal(w0, w1)
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()  # switched off again


def test_calibration_on_the_train_holdout_never_touches_val(shards, tmp_path):
    from kerasmlic.data.pipeline import read_split_ids
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.metrics import calibrate_thresholds
    from kerasmlic.training import builder, train
    from kerasmlic.training.calibration import find_thresholds_layers

    run_dir = tmp_path / "cal"
    config = tiny_config(
        shards, run_dir, epochs=1, evaluation__calibrate=True, evaluation__holdout_fraction=0.25
    )
    lines = []
    train(config, log=lines.append)
    held = read_split_ids(shards, "train", ("heldout", 0.25))
    rest = read_split_ids(shards, "train", ("rest", 0.25))
    assert len(held) + len(rest) == 64 and 8 <= len(held) <= 28
    assert any(f"training on {len(rest)} of 64 train images" in line for line in lines)
    # The training stream reads the rest only.
    from kerasmlic.training.builder import resolve

    resolved = resolve(config)
    assert builder.train_holdout(resolved) == ("rest", 0.25)
    model = load_model(str(run_dir / "best.keras"))
    (layer,) = find_thresholds_layers(model)
    out = predict_split(model, shards, "train", holdout=("heldout", 0.25))
    np.testing.assert_array_equal(out["image_ids"], held)
    expected = calibrate_thresholds(out["y_true"], out["scores"])
    np.testing.assert_allclose(layer.thresholds.numpy(), expected, rtol=1e-6)
    results = json.loads((run_dir / "eval_val.json").read_text())
    assert results["thresholds_from"] == "train-holdout"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["calibrated"] and summary["thresholds_from"] == "train-holdout"


def test_calibration_split_must_not_be_the_reported_one(shards, tmp_path):
    from kerasmlic.training import train

    for split, message in (("val", "split the figures are reported on"), ("nope", "nope")):
        config = tiny_config(
            shards, tmp_path / split, evaluation__calibrate=True,
            evaluation__calibration_split=split,
        )  # fmt: skip
        with pytest.raises(UsageError, match=message):
            train(config)
        assert not os.path.exists(tmp_path / split)


def test_train_stream_holds_out_the_fraction(shards):
    from kerasmlic.data.pipeline import read_split_ids
    from kerasmlic.models.registry import build_model
    from kerasmlic.training import builder
    from kerasmlic.training.builder import resolve

    config = resolve(tiny_config(shards, "unused", evaluation__calibrate=True))
    config["data"]["batch_size"] = 4
    model = build_model("bce", num_classes=80, image_size=32, encoder="tiny")
    ds = builder.train_dataset(config, model, shards)
    rest = builder.train_examples(config, shards, {"num_examples": 64})
    assert rest == len(read_split_ids(shards, "train", ("rest", 0.1))) < 64
    assert builder.steps_per_epoch(config, rest) == rest // 4
    assert builder.train_holdout(resolve(tiny_config(shards, "unused"))) is None
    images, targets = next(iter(ds))
    assert images.shape == (4, 32, 32, 3) and targets.shape == (4, 80)
