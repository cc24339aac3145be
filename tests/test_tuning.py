"""keras-tuner search (kerasmlic.tuning, ``kerasmlic tune``).

Unit tests check the space, the project choice, the roles and the
leaderboard without training. The search tests run on a tiny shard folder
built here (32 px, 5 classes, tiny encoder, ``bce``/``asl``, 1 epoch per
trial): a single-process random search (then resumed), Hyperband (slow), and
keras-tuner's chief/worker mode with a chief and two workers as local
processes on 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from kerasmlic.errors import UsageError
from kerasmlic.tuning import distributed, results, search
from kerasmlic.tuning import space as space_lib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from helpers_data import write_tiny_coco  # noqa: E402

BASE = {
    "model": {"name": "bce", "encoder": "tiny"},
    "data": {"image_size": 32, "batch_size": 8},
    "train": {"epochs": 1, "warmup_epochs": 0.0, "verbose": 0},
    "evaluation": {"batch_size": 32},
}
# Distributed test: every process is bounded by this (seconds); the whole
# search takes ~30 s of CPU on two idle cores.
DIST_TIMEOUT = 420


def _config(space, **tune):
    config = json.loads(json.dumps(BASE))
    config["tune"] = {"space": space, **tune}
    return config


def _base(**changes):
    from kerasmlic.training import config as config_lib

    config = config_lib.default_config()
    for key, value in BASE.items():
        config_lib.set_value(config, key, value)
    for key, value in changes.items():
        config_lib.set_value(config, key, value)
    config["data"]["dir"] = "unused"
    return config_lib.validate_config(config)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A tiny shard folder: 32 train + 16 val images, 5 classes, 2 shards per split."""
    from kerasmlic.data.build import build_split

    root = tmp_path_factory.mktemp("tune-data")
    out = os.path.join(root, "shards")
    for split, n, seed in (("train", 32, 0), ("val", 16, 1)):
        tiny = write_tiny_coco(os.path.join(root, split), num_images=n, image_size=32, seed=seed)
        build_split(tiny.annotations, tiny.images, split, out, shards=2, progress=False)
    return out


# --- the space ---------------------------------------------------------------------------


def test_parse_space_kinds_and_yaml_numbers():
    specs = space_lib.parse_space(
        {
            "model.dropout": {"min": 0.0, "max": 0.3, "step": 0.1},
            "train.learning_rate": {"min": "1e-4", "max": "3e-3", "sampling": "log"},
            "data.batch_size": {"min": 4, "max": 16, "step": 4},
            "train.use_ema": {"choice": [True, False]},
            "train.weight_decay": {"fixed": 0.001},
            "train.seed": [1, 2, 3],
        },
        _base(),
    )
    kinds = {s.name: s.kind for s in specs}
    assert kinds == {
        "model.dropout": "float",
        "train.learning_rate": "float",
        "data.batch_size": "int",
        "train.use_ema": "boolean",
        "train.weight_decay": "fixed",
        "train.seed": "choice",
    }
    lr = specs[1]
    # YAML 1.1 reads "1e-4" as a string; the space reads it as the number.
    assert (lr.low, lr.high, lr.sampling) == (1e-4, 3e-3, "log")
    assert specs[2].candidates() == [4, 16]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.hiden_dim": {"choice": [1, 2]}}, "no searched model"),
        ({"train.learning_rat": {"min": 0.1, "max": 0.2}}, "unknown config key"),
        ({"train.learning_rate": {"min": 0.2, "max": 0.1}}, "must be below max"),
        ({"train.learning_rate": {"min": 0.0, "max": 0.1, "sampling": "log"}}, "min > 0"),
        ({"train.learning_rate": {"min": 0.1, "max": 0.2, "smapling": "log"}}, "unknown key"),
        ({"model.dropout": {"choice": [0.1, "x"]}}, "mixes types"),
        ({"model.dropout": {"choice": []}}, "non-empty list"),
        ({"train.epochs": {"choice": [1, 2]}}, "not tunable"),
        ({"train.class_weighting": {"choice": ["none", "bogus"]}}, "is not one of"),
        ({"train.strategy": {"choice": ["default", "mirrored"]}}, "not tunable"),
        ({"model.dropout": {"choice": [0.1], "when": {"model.name": "bce"}}}, "declared before"),
        ({"model.name": {"choice": ["bce", "nope"]}}, "unknown model 'nope'"),
        ({"model.name": ["bce", "asl"], "train.class_weighting": ["none", "pos_weight"]},
         "applies to the bce model only"),
    ],
)  # fmt: skip
def test_parse_space_rejects_bad_entries_with_one_line(space, message):
    with pytest.raises(UsageError, match=message):
        space_lib.parse_space(space, _base())


