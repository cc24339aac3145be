import csv
import glob
import json
import math
import os
import time

import numpy as np
import pytest
import yaml
from helpers_data import write_tiny_coco
from helpers_training import cli_main, tiny_shards

from kerasmlic.errors import UsageError
from kerasmlic.metrics import RESULT_KEYS
from kerasmlic.reporting import analysis

# Every reproduce run here: small images and batches, quiet, and the `tiny` encoder
# in place of the experiments' `small` one (what is tested is the orchestration).
SMALL_RUN = ["data.image_size=32", "data.batch_size=8", "train.verbose=0", "model.encoder=tiny"]
SMALL_RUN_FLAGS = [arg for setting in SMALL_RUN for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "tiny-data"))


@pytest.fixture(scope="module")
def trained_run(shards, tmp_path_factory):
    from kerasmlic.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "bce"
    config = {
        "model": {"name": "bce"},
        "data": {"dir": shards, "image_size": 32, "batch_size": 8},
        "train": {"epochs": 1, "verbose": 0},
        "evaluation": {"calibrate": True},
        "run_dir": str(run_dir),
    }
    return train(config, log=lambda line: None)


def test_calibrated_thresholds_are_saved_and_raise_per_class_f1(trained_run, shards):
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.metrics import evaluate_predictions
    from kerasmlic.training.calibration import find_thresholds_layers

    model = load_model(os.path.join(trained_run, "best.keras"))
    (layer,) = find_thresholds_layers(model)
    thresholds = layer.thresholds.numpy()
    assert thresholds.shape == (80,) and not np.allclose(thresholds, 0.5)
    with np.load(os.path.join(trained_run, "predictions_val.npz")) as npz:
        scores, predicted = npz["scores"], npz["predicted"]
    np.testing.assert_array_equal(predicted, (scores >= thresholds).astype(np.float32))
    # Fit on the train holdout (the default), where they beat 0.5 class by class;
    # the val figures are reported with them but never chose them.
    held = predict_split(model, shards, "train", holdout=("heldout", 0.1))
    calibrated = evaluate_predictions(held["y_true"], held["scores"], thresholds=thresholds)
    plain = evaluate_predictions(held["y_true"], held["scores"], thresholds=0.5)
    f1 = [[row["F1"] for row in r["per_class"]] for r in (calibrated, plain)]
    assert all(a >= b - 1e-9 for a, b in zip(f1[0], f1[1], strict=True))
    assert sum(f1[0]) > sum(f1[1])
    during = json.loads(open(os.path.join(trained_run, "eval_val.json")).read())
    assert during["thresholds_from"] == "train-holdout"


# ------------------------------------------------------------------- evaluate


