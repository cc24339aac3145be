"""How ``kerasmlic reproduce`` picks each model's learning rate.

Two ways, both recorded in ``OUT/<name>/tuning.json``:

- **Short trials** (``--rate-selection trials``, the default): a keras-tuner
  grid over the rates (crossed with ``train.seed`` for ``--trial-seeds``),
  each trial trained for ``--tune-epochs`` and scored by its best val mAP
  (:func:`search_learning_rate`, :func:`rate_scores`). A record of the same
  search (its ``fingerprint``) is reused (:func:`reusable_tuning_record`).
- **Full-length runs** (``--rate-selection full``): seed 0 trained for the
  whole run at each rate with the seed runs' settings (:func:`selection_task`);
  the best val mAP wins and that run is seed 0
  (:func:`full_length_selection`). Short trials favour the rate that learns
  fastest, not the one that ends best (``experiments/study-runs.md``).
"""

import copy
import json
import math
import os
import time

from kerasmlic.errors import UsageError
from kerasmlic.training.rundir import config_fingerprint

DEFAULT_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
"""The learning rates every model's grid search tries (the same 4 for all)."""

TUNING_RECORD = "tuning.json"

RATE_SELECTIONS = ("trials", "full")
"""How ``reproduce`` picks each model's rate: short keras-tuner trials, or full-length runs."""


def _search_config(config, rates, epochs, trial_seeds=1):
    """The config of a model's learning-rate search (trial seeds 0..trial_seeds-1)."""
    base = copy.deepcopy(config)
    base["run_dir"] = None
    space = {"train.learning_rate": {"choice": [float(r) for r in rates]}}
    if trial_seeds > 1:
        space["train.seed"] = {"choice": list(range(trial_seeds))}
    base["tune"] = {
        "tuner": "grid",
        "epochs": epochs,
        "seed": 0,
        "max_consecutive_failed_trials": len(rates) * trial_seeds,
        "space": space,
    }
    base["train"]["seed"] = 0
    return base


def rate_scores(trials):
    """Score each rate of a search by the mean val mAP of its trials (one per trial seed).

    Args:
        trials: keras-tuner trials as :func:`kerasmlic.tuning.tune` lists them
            (``values`` holds ``train.learning_rate``, ``status``, ``score``).

    Returns:
        ``{rate: mean score}``, None for a rate with a failed trial (a
        diverging seed disqualifies the rate).

    Example:
        >>> rate_scores([
        ...     {"values": {"train.learning_rate": 0.001}, "status": "COMPLETED", "score": 0.3},
        ...     {"values": {"train.learning_rate": 0.001}, "status": "COMPLETED", "score": 0.4},
        ... ])
        {0.001: 0.35}
    """
    by_rate = {}
    for row in trials:
        rate = row["values"].get("train.learning_rate")
        if rate is not None:
            ok = row["status"] == "COMPLETED" and row["score"] is not None
            by_rate.setdefault(float(rate), []).append(row["score"] if ok else None)
    return {
        rate: None if None in scores else sum(scores) / len(scores)
        for rate, scores in by_rate.items()
    }