def test_model_options_become_conditional_on_the_models_that_take_them():
    import keras_tuner

    specs = space_lib.parse_space(
        {
            "model.name": {"choice": ["bce", "asl"]},
            "model.dropout": {"choice": [0.0, 0.2]},
            "model.gamma_neg": {"choice": [2.0, 4.0]},
            "train.class_weighting": {
                "choice": ["none", "pos_weight"],
                "when": {"model.name": "bce"},
            },
        },
        _base(),
    )
    by_name = {s.name: s for s in specs}
    assert by_name["model.gamma_neg"].when == [("model.name", ["asl"])]  # asl only
    assert by_name["model.dropout"].when == []  # both take it
    hp = keras_tuner.HyperParameters()
    space_lib.declare_space(hp, specs)
    assert {p.name for p in hp.space} == set(by_name)
    hp.values.update(
        {"model.name": "bce", "model.dropout": 0.2, "train.class_weighting": "pos_weight"}
    )
    values = space_lib.active_values(hp, specs)
    assert values == {
        "model.name": "bce",
        "model.dropout": 0.2,
        "train.class_weighting": "pos_weight",
    }
    config = space_lib.trial_config(_base(), values)
    assert config["model"] == {"name": "bce", "encoder": "tiny", "dropout": 0.2}
    assert config["train"]["class_weighting"] == "pos_weight"
    hp.values.update({"model.name": "asl", "model.gamma_neg": 2.0})
    values = space_lib.active_values(hp, specs)
    assert "train.class_weighting" not in values and values["model.gamma_neg"] == 2.0


def test_trial_config_drops_base_options_the_trial_model_does_not_take():
    base = _base(**{"model.name": "seq2seq", "model.cell": "lstm"})
    config = space_lib.trial_config(base, {"model.name": "bce", "model.dropout": 0.1})
    assert config["model"] == {"name": "bce", "encoder": "tiny", "dropout": 0.1}
    assert base["model"]["cell"] == "lstm"  # the base is not changed
    config = space_lib.trial_config(base, {"model.hidden_dim": 64})
    assert config["model"]["cell"] == "lstm" and config["model"]["hidden_dim"] == 64


def test_experiment_tuning_configs_load(shards):
    for name in ("tune_seq2seq", "tune_bce"):
        path = os.path.join(HERE, os.pardir, "experiments", f"{name}.yaml")
        base, settings, specs = search.load_tune_config(path, data_dir=shards)
        assert settings["tuner"] == "hyperband" and settings["project_name"] == name
        assert base["data"]["dir"] == shards and len(specs) >= 5


def test_load_tune_config_errors(shards):
    space = {"model.dropout": [0.0, 0.1]}
    with pytest.raises(UsageError, match="no 'tune:' section"):
        search.load_tune_config(dict(BASE), data_dir=shards)
    with pytest.raises(UsageError, match="unknown key.*tune.trials"):
        search.load_tune_config(_config(space, trials=3), data_dir=shards)
    with pytest.raises(UsageError, match="needs --max-trials"):
        search.load_tune_config(_config(space, tuner="random"), data_dir=shards)
    with pytest.raises(UsageError, match="tune.tuner"):
        search.load_tune_config(_config(space, tuner="exhaustive"), data_dir=shards)
    # The grid tuner needs no max_trials: it tries every combination once.
    _, settings, _ = search.load_tune_config(_config(space, tuner="grid"), data_dir=shards)
    assert settings["tuner"] == "grid" and settings["max_trials"] is None
    with pytest.raises(UsageError, match="multiworker is not for tuning"):
        search.load_tune_config(
            _config(space), data_dir=shards, overrides=["train.strategy=multiworker"]
        )
    # Flags win over the YAML, epochs default to train.epochs.
    _, settings, _ = search.load_tune_config(
        _config(space, tuner="random", max_trials=5), data_dir=shards, max_trials=2
    )
    assert settings["max_trials"] == 2 and settings["epochs"] == 1


