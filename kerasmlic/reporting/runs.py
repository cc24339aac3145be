"""Finished runs as the report reads them, and the study's facts about them.

:func:`load_run` gathers what a run directory holds (config, evaluation,
history, predictions); the rest answers questions about loaded runs: which
models decode label sequences, whether a run converged by the study's rule,
the study's model order, and which sequence model did best.
"""

import json
import math
import os

import numpy as np

from kerasmlic.errors import UsageError

STUDY_MODELS = (
    "warp",
    "softmax",
    "bce",
    "rnn_hidden",
    "joint_embedding",
    "rnn_input",
    "seq2seq_attention",
    "seq2seq",
)
"""The study's eight models, in the order of its table."""

STUDY_TABLE = {
    "warp": ("WARP", 59.8, 61.4, 60.7),
    "softmax": ("Softmax", 60.2, 62.1, 61.1),
    "bce": ("Binary cross entropy", 61.7, 65.0, 63.3),
    "rnn_hidden": ("CNN initialize – hidden state", 64.0, 64.1, 64.1),
    "joint_embedding": ("Image/label joint embedding", 66.6, 65.3, 65.9),
    "rnn_input": ("CNN initialize – input", 67.2, 66.1, 66.6),
    "seq2seq_attention": ("CNN seq2seq attention", 67.7, 65.6, 66.6),
    "seq2seq": ("CNN seq2seq", 68.9, 65.6, 67.2),
}
"""Registry name → (study's row label, P, R, F1) on COCO (top-3 overall)."""


def is_sequence_model(name):
    """Return True for models that decode a label sequence (the study's RNN family).

    Args:
        name: A registry name.

    Returns:
        A bool.
    """
    from kerasmlic.models.registry import get_model_class

    return bool(get_model_class(name).uses_sequences)


def load_run(run_dir, split="val"):
    """Load what the report needs from a finished run directory.

    Args:
        run_dir: A run directory.
        split: The evaluated split.

    Returns:
        A dict: ``name``, ``run_dir``, ``config`` (dict), ``eval``,
        ``summary``, ``history`` (columns), ``predictions`` (arrays or None).

    Raises:
        UsageError: The run has no evaluation of ``split``.
    """
    import yaml

    from kerasmlic.evaluation.rundir import RunPaths, read_history

    paths = RunPaths(run_dir)
    eval_path = paths.eval_json(split)
    if not os.path.isfile(eval_path):
        raise UsageError(f"{run_dir!r} has no {os.path.basename(eval_path)}: unfinished run?")
    with open(eval_path) as f:
        results = json.load(f)
    config = {}
    if os.path.isfile(paths.config):
        with open(paths.config) as f:
            config = yaml.safe_load(f) or {}
    summary = {}
    if os.path.isfile(paths.summary):
        with open(paths.summary) as f:
            summary = json.load(f)
    predictions = None
    if os.path.isfile(paths.predictions(split)):
        with np.load(paths.predictions(split)) as npz:
            predictions = {k: npz[k] for k in npz.files}
    history = read_history(paths.history)
    name = (config.get("model") or {}).get("name") or os.path.basename(os.path.normpath(run_dir))
    return {
        "name": name,
        "run_dir": run_dir,
        "config": config,
        "eval": results,
        "summary": summary,
        "history": history,
        "predictions": predictions,
    }


def train_minutes(run):
    """Return a loaded run's training time in minutes.

    Args:
        run: A loaded run (:func:`load_run`).

    Returns:
        The sum of its recorded epoch times (which survive resumed runs), or
        this process's training time when the history has none; NaN without either.
    """
    seconds = run["history"].get("epoch_seconds")
    if seconds:
        return sum(s for s in seconds if math.isfinite(s)) / 60.0
    return run["summary"].get("train_seconds_this_process", float("nan")) / 60.0


CONVERGED_SPREAD = 0.005
"""A run has converged when its last 3 val mAPs lie within this (0.5 point)."""

CONVERGED_EPOCHS = 3
"""How many final val mAPs the convergence rule compares."""


def last_epochs_spread(history, last=CONVERGED_EPOCHS):
    """Spread (max - min) of the last ``last`` val mAPs of a run's history.

    The study's convergence criterion: no best epoch is restored, so a run
    whose final epochs still move is not converged, whatever its best epoch.

    Args:
        history: A run's history columns (``val_mAP`` per evaluated epoch).
        last: How many final evaluations to compare.

    Returns:
        The spread in mAP units (0-1), or NaN with fewer than ``last`` evaluations.

    Example:
        >>> round(last_epochs_spread({"val_mAP": [0.5, 0.70, 0.71, 0.704]}), 3)
        0.01
    """
    values = [float(v) for v in history.get("val_mAP", []) if math.isfinite(float(v))]
    if len(values) < last:
        return float("nan")
    tail = values[-last:]
    return max(tail) - min(tail)


def study_order(names):
    """Return model names in the order of the study's table; others after, by name.

    Args:
        names: Registry names (any iterable; a dict gives its keys).

    Returns:
        A sorted list.

    Example:
        >>> study_order(["label_query", "seq2seq", "warp"])
        ['warp', 'seq2seq', 'label_query']
    """
    order = {name: i for i, name in enumerate(STUDY_MODELS)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def best_sequence_run(runs):
    """Return the sequence model with the highest F1@3 (ties: mAP), or None.

    Args:
        runs: Loaded runs.

    Returns:
        A loaded run or None.
    """
    candidates = [r for r in runs if is_sequence_model(r["name"])]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["eval"]["OF1_top3"], r["eval"]["mAP"] or 0.0))


def seed_mean_runs(groups, summary):
    """Return one run per model whose evaluation holds its seeds' means.

    The multi-seed report checks the ordering, picks the best sequence model
    and measures its per-class AP gain over BCE on these, so none of them rests
    on one seed's draw: each metric is its seed mean from ``summary``, and each
    class's AP is the mean of its APs over the seeds (None where a seed has
    none: a class with no positives in the split has none in any seed).

    Args:
        groups: ``{model name: [loaded runs, one per seed]}``, in report order.
        summary: ``{model name: {metric key: (mean, std, n)}}``, as
            :func:`seed_summary` gives it.

    Returns:
        A list of ``{"name": ..., "eval": {metric key: mean, "per_class": rows}}``.

    Example:
        >>> best_sequence_run(seed_mean_runs(loaded, seed_summary(loaded)))["name"]
        'seq2seq_attention'
    """
    means = []
    for name, runs in groups.items():
        per_class = []
        for rows in zip(*(r["eval"]["per_class"] for r in runs), strict=True):
            aps = [row["AP"] for row in rows]
            per_class.append({"AP": None if None in aps else sum(aps) / len(aps)})
        evaluation = {key: stats[0] for key, stats in summary[name].items()}
        means.append({"name": name, "eval": {**evaluation, "per_class": per_class}})
    return means
