"""`kerasmlic reproduce`: rate selection, seed runs, reuse, jobs and the report it writes."""

import csv
import glob
import json
import os
import time

import numpy as np
import pytest
import yaml
from helpers_training import cli_main, tiny_shards

from kerasmlic.errors import UsageError

# Every reproduce run here: small images and batches, quiet, and the `tiny` encoder
# in place of the experiments' `small` one (what is tested is the orchestration).
SMALL_RUN = ["data.image_size=32", "data.batch_size=8", "train.verbose=0", "model.encoder=tiny"]
SMALL_RUN_FLAGS = [arg for setting in SMALL_RUN for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "tiny-data"))


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