# --- project choice, roles, leaderboard --------------------------------------------------


def _fake_trial(folder, trial_id, status, score=None, values=None, tuner_id="tuner0"):
    trial_dir = os.path.join(folder, f"trial_{trial_id}")
    os.makedirs(trial_dir, exist_ok=True)
    metrics = {}
    if score is not None:
        metrics = {
            "val_mAP": {"direction": "max", "observations": [{"value": [score], "step": 0}]},
            "val_OF1_top3": {"direction": "max", "observations": [{"value": [0.5], "step": 0}]},
        }
    trial = {
        "trial_id": trial_id,
        "hyperparameters": {"space": [], "values": values or {}},
        "metrics": {"metrics": metrics},
        "score": score,
        "best_step": 0,
        "status": status,
        "message": None if status == "COMPLETED" else "Traceback...\nValueError: boom",
    }
    with open(os.path.join(trial_dir, "trial.json"), "w") as f:
        json.dump(trial, f)
    with open(os.path.join(trial_dir, "kerasmlic_trial.json"), "w") as f:
        json.dump({"tuner_id": tuner_id}, f)


def test_choose_mode_is_explicit_and_says_what_it_does(tmp_path):
    settings = {"directory": str(tmp_path), "project_name": "p"}
    lines = []
    assert search.choose_mode(settings, log=lines.append) is True
    assert lines[-1] == f"starting new project p in {tmp_path}"
    with pytest.raises(UsageError, match="no project 'p'"):
        search.choose_mode(settings, resume=True)
    _fake_trial(os.path.join(tmp_path, "p"), "0", "COMPLETED", 0.5)
    _fake_trial(os.path.join(tmp_path, "p"), "1", "FAILED")
    with pytest.raises(UsageError, match="already holds 2 trials.*--resume.*--overwrite"):
        search.choose_mode(settings)
    assert search.choose_mode(settings, resume=True, log=lines.append) is False
    assert lines[-1] == f"resuming project p in {tmp_path} (1 trials done, 2 started)"
    assert search.choose_mode(settings, overwrite=True, log=lines.append) is True
    assert lines[-1] == f"starting new project p in {tmp_path} (overwriting: deleting its 2 trials)"
    with pytest.raises(UsageError, match="exclude each other"):
        search.choose_mode(settings, overwrite=True, resume=True)


def test_roles_from_the_environment():
    ip, port, tid = (
        distributed.ENV_ORACLE_IP,
        distributed.ENV_ORACLE_PORT,
        distributed.ENV_TUNER_ID,
    )
    assert distributed.role({}) == "single"
    assert distributed.role({ip: "127.0.0.1", port: "8000", tid: "chief"}) == "chief"
    assert distributed.role({ip: "127.0.0.1", port: "8000", tid: "tuner1"}) == "worker"
    with pytest.raises(UsageError, match="KERASTUNER_ORACLE_PORT"):
        distributed.role({ip: "127.0.0.1", tid: "tuner1"})
    with pytest.raises(UsageError, match="port number"):
        distributed.role({ip: "127.0.0.1", port: "http", tid: "tuner1"})
    assert distributed.tuner_id({}) == "tuner0"