def test_evaluate_cli_writes_the_json_with_design_keys(trained_run, tmp_path, capsys):
    out = tmp_path / "out" / "eval.json"
    assert cli_main(["evaluate", trained_run, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "top-3" in printed and str(out) in printed
    results = json.loads(out.read_text())
    assert set(results) == {*RESULT_KEYS, "thresholds_from"}
    assert results["thresholds_from"] == "train-holdout"
    assert results["num_images"] == 32 and len(results["per_class"]) == 80
    assert set(results["per_class"][0]) == {"name", "AP", "P", "R", "F1", "support"}
    assert results["per_class"][0]["name"] == "person"
    # Same model, same data: the figures of the training run's own evaluation.
    during = json.loads(open(os.path.join(trained_run, "eval_val.json")).read())
    for key in ("mAP", "OF1_top3", "CF1", "EF1"):
        assert results[key] == pytest.approx(during[key], abs=1e-6)


def test_evaluate_bad_input_is_one_line_and_exit_2(trained_run, tmp_path, capsys):
    other = write_tiny_coco(tmp_path / "coco", num_images=6, num_classes=5)
    from kerasmlic.data.build import build_split

    five = str(tmp_path / "five")
    build_split(other.annotations, other.images, "val", five, progress=False)
    cases = [
        (["evaluate", str(tmp_path / "nope")], "run dir"),
        (["evaluate", str(tmp_path)], "no best.keras"),
        (["evaluate", trained_run, "--split", "test"], "split 'test' not found"),
        (["evaluate", trained_run, "--data", str(tmp_path / "gone")], "does not exist"),
        (["evaluate", trained_run, "--data", five], "do not match the model's class list"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


# ------------------------------------------------------------------ analysis


def test_cooccurrence_strength_and_size_hand_worked():
    info = {
        "label_counts": [2, 1, 0],
        "cooccurrence": [[2, 1, 0], [1, 1, 0], [0, 0, 0]],
        "label_mean_area": [0.5, 0.01, 0.0],
    }
    strength = analysis.cooccurrence_strength(info)
    assert strength[0] == pytest.approx(0.5) and strength[1] == pytest.approx(1.0)
    assert np.isnan(strength[2])
    size = analysis.object_size(info)
    assert size[:2].tolist() == [0.5, 0.01] and np.isnan(size[2])


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 2.0 * x + rng.normal(size=40)
    x[3] = x[7]  # a tie
    assert analysis.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert analysis.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    rho, p = analysis.permutation_p_value(x, y, permutations=500)
    assert rho == pytest.approx(stats.spearmanr(x, y)[0]) and p < 0.01
    _, p_null = analysis.permutation_p_value(x, rng.normal(size=40), permutations=500)
    assert p_null > 0.01


def test_gain_analysis_finds_a_planted_relation():
    c = 30
    rng = np.random.default_rng(1)
    counts = rng.integers(5, 50, c)
    cooc = np.diag(counts).astype(float)
    others = rng.uniform(0.2, 3.0, c)  # mean other labels per image
    cooc[np.arange(c), (np.arange(c) + 1) % c] = others * counts
    info = {
        "label_counts": counts.tolist(),
        "cooccurrence": cooc.tolist(),
        "label_mean_area": rng.uniform(0.001, 0.3, c).tolist(),
    }
    base = rng.uniform(0.2, 0.6, c)
    gain = 0.05 * others  # the planted effect: more co-occurrence, more gain

    def results(ap):
        return {"per_class": [{"AP": float(a)} for a in ap]}

    out = analysis.gain_analysis(results(base + gain), results(base), info, permutations=300)
    assert out["num_classes"] == c and out["classes_improved"] == c
    assert out["cooccurrence_stats"]["rho"] == pytest.approx(1.0)
    assert out["cooccurrence_stats"]["p"] < 0.01
    assert abs(out["size_stats"]["rho"]) < 0.5


# ------------------------------------------------------------------ reproduce


@pytest.fixture(scope="module")
def shards_with_test(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "tiny-test"), test=24)


def check_report(out, models, split="test", seeds=1):
    text = open(os.path.join(out, "results.md")).read()
    for name in models:
        assert f"(`{name}`)" in text
        for seed in range(seeds):
            assert os.path.isfile(os.path.join(out, name, f"seed-{seed}", f"eval_{split}.json"))
    assert "| model | P | R | F1 | mAP | CF1 | OF1 | seeds |" in text
    pngs = ["seed_error_bars.png", "pr_curves.png", "training_curves.png", "per_class_ap.png"]
    for png in [*pngs, "ap_gain_analysis.png"]:
        path = os.path.join(out, png)
        assert os.path.getsize(path) > 5000, png
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Spearman" in text and "## The study's ordering" in text
    return text


def test_reproduce_seeds_tuning_and_paired_comparison(
    shards_with_test, tmp_path, monkeypatch, capsys
):
    from scipy import stats

    import kerasmlic.tuning

    # --seed-set reaches the seed trainings only: record what each tuning search was given.
    real_tune, tuned_momenta, tune_seconds = kerasmlic.tuning.tune, [], []

    def spy_tune(config, **kwargs):
        tuned_momenta.append(config["train"]["bn_momentum"])
        start = time.time()
        result = real_tune(config, **kwargs)
        tune_seconds.append(time.time() - start)
        return result

    monkeypatch.setattr(kerasmlic.tuning, "tune", spy_tune)
    out = str(tmp_path / "rep")
    argv = ["reproduce", "--data", shards_with_test, "--models", "bce,rnn_hidden"]
    argv += ["--epochs", "1", "--seeds", "2", "--rates", "1e-3,4e-3", "--tune-epochs", "1"]
    argv += ["--out", out, *SMALL_RUN_FLAGS, "--seed-set", "evaluation.every=2"]
    # 0.8, not a slow 0.99: after one epoch that would leave near-constant scores.
    argv += ["--seed-set", "train.bn_momentum=0.8"]
    assert cli_main(argv) == 0
    assert tuned_momenta == [None, None]
    text = check_report(out, ["bce", "rnn_hidden"], split="test", seeds=2)
    assert "Binary cross entropy (`bce`)" in text and "on the `test` split" in text
    f1 = {}
    for name in ("bce", "rnn_hidden"):
        # The grid tried both rates on val; the chosen one has the best val mAP.
        record = json.load(open(os.path.join(out, name, "tuning.json")))
        assert record["rates"] == [1e-3, 4e-3] and record["epochs"] == 1
        assert set(record["val_mAP"]) == {repr(1e-3), repr(4e-3)}
        best = max(record["val_mAP"], key=lambda k: record["val_mAP"][k])
        assert record["chosen"] == float(best)
        # The search's wall time, which keras-tuner does not keep.
        assert abs(record["seconds"] - tune_seconds[len(f1)]) < 0.5, record["seconds"]
        for seed in range(2):
            config = yaml.safe_load(open(os.path.join(out, name, f"seed-{seed}", "config.yaml")))
            assert config["train"]["seed"] == seed
            assert config["train"]["learning_rate"] == record["chosen"]
            assert config["train"]["bn_momentum"] == 0.8
            # Validated every 2 epochs, but always the last 3 the convergence rule reads.
            assert config["evaluation"]["every"] == 2 and config["evaluation"]["last_epochs"] == 3
            assert config["data"]["batch_size"] == 8  # --set still applies
        f1[name] = [
            json.load(open(os.path.join(out, name, f"seed-{s}", "eval_test.json")))["OF1_top3"]
            for s in range(2)
        ]
        # mean ± std over the 2 seeds, as the table prints it.
        mean, std = np.mean(f1[name]), np.std(f1[name], ddof=1)
        row = next(line for line in text.splitlines() if f"(`{name}`)" in line)
        assert f"| {100 * mean:.1f} ± {100 * std:.1f} |" in row, row
    diff = np.subtract(f1["rnn_hidden"], f1["bce"])
    p = stats.ttest_rel(f1["rnn_hidden"], f1["bce"]).pvalue
    paired = text.split("## Each model against BCE on F1@3")[1].split("## ")[0]
    row = next(line for line in paired.splitlines() if line.startswith("| `rnn_hidden` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{100 * diff.mean():+.2f}" and cells[2] == f"{100 * diff.std(ddof=1):.2f}"
    # Differences that do not vary leave the test undefined: the report prints a dash.
    expected_p = "–" if not diff.std() > 0 else "< 0.001" if p < 0.001 else f"{p:.3f}"
    assert cells[3] == "2" and cells[5] == expected_p
    # The runs' own training time: the sum of every seed run's epoch_seconds.
    epoch_seconds = [
        float(row["epoch_seconds"])
        for name in ("bce", "rnn_hidden")
        for seed in range(2)
        for row in csv.DictReader(open(os.path.join(out, name, f"seed-{seed}", "history.csv")))
    ]
    records = {n: os.path.join(out, n, "tuning.json") for n in ("bce", "rnn_hidden")}
    searched = {n: json.load(open(path))["seconds"] for n, path in records.items()}
    recorded = (
        f"- Training time recorded in the 4 runs: {sum(epoch_seconds) / 60:.1f} min (their "
        "epochs, whichever invocation trained them); in the tuning searches: "
        f"{sum(searched.values()) / 60:.1f} min; evaluation not included"
    )
    assert recorded in text and sum(epoch_seconds) > 0
    # A second call reuses the tuning records and the finished runs, and still reports
    # their time, not only its own (it trained nothing). A record written before the
    # search time was kept is reused too, and the line says it carries no time.
    record = json.load(open(records["bce"]))
    del record["seconds"]
    with open(records["bce"], "w") as f:
        json.dump(record, f)
    before = os.path.getmtime(os.path.join(out, "bce", "seed-1", "best.keras"))
    assert cli_main(argv) == 0
    assert os.path.getmtime(os.path.join(out, "bce", "seed-1", "best.keras")) == before
    assert "seconds" not in json.load(open(records["bce"]))  # reused, not searched again
    partly = (
        recorded.split("; in the tuning")[0]
        + f"; in the tuning searches: {searched['rnn_hidden'] / 60:.1f} min "
        "(1 of 2 records carry no time); evaluation not included"
    )
    assert partly in open(os.path.join(out, "results.md")).read()
    # A finished run of another seed config is refused in one line, never reused as
    # if it were this one's (the tuning records, whose config did not change, are).
    capsys.readouterr()
    assert cli_main([*argv[:-1], "train.bn_momentum=0.7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed-0 holds a finished run" in err, err
    assert "differs in train.bn_momentum" in err
    assert len(tuned_momenta) == 2  # no new search
    assert os.path.getmtime(os.path.join(out, "bce", "seed-1", "best.keras")) == before


@pytest.mark.slow
def test_reproduce_jobs_run_at_once_and_die_with_a_killed_parent(shards_with_test, tmp_path):
    """--jobs 2: two workers search, then train, at once; kill -9 of the parent ends them."""
    import re
    import signal
    import subprocess

    from helpers_training import cli_command, sigkilled_on_exit, subprocess_env
    from test_processes import wait_gone

    out = str(tmp_path / "rep")
    args = ["reproduce", "--data", shards_with_test, "--models", "bce,rnn_hidden", "--jobs", "2"]
    args += ["--epochs", "1", "--seeds", "1", "--rates", "1e-3", "--tune-epochs", "1"]
    args += ["--out", out, *SMALL_RUN_FLAGS]
    log_path = str(tmp_path / "log")
    started = [os.path.join(out, m, "seed-0", "config.yaml") for m in ("bce", "rnn_hidden")]
    evaluated = [os.path.join(out, m, "seed-0", "eval_test.json") for m in ("bce", "rnn_hidden")]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cli_command(*args), env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
        )
    with sigkilled_on_exit(proc):
        deadline = time.monotonic() + 300
        while not all(map(os.path.isfile, started)) and proc.poll() is None:
            assert time.monotonic() < deadline, open(log_path).read()
            time.sleep(0.05)
        # Both seed runs began before either was evaluated: they ran at once.
        assert all(map(os.path.isfile, started)) and not any(map(os.path.isfile, evaluated))
    assert proc.returncode == -signal.SIGKILL  # killed while running, not ended on its own
    text = open(log_path).read()
    pool_line = r"(\d+) (searches|seed runs) in 2 worker processes \(pids (\d+), (\d+)\)"
    pools = re.findall(pool_line, text)
    assert [p[:2] for p in pools] == [("2", "searches"), ("2", "seed runs")], text
    # Every line a worker printed is behind its task's label.
    assert "[bce] bce: learning rate 0.001 (val mAP" in text
    assert "[rnn_hidden seed 0] rnn_hidden seed 0: training into" in text
    workers = [int(pid) for pool in pools for pid in pool[2:]]
    assert wait_gone(workers, timeout=10) == []  # no orphan keeps training into OUT
    assert not any(map(os.path.isfile, evaluated))
    # The same command again reuses both searches and finishes the killed runs.
    done = subprocess.run(
        cli_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bce: learning rate 0.001 from" in done.stdout and "searches in" not in done.stdout
    assert "2 seed runs in 2 worker processes" in done.stdout
    check_report(out, ["bce", "rnn_hidden"], split="test")
    assert "--jobs 2" in open(os.path.join(out, "results.md")).read()


def test_reused_records_are_checked_against_config_and_shards(shards, tmp_path):
    """A digest and a finished run's differences see a changed key and rebuilt shards."""
    import shutil

    from kerasmlic.data.manifest import load_manifest
    from kerasmlic.training.config import load_config
    from kerasmlic.training.rundir import (
        config_fingerprint,
        finished_run_differences,
        prepare_run_dir,
    )

    data = str(tmp_path / "shards")
    shutil.copytree(shards, data)
    flags = {"data.dir": data, "model.name": "bce"}
    config = load_config(None, [], **flags)
    same = load_config(None, ["train.verbose=0"], **flags)  # how a run logs is not what it is
    other = load_config(None, ["train.seed=5"], **flags)
    digest = config_fingerprint(config, data)
    assert len(digest) == 64 and config_fingerprint(same, data) == digest
    assert config_fingerprint(other, data) != digest
    run_dir = str(tmp_path / "run")
    prepare_run_dir(run_dir, config, data, load_manifest(data))
    assert finished_run_differences(run_dir, same, data) == []
    assert finished_run_differences(run_dir, other, data) == ["train.seed"]
    # A run written before a key joined the defaults holds that key's default.
    saved = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    del saved["evaluation"]["last_epochs"]
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(saved, f)
    assert finished_run_differences(run_dir, same, data) == []
    later = load_config(None, ["evaluation.last_epochs=3"], **flags)
    assert finished_run_differences(run_dir, later, data) == ["evaluation.last_epochs"]
    # Shards rebuilt at the same path (another dataset.json) change both.
    with open(os.path.join(data, "dataset.json"), "a") as f:
        f.write("\n")
    assert config_fingerprint(config, data) != digest
    assert finished_run_differences(run_dir, config, data) == ["shards (dataset.json)"]
    # The run never finished: resuming it on the rebuilt shards is refused too.
    with pytest.raises(UsageError, match="interrupted run on other shards"):
        prepare_run_dir(run_dir, config, data, load_manifest(data))


def _trial(rate, seed, score, status="COMPLETED"):
    values = {"train.learning_rate": rate, "train.seed": seed}
    return {"values": values, "status": status, "score": score}


def test_trial_seeds_score_each_rate_by_its_mean_hand_worked(shards, tmp_path, monkeypatch):
    """--trial-seeds 2: rates crossed with seeds; the best mean wins, not the best trial."""
    import kerasmlic.tuning
    from kerasmlic.reporting import rate_search
    from kerasmlic.reporting import reproduce as rep

    spaces, scripted = [], []

    def fake_tune(config, **kwargs):
        spaces.append(config["tune"])
        return {"trials": scripted.pop(0)}

    monkeypatch.setattr(kerasmlic.tuning, "tune", fake_tune)
    config = rep.run_config("bce", shards, str(tmp_path), overrides=["train.verbose=0"])
    out = str(tmp_path / "out")
    # 2e-3 has the single best trial (0.45) but the lower mean (0.325 against 0.35).
    scripted.append(
        [_trial(2e-3, 0, 0.45), _trial(1e-3, 1, 0.40), _trial(1e-3, 0, 0.30), _trial(2e-3, 1, 0.20)]
    )
    record = rate_search.search_learning_rate(
        config, [1e-3, 2e-3], 3, out, trial_seeds=2, log=print
    )
    assert spaces[0]["space"]["train.seed"] == {"choice": [0, 1]}
    assert spaces[0]["max_consecutive_failed_trials"] == 4 and spaces[0]["tuner"] == "grid"
    assert record["chosen"] == 1e-3 and record["trial_seeds"] == 2
    assert record["val_mAP"] == {repr(1e-3): 0.35, repr(2e-3): pytest.approx(0.325)}
    on_disk = json.load(open(os.path.join(out, "bce", "tuning.json")))
    assert on_disk["chosen"] == 1e-3 and on_disk["val_mAP"][repr(1e-3)] == 0.35
    # The record stands in for the same search only: not for one trial per rate.
    assert rate_search.reusable_tuning_record(config, [1e-3, 2e-3], 3, out, trial_seeds=2) == record
    assert rate_search.reusable_tuning_record(config, [1e-3, 2e-3], 3, out) is None
    # A failed trial (a diverging seed) disqualifies its rate, however good its other one.
    scripted.append(
        [
            _trial(1e-3, 0, 0.90),
            _trial(1e-3, 1, None, "FAILED"),
            _trial(2e-3, 0, 0.1),
            _trial(2e-3, 1, 0.1),
        ]
    )
    record = rate_search.search_learning_rate(config, [1e-3, 2e-3], 3, out, trial_seeds=2)
    assert record["chosen"] == 2e-3 and record["val_mAP"][repr(1e-3)] is None
    # One trial per rate keeps the old search: no seed in the space.
    scripted.append([_trial(1e-3, 0, 0.2), _trial(2e-3, 0, 0.3)])
    assert rate_search.search_learning_rate(config, [1e-3, 2e-3], 3, out)["chosen"] == 2e-3
    assert "train.seed" not in spaces[-1]["space"]
    with pytest.raises(UsageError, match="--trial-seeds must be a positive integer"):
        rep.reproduce(shards, ["bce"], out=out, trial_seeds=0)
    for bad in ({"seeds": 0}, {"jobs": True}):
        flag = "--" + next(iter(bad))
        with pytest.raises(UsageError, match=f"{flag} must be a positive integer"):
            rep.reproduce(shards, ["bce"], out=out, **bad)


@pytest.mark.slow
def test_trial_seeds_train_one_trial_per_seed(shards, tmp_path):
    """A real grid of 1 rate x 2 trial seeds: two trials, seeds 0 and 1, the mean recorded."""
    from kerasmlic.reporting import rate_search
    from kerasmlic.reporting import reproduce as rep

    config = rep.run_config("bce", shards, str(tmp_path), overrides=SMALL_RUN)
    out = str(tmp_path / "out")
    record = rate_search.search_learning_rate(
        config, [1e-3], 1, out, trial_seeds=2, log=lambda line: None
    )
    trials = [
        json.load(open(path))
        for path in sorted(glob.glob(os.path.join(out, "tune", "bce", "trial_*", "trial.json")))
    ]
    seeds = sorted(t["hyperparameters"]["values"]["train.seed"] for t in trials)
    assert seeds == [0, 1] and all(t["status"] == "COMPLETED" for t in trials)
    scores = [t["score"] for t in trials]
    assert record["val_mAP"][repr(1e-3)] == pytest.approx(np.mean(scores))
    assert record["chosen"] == 1e-3


def test_full_length_rate_selection_keeps_the_best_rates_run_as_seed_0(
    shards_with_test, tmp_path, capsys
):
    """--rate-selection full: seed 0 at each rate for the whole run; the best is seed 0."""
    out = str(tmp_path / "rep")
    argv = ["reproduce", "--data", shards_with_test, "--models", "bce", "--epochs", "1"]
    argv += ["--seeds", "2", "--rates", "1e-3,4e-3", "--rate-selection", "full", "--out", out]
    argv += [*SMALL_RUN_FLAGS, "--seed-set", "train.bn_momentum=0.8"]
    assert cli_main(argv) == 0
    runs = {rate: os.path.join(out, "bce", f"lr-{rate:g}") for rate in (1e-3, 4e-3)}
    best = {
        rate: json.load(open(os.path.join(folder, "seed-0", "summary.json")))["best_val_mAP"]
        for rate, folder in runs.items()
    }
    chosen = max(best, key=best.get)
    other = 4e-3 if chosen == 1e-3 else 1e-3
    record = json.load(open(os.path.join(out, "bce", "tuning.json")))
    assert record["selection"] == "full" and record["epochs"] == 1
    assert record["chosen"] == chosen
    assert record["val_mAP"] == {repr(r): best[r] for r in best}
    # The seed-0 runs had the seed runs' settings (--seed-set), at their own rates.
    for rate, folder in runs.items():
        config = yaml.safe_load(open(os.path.join(folder, "seed-0", "config.yaml")))
        assert config["train"]["learning_rate"] == rate and config["train"]["seed"] == 0
        assert config["train"]["bn_momentum"] == 0.8
    # Only the chosen rate goes on to seed 1, and only its runs are evaluated on test.
    config = yaml.safe_load(open(os.path.join(runs[chosen], "seed-1", "config.yaml")))
    assert config["train"]["learning_rate"] == chosen and config["train"]["seed"] == 1
    assert not os.path.exists(os.path.join(runs[other], "seed-1"))
    assert not os.path.exists(os.path.join(runs[other], "seed-0", "eval_test.json"))
    for seed in range(2):
        assert os.path.isfile(os.path.join(runs[chosen], f"seed-{seed}", "eval_test.json"))
    text = open(os.path.join(out, "results.md")).read()
    assert "| Binary cross entropy (`bce`) |" in text
    assert "seed 0 trained for the whole run at each of the same 2 rates" in text
    assert "--rate-selection full" in text
    row = next(line for line in text.splitlines() if line.startswith("| `bce` | 1 |"))
    assert row.endswith(f"| {chosen:g} |"), row
    # The selection's cost beyond seed 0: the other rate's run, recorded in its history.
    seconds = [
        float(r["epoch_seconds"])
        for r in csv.DictReader(open(os.path.join(runs[other], "seed-0", "history.csv")))
    ]
    assert record["seconds"] == round(sum(seconds), 1) > 0
    assert f"in the seed-0 runs at the rates not chosen: {sum(seconds) / 60:.1f} min" in text
    # A second call trains nothing: every run, and so the choice, is reused.
    before = {r: os.path.getmtime(os.path.join(f, "seed-0", "best.keras")) for r, f in runs.items()}
    capsys.readouterr()
    assert cli_main(argv) == 0
    logged = capsys.readouterr().out
    assert "training" not in logged and "bce seed 1: finished and evaluated" in logged, logged
    after = {r: os.path.getmtime(os.path.join(f, "seed-0", "best.keras")) for r, f in runs.items()}
    assert after == before and json.load(open(os.path.join(out, "bce", "tuning.json"))) == record
    # Short-trial flags have no meaning here: refused in one line.
    assert cli_main([*argv, "--tune-epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes no --tune-epochs" in err, err


def test_full_length_selection_skips_a_diverged_rate_hand_worked(tmp_path, monkeypatch):
    """A rate whose seed-0 run diverges scores None and loses; all diverged is one clear error."""
    import kerasmlic.training
    from kerasmlic.reporting import rate_search
    from kerasmlic.training.callbacks import TrainingDiverged

    def diverge(run, log=print):
        raise TrainingDiverged("training diverged: loss is nan at epoch 1, step 3")

    monkeypatch.setattr(kerasmlic.training, "train", diverge)
    run = {"model": {"name": "bce"}, "train": {"learning_rate": 4e-3}, "run_dir": str(tmp_path)}
    assert rate_search.selection_task(run, log=lambda line: None) == ("bce", 4e-3, None)
    out = str(tmp_path / "out")
    dirs = {}
    for rate, seconds in ((1e-3, (1.5, 2.0)), (4e-3, (0.5,))):
        dirs[rate] = os.path.join(out, "bce", f"lr-{rate:g}", "seed-0")
        os.makedirs(dirs[rate])
        with open(os.path.join(dirs[rate], "history.csv"), "w") as f:
            f.write("epoch,epoch_seconds\n")
            f.writelines(f"{i},{s}\n" for i, s in enumerate(seconds))
    record = rate_search.full_length_selection(
        "bce", [1e-3, 4e-3], {1e-3: 0.3, 4e-3: None}, dirs, out
    )
    assert record["chosen"] == 1e-3 and record["val_mAP"] == {"0.001": 0.3, "0.004": None}
    assert record["epochs"] == 2 and record["seconds"] == 0.5  # the diverged run's time
    assert json.load(open(os.path.join(out, "bce", "tuning.json"))) == record
    # A tie keeps the first rate given.
    tie = rate_search.full_length_selection("bce", [4e-3, 1e-3], {1e-3: 0.3, 4e-3: 0.3}, dirs, out)
    assert tie["chosen"] == 4e-3 and tie["seconds"] == 3.5
    with pytest.raises(UsageError, match="diverged at every rate"):
        rate_search.full_length_selection("bce", [1e-3, 4e-3], {1e-3: None, 4e-3: None}, dirs, out)


def test_seed_runs_go_costliest_model_first_hand_worked():
    """--jobs N orders the seed runs by their model's search time; no record goes last."""
    from kerasmlic.reporting.reproduce import costliest_first

    tasks = [(name, f"{name} seed {k}", ()) for name in ("a", "b", "c", "d") for k in (0, 1)]
    tuning = {"a": {"seconds": 5.0}, "c": {"seconds": 9.0}, "d": {"chosen": 1e-3}}
    order = [label for _, label, _ in costliest_first(tasks, tuning)]
    assert order == [
        "c seed 0", "c seed 1", "a seed 0", "a seed 1",
        "b seed 0", "b seed 1", "d seed 0", "d seed 1",
    ]  # fmt: skip
    # --rates none: no records at all (this ordering used to negate None and fail).
    assert costliest_first(tasks, {}) == tasks


def test_seed_mean_runs_pick_the_best_model_on_the_mean_hand_worked():
    """The analysis's best sequence model is the one with the best mean, not the best seed 0."""
    from kerasmlic.reporting.runs import best_sequence_run, seed_mean_runs
    from kerasmlic.reporting.stats import mean_std

    def run(name, f1, aps):
        return {"name": name, "eval": {"OF1_top3": f1, "mAP": 0.3, "per_class": aps}}

    def rows(*aps):
        return [{"AP": ap} for ap in aps]

    groups = {
        "bce": [run("bce", 0.5, rows(0.1, None, 0.5)), run("bce", 0.5, rows(0.3, None, 0.5))],
        # seq2seq wins seed 0 (0.60 against 0.55) but its mean is 0.50.
        "seq2seq": [
            run("seq2seq", 0.60, rows(0.9, None, 0.9)),
            run("seq2seq", 0.40, rows(0, None, 0)),
        ],
        "rnn_hidden": [
            run("rnn_hidden", 0.55, rows(0.2, None, 0.6)),
            run("rnn_hidden", 0.55, rows(0.4, None, 0.8)),
        ],
    }
    assert best_sequence_run([runs[0] for runs in groups.values()])["name"] == "seq2seq"
    summary = {
        name: {key: mean_std([r["eval"][key] for r in runs]) for key in ("OF1_top3", "mAP")}
        for name, runs in groups.items()
    }
    means = seed_mean_runs(groups, summary)
    assert [m["name"] for m in means] == ["bce", "seq2seq", "rnn_hidden"]
    best = best_sequence_run(means)
    assert best["name"] == "rnn_hidden"
    assert best["eval"]["OF1_top3"] == pytest.approx(0.55)
    assert [row["AP"] for row in best["eval"]["per_class"]] == [
        pytest.approx(0.3),
        None,
        pytest.approx(0.7),
    ]


def test_paired_comparison_hand_worked_and_math_fallback(monkeypatch):
    import builtins

    from kerasmlic.reporting.stats import mean_std, paired_comparison, t_two_sided_p

    assert mean_std([1.0, 3.0, None, float("nan")]) == (2.0, pytest.approx(2**0.5), 2)
    # Differences 0.1, 0.2, 0.3: mean 0.2, std 0.1, t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3.
    out = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert out["mean_diff"] == pytest.approx(0.2) and out["std_diff"] == pytest.approx(0.1)
    assert out["t"] == pytest.approx(2 * 3**0.5) and out["method"] == "scipy"
    # t = 2 sqrt 3 with 2 df: p = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14).
    assert out["p"] == pytest.approx(1 - (12 / 14) ** 0.5, rel=1e-9)
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    fallback = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert fallback["method"] == "math" and fallback["p"] == pytest.approx(out["p"], rel=1e-9)
    monkeypatch.undo()
    from scipy import stats

    for t, df in ((0.3, 1), (2.5, 3), (-4.0, 7), (12.0, 30)):
        assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-8)
    single = paired_comparison([0.6], [0.5])
    assert single["n"] == 1 and np.isnan(single["p"])


def test_reproduce_rejects_unknown_models(shards, tmp_path):
    from kerasmlic.reporting.reproduce import reproduce

    with pytest.raises(UsageError, match="unknown model"):
        reproduce(shards, models=["bce", "vgg_magic"], out=str(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        reproduce(str(tmp_path / "none"), models=["bce"], out=str(tmp_path))
    with pytest.raises(UsageError, match="--seeds"):
        reproduce(shards, models=["bce"], out=str(tmp_path), seeds=0)
    # A bad seed-only override fails before any tuning or training starts.
    with pytest.raises(UsageError, match="bn_momentum"):
        reproduce(
            shards, models=["bce"], out=str(tmp_path), seed_overrides=["train.bn_momentum=1.5"]
        )
    assert not os.path.exists(os.path.join(tmp_path, "bce"))


@pytest.mark.slow
def test_reproduce_three_models_two_epochs(shards, tmp_path):
    from kerasmlic.reporting.reproduce import reproduce

    out = str(tmp_path / "rep3")
    models = ["warp", "bce", "seq2seq_attention"]
    report = reproduce(
        shards,
        models=models,
        epochs=2,
        out=out,
        rates=None,
        overrides=SMALL_RUN,
        log=lambda line: None,
    )
    check_report(out, models, split="val")
    assert report["ordering_holds"] in (True, False) and report["split"] == "val"


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from kerasmlic.cli.demo import run_demo

    out = run_demo(workdir=str(tmp_path / "data"))
    # Well above what BCE reaches after its first epoch on the built-in data (about 0.22).
    assert out["results"]["mAP"] > 0.40
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


def test_last_epochs_spread_marks_converged_runs_hand_worked():
    from kerasmlic.reporting.runs import last_epochs_spread
    from kerasmlic.reporting.tables import seed_table

    assert last_epochs_spread({"val_mAP": [0.1, 0.70, 0.71, 0.704]}) == pytest.approx(0.01)
    assert math.isnan(last_epochs_spread({"val_mAP": [0.7, 0.71]}))

    def run(curve):
        return {
            "eval": {k: 0.5 for k in ("OP_top3", "OR_top3", "OF1_top3", "mAP", "CF1", "OF1")},
            "history": {"epoch": list(range(len(curve))), "val_mAP": curve},
            "config": {"train": {"learning_rate": 1e-3}},
            "summary": {},
        }

    # Worst seed: 0.004 (converged) for bce; 0.006 for warp (not converged).
    table = seed_table(
        {
            "bce": [run([0.2, 0.600, 0.603, 0.604]), run([0.3, 0.6, 0.6, 0.6])],
            "warp": [run([0.2, 0.500, 0.506, 0.503]), run([0.3, 0.5, 0.5, 0.5])],
        }
    )
    rows = {
        name: line for line in table.splitlines() for name in ("bce", "warp") if f"`{name}`" in line
    }
    assert "| 0.40 ✓ |" in rows["bce"] and "| 0.60 ✗ |" in rows["warp"]


def test_results_table_puts_runs_in_the_study_order_with_hand_worked_cells():
    from kerasmlic.reporting.tables import results_table

    def run(name, f1, seconds):
        metrics = {"OP_top3": 0.5, "OR_top3": 0.25, "OF1_top3": f1, "mAP": 0.4236}
        return {
            "name": name,
            "eval": {**metrics, "CF1": None, "OF1": float("nan")},
            "history": {"epoch": [0, 1, 2], "epoch_seconds": [30.0, seconds, float("nan")]},
            "summary": {},
        }

    table = results_table([run("label_query", 0.6, 60.0), run("seq2seq", 1 / 3, 90.0)])
    header, rule, first, second = table.splitlines()
    assert header.startswith("| model | P | R | F1 | mAP | CF1 | OF1 | epochs | train min")
    # seq2seq is in the study's table, label_query is not: the study's models come first.
    assert first == (
        "| CNN seq2seq (`seq2seq`) | 50.0 | 25.0 | 33.3 | 42.4 | – | – | 3 | 2.0 "
        "| 68.9 / 65.6 / 67.2 |"
    )
    assert second.startswith("| label_query (`label_query`) | 50.0 | 25.0 | 60.0 |")
    assert second.endswith("| 3 | 1.5 | – |")


def test_reproduce_reads_each_models_experiments_config(tmp_path):
    from kerasmlic.reporting import reproduce
    from kerasmlic.reporting.runs import STUDY_MODELS

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert reproduce.experiments_dir() == os.path.join(repo, "experiments")
    for name in STUDY_MODELS:
        expected = os.path.join(repo, "experiments", f"{name}.yaml")
        assert reproduce.model_config_path(name) == expected
    with open(os.path.join(repo, "experiments", "seq2seq_attention.yaml")) as f:
        on_disk = yaml.safe_load(f)
    config = reproduce.run_config("seq2seq_attention", "unused-data", str(tmp_path))
    # The yaml's choices, not the package defaults, reach the run.
    assert config["model"]["encoder"] == on_disk["model"]["encoder"]
    assert config["model"]["max_regions"] == on_disk["model"]["max_regions"]


def test_make_study_runs_the_recorded_study_size():
    """`make study` carries reproduce.STUDY_SIZE: the sizing the docs quote is the one it runs."""
    import shutil
    import subprocess

    from kerasmlic.reporting.reproduce import STUDY_SIZE

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dry = subprocess.run(
        ["make", "-n", "-B", "study"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")
    size = STUDY_SIZE
    synth = f"--train {size['train']} --val {size['val']} --test {size['test']}"
    assert f"{synth} --seed {size['synth_seed']}" in dry
    reproduce = next(line for line in dry.splitlines() if "kerasmlic reproduce" in line)
    for part in (
        f"--seeds {size['seeds']}",
        f"--epochs {size['epochs']}",
        f"--rate-selection {size['rate_selection']}",
        "--rates " + ",".join(f"{r:g}" for r in size["rates"]),
        f"data.batch_size={size['batch_size']}",
        f"train.min_learning_rate_ratio={size['min_learning_rate_ratio']:g}",
        f"--set train.precise_bn_batches={size['precise_bn_batches']}",
        f"--set train.deterministic={str(size['deterministic']).lower()}",
        f"--seed-set train.use_ema={str(size['seed_use_ema']).lower()}",
        f"--seed-set train.ema_momentum={size['seed_ema_momentum']:g}",
        f"--seed-set evaluation.every={size['seed_evaluation_every']}",
        f"--jobs {size['jobs']}",
    ):
        assert part in reproduce, part
    assert (
        size["image_size"]
        == yaml.safe_load(open(os.path.join(root, "experiments", "bce.yaml")))["data"]["image_size"]
    )