def reusable_tuning_record(config, rates, epochs, out, *, trial_seeds=1, log=print):
    """Return ``out/<name>/tuning.json`` if this same search made it, else None.

    Same search: the same rates, epochs, trial seeds, config and shards (the
    record's ``fingerprint``). A record of another search is left for
    :func:`search_learning_rate` to replace.

    Args:
        config: The model's resolved config.
        rates: Learning rates of the search.
        epochs: Epochs per trial.
        out: The study's output folder.
        trial_seeds: Trials per rate.
        log: A ``print``-like function (told what was reused or why not).

    Returns:
        The record or None.
    """
    name = config["model"]["name"]
    path = os.path.join(out, name, TUNING_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    base = _search_config(config, rates, epochs, trial_seeds)
    if record.get("fingerprint") != config_fingerprint(base, config["data"]["dir"]):
        log(f"{name}: {path} is of another config or of rebuilt shards; searching again")
        return None
    log(f"{name}: learning rate {record['chosen']:g} from {path}, reused")
    return record


def search_learning_rate(config, rates, epochs, out, *, trial_seeds=1, log=print):
    """Pick a model's learning rate with a keras-tuner grid search on val mAP.

    Always searches, and writes (or replaces) ``out/<name>/tuning.json``;
    :func:`reusable_tuning_record` says whether an earlier search can stand in.
    With ``trial_seeds`` > 1 the grid crosses the rates with ``train.seed``
    0..trial_seeds-1 and a rate scores the mean of its trials
    (:func:`rate_scores`): one short trial per rate picks on noise where the
    rates' margins are small.

    Args:
        config: The model's resolved config (its other settings are kept).
        rates: Learning rates to try.
        epochs: Epochs per trial.
        out: The study's output folder.
        trial_seeds: Trials per rate, one per seed.
        log: A ``print``-like function.

    Returns:
        The record: ``rates``, ``epochs``, ``trial_seeds``, ``val_mAP`` (rate
        text → the mean over its trials of each trial's best val mAP, None
        when a trial failed), ``chosen`` and ``seconds`` (the search's wall
        time; keras-tuner's trials keep none).
    """
    import keras

    from kerasmlic.data.manifest import write_json_atomic
    from kerasmlic.tuning import tune

    name = config["model"]["name"]
    path = os.path.join(out, name, TUNING_RECORD)
    base = _search_config(config, rates, epochs, trial_seeds)
    fingerprint = config_fingerprint(base, config["data"]["dir"])
    search_start = time.time()
    result = tune(
        base,
        project_name=name,
        directory=os.path.join(out, "tune"),
        overwrite=True,
        log=log,
    )
    seconds = time.time() - search_start
    keras.backend.clear_session()
    scores = rate_scores(result["trials"])
    scored = {rate: value for rate, value in scores.items() if value is not None}
    if not scored:
        raise UsageError(f"{name}: every trial of the learning-rate search failed")
    chosen = max(scored, key=scored.get)
    record = {
        "rates": [float(r) for r in rates],
        "epochs": epochs,
        "trial_seeds": trial_seeds,
        "val_mAP": {repr(rate): value for rate, value in scores.items()},
        "chosen": chosen,
        "seconds": round(seconds, 1),
        "fingerprint": fingerprint,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, record)
    log(f"{name}: learning rate {chosen:g} (val mAP {100 * scored[chosen]:.1f})")
    return record


def tune_task(config, rates, epochs, out, trial_seeds, log=print):
    """One model's short-trial search, run as a worker task by ``reproduce``.

    Args:
        config: The model's resolved config.
        rates: Learning rates to try.
        epochs: Epochs per trial.
        out: The study's output folder.
        trial_seeds: Trials per rate.
        log: A ``print``-like function.

    Returns:
        ``(model name, record)`` (:func:`search_learning_rate`).
    """
    record = search_learning_rate(config, rates, epochs, out, trial_seeds=trial_seeds, log=log)
    return config["model"]["name"], record


def selection_task(run, log=print):
    """Train one rate's full-length seed-0 run unless it finished (a worker task).

    Args:
        run: The run's resolved config (``train.learning_rate`` is the rate
            tried, ``run_dir`` its ``OUT/<name>/lr-<rate>/seed-0``).
        log: A ``print``-like function.

    Returns:
        ``(model name, rate, best val mAP)``; the score is None when the loss
        diverged, which disqualifies the rate rather than ending the study.
    """
    import keras

    from kerasmlic.evaluation.rundir import is_finished
    from kerasmlic.training import train
    from kerasmlic.training.callbacks import TrainingDiverged

    name, rate = run["model"]["name"], run["train"]["learning_rate"]
    if not is_finished(run["run_dir"]):
        log(f"{name} at rate {rate:g}: training seed 0 into {run['run_dir']}")
        try:
            train(run, log=log)
        except TrainingDiverged as error:
            log(f"{name} at rate {rate:g}: {error}")
            return name, rate, None
        finally:
            keras.backend.clear_session()
    return name, rate, finished_run_score(run["run_dir"])


def finished_run_score(run_dir):
    """The best val mAP a finished run recorded in its ``summary.json`` (None if not finite).

    Args:
        run_dir: A finished run directory.

    Returns:
        A float or None.
    """
    from kerasmlic.evaluation.rundir import RunPaths

    with open(RunPaths(run_dir).summary) as f:
        return json.load(f)["best_val_mAP"]


def full_length_selection(name, rates, scores, run_dirs, out):
    """Record a rate chosen by full-length seed-0 runs in ``out/<name>/tuning.json``.

    Args:
        name: A registry name.
        rates: The rates tried, in order.
        scores: ``{rate: best val mAP}`` of each rate's seed-0 run, None for
            a run that diverged.
        run_dirs: ``{rate: run dir}``.
        out: The study's output folder.

    Returns:
        The record: ``selection`` ("full"), ``rates``, ``epochs`` (the runs'),
        ``val_mAP`` (rate text → score), ``chosen`` (the highest score; the
        first rate on a tie), ``seconds`` (the training time of the runs at
        the rates not chosen: the selection's cost beyond seed 0) and
        ``run_dirs``.

    Raises:
        UsageError: Every rate's run diverged.
    """
    from kerasmlic.data.manifest import write_json_atomic
    from kerasmlic.evaluation.rundir import RunPaths, read_history

    scored = {rate: scores[rate] for rate in rates if scores[rate] is not None}
    if not scored:
        raise UsageError(f"{name}: the seed-0 run diverged at every rate of --rates")
    chosen = max(scored, key=scored.get)
    histories = {rate: read_history(RunPaths(run_dirs[rate]).history) for rate in rates}
    record = {
        "selection": "full",
        "rates": [float(r) for r in rates],
        "epochs": max(len(h.get("epoch", [])) for h in histories.values()),
        "val_mAP": {repr(float(rate)): scores[rate] for rate in rates},
        "chosen": float(chosen),
        "seconds": round(
            sum(
                s
                for r in rates
                if r != chosen
                for s in histories[r].get("epoch_seconds", [])
                if math.isfinite(s)  # a row cut short reads as NaN
            ),
            1,
        ),
        "run_dirs": {repr(float(rate)): run_dirs[rate] for rate in rates},
    }
    write_json_atomic(os.path.join(out, name, TUNING_RECORD), record)
    return record