def test_leaderboard_ranks_by_val_map_and_keeps_failed_trials_last(tmp_path):
    folder = str(tmp_path)
    _fake_trial(folder, "0", "COMPLETED", 0.61, {"model.dropout": 0.1, "tuner/epochs": 3})
    _fake_trial(folder, "1", "FAILED", None, {"model.dropout": 0.3}, tuner_id="tuner1")
    _fake_trial(folder, "2", "COMPLETED", 0.7345, {"model.dropout": 0.2, "tuner/epochs": 1})
    markdown, ranked = results.write_leaderboard(folder, ["model.dropout"])
    assert [r["trial_id"] for r in ranked] == ["2", "0", "1"]
    lines = markdown.strip().splitlines()
    assert lines[0] == (
        "| rank | trial | dropout | epochs | tuner | status | val mAP (%) | val F1@3 (%) |"
    )
    assert lines[2] == "| 1 | 2 | 0.2 | 1 | tuner0 | COMPLETED | 73.45 | 50.00 |"
    assert lines[4] == "|  | 1 | 0.3 |  | tuner1 | FAILED |  |  |"
    with open(os.path.join(folder, results.LEADERBOARD_CSV)) as f:
        rows = f.read().splitlines()
    assert rows[1] == "1,2,0.2,1,tuner0,COMPLETED,0.7345,0.5"


# --- searches ----------------------------------------------------------------------------


def _random_map(y_true, seeds=50):
    from kerasmlic.metrics import evaluate_predictions

    rng = np.random.default_rng(0)
    return float(
        np.mean(
            [evaluate_predictions(y_true, rng.random(y_true.shape))["mAP"] for _ in range(seeds)]
        )
    )


def test_hyperband_search_leaderboard_best_config_and_run_dir(shards, tmp_path):
    from sklearn.metrics import average_precision_score

    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.export.run import load_run
    from kerasmlic.metrics import evaluate_predictions
    from kerasmlic.training.config import load_config

    space = {
        "model.name": {"choice": ["bce", "asl"]},
        "model.dropout": {"choice": [0.0, 0.2]},
        "train.learning_rate": {"min": 3e-3, "max": 1e-2, "sampling": "log"},
        "model.gamma_neg": {"choice": [2.0, 4.0]},
    }
    # Hyperband (the default) with max_epochs 3, factor 3, capped at 4 trials:
    # three 1-epoch trials, then the best of them continues to epoch 3.
    config = _config(space, epochs=3, max_trials=4, seed=1)
    lines = []
    out = search.tune(
        config, data_dir=shards, directory=str(tmp_path), project_name="p", log=lines.append
    )
    assert lines[0] == f"starting new project p in {tmp_path}"
    assert lines[1].startswith("tuner hyperband, objective val_mAP (max), 3 epochs per trial")
    rows = out["trials"]
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)
    by_id = {r["trial_id"]: r for r in rows}
    continued = [r for r in rows if "tuner/trial_id" in r["values"]]
    assert len(continued) == 1
    child = continued[0]["values"]
    parent = by_id[child["tuner/trial_id"]]
    assert (child["tuner/initial_epoch"], child["tuner/epochs"]) == (1, 3)
    assert parent["values"]["tuner/epochs"] == 1
    # The parent was the best 1-epoch trial, and the child keeps its values.
    first_round = [r for r in rows if r["values"]["tuner/epochs"] == 1]
    assert parent["score"] == max(r["score"] for r in first_round)
    assert {k: v for k, v in child.items() if not k.startswith("tuner/")} == {
        k: v for k, v in parent["values"].items() if not k.startswith("tuner/")
    }
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    table = out["leaderboard"].strip().splitlines()
    assert len(table) == 2 + 2 + 4  # title, blank, header, rule, 4 trials
    assert f"{100 * scores[0]:.2f}" in table[4]
    with open(os.path.join(out["project_dir"], "leaderboard.md")) as f:
        assert f.read() == out["leaderboard"]

    # The objective is the package's own mAP on the whole val split, and it
    # is sklearn's macro AP: recompute both from the saved best model.
    run = load_run(out["best_run_dir"])
    pred = predict_split(run["model"], shards, "val", batch_size=32)
    ours = evaluate_predictions(pred["y_true"], pred["scores"])["mAP"]
    keep = pred["y_true"].sum(0) > 0
    sk = average_precision_score(pred["y_true"][:, keep], pred["scores"][:, keep], average="macro")
    assert ours == pytest.approx(out["best_val_mAP"], abs=1e-9)
    assert sk == pytest.approx(out["best_val_mAP"], abs=1e-6)
    assert out["best_eval_mAP"] == pytest.approx(out["best_val_mAP"], abs=1e-9)
    # A few steps of training already rank better than random scores.
    assert out["best_val_mAP"] > _random_map(pred["y_true"]) + 0.05

    # The best config is a training config with the best trial's values.
    best = load_config(out["best_config"])
    values = rows[0]["values"]
    assert best["model"]["name"] == values["model.name"]
    assert best["model"]["dropout"] == values["model.dropout"]
    assert best["train"]["learning_rate"] == pytest.approx(values["train.learning_rate"])
    assert ("gamma_neg" in best["model"]) == (values["model.name"] == "asl")
    assert best["data"]["dir"] == shards and best["train"]["epochs"] == 1
    # The run dir is what `kerasmlic export` reads; its config says what ran.
    assert run["class_names"] == ["person", "bicycle", "car", "motorcycle", "airplane"]
    assert run["best"]["trial_id"] == out["best_trial"]
    assert run["metrics"]["mAP"] == pytest.approx(out["best_val_mAP"], abs=1e-9)
    assert run["config"]["train"]["epochs"] == values["tuner/epochs"]

    # Same project again: refused without a choice; resumed with --resume.
    with pytest.raises(UsageError, match="already holds 4 trials"):
        search.tune(config, data_dir=shards, directory=str(tmp_path), project_name="p")
    changed = _config({**space, "model.dropout": {"choice": [0.0, 0.5]}}, epochs=3,
                      max_trials=4, seed=1)  # fmt: skip
    with pytest.raises(UsageError, match="another config.*tune.space.model.dropout"):
        search.tune(
            changed, data_dir=shards, directory=str(tmp_path), project_name="p", resume=True
        )
    lines.clear()
    out = search.tune(
        config, data_dir=shards, directory=str(tmp_path), project_name="p", resume=True,
        max_trials=5, log=lines.append,
    )  # fmt: skip
    assert lines[0] == f"resuming project p in {tmp_path} (4 trials done, 4 started)"
    assert len(out["trials"]) == 5
    new = [r for r in out["trials"] if r["trial_id"] not in by_id]
    assert len(new) == 1 and new[0]["values"]["tuner/epochs"] == 3  # the next bracket


@pytest.mark.slow
def test_random_and_bayesian_searches_and_mixed_precision(shards, tmp_path, monkeypatch):
    import keras

    space = {"model.dropout": {"choice": [0.0, 0.1, 0.2]}, "train.learning_rate": [3e-3, 1e-2]}
    quiet = {"data_dir": shards, "directory": str(tmp_path), "log": lambda *a: None}
    first = search.tune(_config(space, tuner="random", max_trials=3), project_name="r1", **quiet)
    again = search.tune(_config(space, tuner="random", max_trials=3), project_name="r2", **quiet)
    # The same seed samples the same trials.
    assert [r["values"] for r in sorted(first["trials"], key=lambda r: r["trial_id"])] == [
        r["values"] for r in sorted(again["trials"], key=lambda r: r["trial_id"])
    ]
    out = search.tune(_config(space, tuner="bayesian", max_trials=3), project_name="bo", **quiet)
    assert len(out["trials"]) == 3 and all(r["status"] == "COMPLETED" for r in out["trials"])
    # Mixed precision holds in every trial (keras-tuner clears the session, and
    # with it the dtype policy, before each build) and the caller's policy is
    # restored afterwards.
    from kerasmlic.tuning import hypermodel

    built = []

    def spy(config, num_classes):
        model = build(config, num_classes)
        built.append({layer.dtype_policy.name for layer in model.layers if layer.weights})
        return model

    build = hypermodel.build_config_model
    monkeypatch.setattr(hypermodel, "build_config_model", spy)
    search.tune(
        _config(space, tuner="random", max_trials=2),
        project_name="mp", overrides=["train.mixed_precision=true"], **quiet,
    )  # fmt: skip
    assert len(built) == 3  # two trials, then the best model is rebuilt to save it
    # (Output layers stay float32 by design; the rest computes in float16.)
    assert all("mixed_float16" in policies for policies in built), built
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_rejected_trial_config_stops_the_search_with_one_line(shards, tmp_path):
    # The registry accepts the option name; the model rejects the value at build time.
    space = {"model.name": ["seq2seq"], "model.cell": ["gru_typo"]}
    config = _config(space, tuner="random", max_trials=2)
    with pytest.raises(UsageError, match="trial 0: .*gru_typo"):
        search.tune(config, data_dir=shards, directory=str(tmp_path), project_name="bad",
                    log=lambda *a: None)  # fmt: skip


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 50-65 s: a chief and two worker processes
def test_distributed_chief_and_two_workers_share_the_trials(shards, tmp_path):
    config_path = os.path.join(tmp_path, "dist.yaml")
    space = {
        "model.dropout": {"choice": [0.0, 0.1, 0.2, 0.3]},
        "train.learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"},
    }
    with open(config_path, "w") as f:
        yaml.safe_dump(_config(space, tuner="random", max_trials=4, epochs=1), f)
    directory = os.path.join(tmp_path, "projects")
    port = str(_free_port())
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "-1",
        # Three TensorFlow processes on two cores: one thread pool each.
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        distributed.ENV_ORACLE_IP: "127.0.0.1",
        distributed.ENV_ORACLE_PORT: port,
    }
    command = [sys.executable, "-m", "kerasmlic.cli.tune", config_path, "--data", shards,
               "--directory", directory, "--project-name", "dist"]  # fmt: skip
    procs, logs = {}, {}
    try:
        for tid in ("chief", "tuner0", "tuner1"):
            logs[tid] = open(os.path.join(tmp_path, f"{tid}.log"), "w+")
            procs[tid] = subprocess.Popen(
                command, env={**env, distributed.ENV_TUNER_ID: tid},
                stdout=logs[tid], stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.time() + DIST_TIMEOUT
        for tid in ("tuner0", "tuner1", "chief"):
            procs[tid].wait(timeout=max(1, deadline - time.time()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = {}
        for tid, f in logs.items():
            f.seek(0)
            output[tid] = f.read()
            f.close()
    for tid, proc in procs.items():
        assert proc.returncode == 0, f"{tid} exited {proc.returncode}:\n{output[tid][-3000:]}"

    project = os.path.join(directory, "dist")
    records = [
        json.load(open(os.path.join(project, d, "kerasmlic_trial.json")))
        for d in sorted(os.listdir(project))
        if d.startswith("trial_")
    ]
    ran = [r["tuner_id"] for r in records]
    assert len(ran) == 4 and all(r["status"] == "COMPLETED" for r in records)
    assert ran.count("tuner0") >= 1 and ran.count("tuner1") >= 1, ran
    assert ran.count("tuner0") + ran.count("tuner1") == 4
    assert len({r["pid"] for r in records}) == 2  # two worker processes, not the chief
    for tid in ("tuner0", "tuner1"):
        assert f"worker {tid}: done, ran {ran.count(tid)} trial(s)" in output[tid]
        assert output[tid].count("epoch 1: val mAP") == ran.count(tid)
    assert "epoch 1: val mAP" not in output["chief"]  # the chief trains nothing
    assert "chief: oracle listening on 127.0.0.1:" + port in output["chief"]
    assert "starting new project dist" in output["chief"]
    # The chief wrote the results: every trial on the leaderboard with its worker.
    with open(os.path.join(project, "leaderboard.csv")) as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == 4 and {r.split(",")[5] for r in rows} == {"tuner0", "tuner1"}
    assert os.path.isfile(os.path.join(project, "best", "best.keras"))
    assert os.path.isfile(os.path.join(project, "best_config.yaml"))


def test_cli_tune_usage_errors_exit_2_with_one_line(shards, tmp_path, capsys):
    from kerasmlic.cli import tune as cli_tune

    bad = os.path.join(tmp_path, "bad.yaml")
    with open(bad, "w") as f:
        yaml.safe_dump(_config({"model.nope": [1, 2]}), f)
    assert cli_tune.main([bad, "--data", shards, "--directory", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kerasmlic tune: error: tune.space.model.nope")
    with pytest.raises(SystemExit) as exc:
        cli_tune.main([bad, "--data", shards, "--overwrite", "--resume"])
    assert exc.value.code == 2


# --- a tuned model, exported, answers TF Serving-style clients ---------------------------

_PLAIN_TF_SCRIPT = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "kerasmlic":
            raise ImportError("kerasmlic is blocked in this process")

sys.meta_path.insert(0, _Block())
import numpy as np
import tensorflow as tf

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
data = [open(p, "rb").read() for p in sys.argv[3:]]
out = serve(image_bytes=tf.constant(data))
np.savez(sys.argv[2], **{k: v.numpy() for k, v in out.items()})
assert not [m for m in sys.modules if m.split(".")[0] == "kerasmlic"]
"""


# Slow (33 s on 2 cores): test_export.py serves an export in a fresh process without
# kerasmlic in the default run; this one adds that a tuned best model exports alike.
@pytest.mark.slow
def test_tuned_model_exports_and_serves_without_kerasmlic(shards, tmp_path):
    import tensorflow as tf

    from kerasmlic.data.manifest import shard_paths
    from kerasmlic.data.preprocessing import resize_image, to_model_input
    from kerasmlic.data.schema import parse_example
    from kerasmlic.export import export_run, load_run

    space = {"model.dropout": {"choice": [0.0, 0.2]}}
    out = search.tune(
        _config(space, tuner="random", max_trials=1, epochs=1),
        data_dir=shards,
        directory=str(tmp_path),
        project_name="serve",
        log=lambda line: None,
    )
    path = export_run(out["best_run_dir"], str(tmp_path / "saved" / "tuned"), explain=False)
    assert os.path.basename(path) == "1"

    # Three val JPEGs exactly as stored in the shards, and the Keras model's scores.
    records = tf.data.TFRecordDataset(shard_paths(shards, "val")).take(3)
    encoded = [parse_example(r)["image/encoded"].numpy() for r in records]
    files = []
    for i, data in enumerate(encoded):
        files.append(str(tmp_path / f"img{i}.jpg"))
        with open(files[-1], "wb") as f:
            f.write(data)
    model = load_run(out["best_run_dir"])["model"]
    pixels = tf.stack([resize_image(tf.io.decode_jpeg(d, channels=3), 32) for d in encoded])
    expected = model.predict(to_model_input(pixels, model.normalization), verbose=0)["scores"]

    bin_dir = os.path.dirname(sys.executable)
    np.save(tmp_path / "in.npy", np.array(encoded, dtype=object))
    cli = subprocess.run(
        [
            os.path.join(bin_dir, "saved_model_cli"), "run", "--dir", path,
            "--tag_set", "serve", "--signature_def", "serving_default",
            "--inputs", f"image_bytes={tmp_path / 'in.npy'}", "--outdir", str(tmp_path / "cli"),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    cli_scores = np.load(tmp_path / "cli" / "scores.npy")

    script = tmp_path / "plain_tf.py"
    script.write_text(_PLAIN_TF_SCRIPT)
    plain = subprocess.run(
        [sys.executable, "-I", str(script), path, str(tmp_path / "plain.npz"), *files],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    served = np.load(tmp_path / "plain.npz")

    # Same decoded pixels on both sides: scores agree to float32 round-off.
    np.testing.assert_allclose(served["scores"], expected, atol=1e-5)
    np.testing.assert_allclose(cli_scores, expected, atol=1e-5)
    assert served["scores"].shape == (3, 5)
    labels = zip(served["scores"], served["label_ids"], served["num_labels"], strict=True)
    for row, ids, n in labels:
        kept = ids[:n]
        assert (kept >= 0).all() and list(row[kept]) == sorted(row[kept], reverse=True)
