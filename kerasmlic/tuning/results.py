"""What a search leaves behind: leaderboard, best config YAML, best run directory.

All of it goes into the project folder (``DIRECTORY/PROJECT/``) beside
keras-tuner's own files::

    leaderboard.md, leaderboard.csv   every trial: hyperparameters, val mAP
    best_config.yaml                  the best trial as a training config
                                      (``kerasmlic train best_config.yaml``)
    best/                             the best trial's model as a run directory
                                      (config.yaml, dataset.json, best.keras,
                                      best.json, eval_val.json, summary.json):
                                      ``kerasmlic export .../best --out ...``

The leaderboard is read from the trial files (``trial_*/trial.json`` and
kerasmlic's ``kerasmlic_trial.json``), so it is the same whichever process
ran the trials.
"""

import csv
import glob
import io
import json
import math
import os
import shutil
import tempfile

from kerasmlic.data.manifest import write_json_atomic
from kerasmlic.training import config as config_lib
from kerasmlic.tuning.hypermodel import OBJECTIVE
from kerasmlic.tuning.tuners import TRIAL_RECORD

LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_CSV = "leaderboard.csv"
BEST_CONFIG = "best_config.yaml"
BEST_RUN = "best"
SECOND_METRIC = "val_OF1_top3"


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_metric(trial_json, name):
    metric = ((trial_json.get("metrics") or {}).get("metrics") or {}).get(name)
    if not metric:
        return None
    observations = metric.get("observations") or []
    if not observations or not observations[-1].get("value"):
        return None
    value = float(observations[-1]["value"][-1])
    return value if math.isfinite(value) else None


def collect_trials(project_dir):
    """Read every trial of a project folder.

    Args:
        project_dir: ``DIRECTORY/PROJECT``.

    Returns:
        A list of dicts: ``trial_id``, ``status``, ``score`` (val mAP or None),
        ``best_step``, ``values`` (keras-tuner's values, ``tuner/*`` included),
        ``metrics`` (``val_mAP``, ``val_OF1_top3`` at the best epoch),
        ``tuner_id``, ``pid``, ``seconds``, ``message``; in trial order.
    """
    rows = []
    for path in sorted(glob.glob(os.path.join(project_dir, "trial_*", "trial.json"))):
        trial = _read_json(path)
        if not trial:
            continue
        record = _read_json(os.path.join(os.path.dirname(path), TRIAL_RECORD)) or {}
        score = trial.get("score")
        rows.append(
            {
                "trial_id": str(trial["trial_id"]),
                "status": trial.get("status"),
                "score": float(score) if score is not None and math.isfinite(score) else None,
                "best_step": trial.get("best_step"),
                "values": dict((trial.get("hyperparameters") or {}).get("values") or {}),
                "metrics": {k: _last_metric(trial, k) for k in (OBJECTIVE, SECOND_METRIC)},
                "tuner_id": record.get("tuner_id"),
                "pid": record.get("pid"),
                "seconds": record.get("seconds"),
                "message": trial.get("message") and trial["message"].strip().splitlines()[-1],
            }
        )
    return rows


def rank_trials(rows):
    """Order trials best first: completed ones by val mAP, then the rest by id.

    Args:
        rows: From :func:`collect_trials`.

    Returns:
        A new sorted list.
    """

    def key(row):
        done = row["status"] == "COMPLETED" and row["score"] is not None
        return (0, -row["score"], row["trial_id"]) if done else (1, 0.0, row["trial_id"])

    return sorted(rows, key=key)


def _format(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _columns(names):
    """Short column titles: the key without its section unless that is ambiguous."""
    short = [n.split(".", 1)[-1] for n in names]
    return [s if short.count(s) == 1 else n for s, n in zip(short, names, strict=True)]


def leaderboard_rows(rows, param_names, default_epochs=None):
    """Turn trials into table rows (header first).

    Args:
        rows: From :func:`collect_trials`, ranked.
        param_names: The space's hyperparameter names (column order).
        default_epochs: Epochs of trials that do not record them (non-Hyperband).

    Returns:
        ``(header, body)``: lists of strings; ``body`` rows hold raw values
        (val mAP as a fraction) for the CSV.
    """
    header = ["rank", "trial", *_columns(param_names), "epochs", "tuner", "status"]
    header += ["val_mAP", SECOND_METRIC]
    body = []
    for rank, row in enumerate(rows, 1):
        values = row["values"]
        epochs = values.get("tuner/epochs", default_epochs)
        done = row["status"] == "COMPLETED" and row["score"] is not None
        body.append(
            [
                rank if done else "",
                row["trial_id"],
                *[values.get(name) for name in param_names],
                epochs,
                row["tuner_id"],
                row["status"],
                row["metrics"][OBJECTIVE] if done else None,
                row["metrics"][SECOND_METRIC] if done else None,
            ]
        )
    return header, body


def format_leaderboard(header, body):
    """Return a markdown table; val mAP and F1@3 in percent.

    Args:
        header: Column titles.
        body: Rows from :func:`leaderboard_rows`.

    Returns:
        A string.
    """
    titles = [*header[:-2], "val mAP (%)", "val F1@3 (%)"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join("---" for _ in titles) + "|"]
    for row in body:
        cells = [_format(v) for v in row[:-2]]
        cells += ["" if v is None else f"{100 * v:.2f}" for v in row[-2:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_text_atomic(path, text):
    """Write a text file under a temporary name, then rename it into place.

    Args:
        path: Destination file (its folder must exist).
        text: The contents.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_leaderboard(project_dir, param_names, *, default_epochs=None, title=""):
    """Write ``leaderboard.md`` and ``leaderboard.csv`` and return the markdown.

    Args:
        project_dir: ``DIRECTORY/PROJECT``.
        param_names: The space's hyperparameter names.
        default_epochs: Epochs of trials that do not record them.
        title: A line put above the markdown table.

    Returns:
        ``(markdown, ranked rows)``.
    """
    ranked = rank_trials(collect_trials(project_dir))
    header, body = leaderboard_rows(ranked, param_names, default_epochs)
    table = format_leaderboard(header, body)
    markdown = (f"{title}\n\n" if title else "") + table + "\n"
    write_text_atomic(os.path.join(project_dir, LEADERBOARD_MD), markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in body])
    write_text_atomic(os.path.join(project_dir, LEADERBOARD_CSV), buffer.getvalue())
    return markdown, ranked


def write_best_config(config, path, *, project_name, trial_id, score):
    """Write the best trial's training config as a YAML ``kerasmlic train`` reads.

    Args:
        config: The trial's resolved training config.
        path: Destination file.
        project_name: For the header comment.
        trial_id: For the header comment.
        score: The trial's val mAP.
    """
    header = (
        f"# Best config of tuning project {project_name!r}: trial {trial_id}, "
        f"val mAP {100 * score:.2f}%.\n"
        f"# Train it: kerasmlic train {path}\n"
    )
    write_text_atomic(path, header + config_lib.config_to_yaml(config))


def write_best_run(model, config, run_dir, *, data_dir, manifest, trial, log=print):
    """Save the best trial's model as a finished run directory (exportable).

    The model is evaluated again on the validation split with the same code
    as ``kerasmlic evaluate``; its ``mAP`` is the trial's ``val_mAP`` (same
    weights, same deterministic eval pipeline).

    Args:
        model: The best trial's model (its best epoch's weights loaded).
        config: The trial's training config (``train.epochs`` = epochs it trained).
        run_dir: Destination folder (replaced as a whole when complete).
        data_dir: Shard folder.
        manifest: Its manifest.
        trial: The best trial's row from :func:`collect_trials`.
        log: A ``print``-like function.

    Returns:
        The evaluation results dict.
    """
    from kerasmlic.data.manifest import class_names
    from kerasmlic.evaluation.evaluate import evaluate_model, write_evaluation
    from kerasmlic.evaluation.rundir import RunPaths, dataset_reference
    from kerasmlic.training.callbacks import save_model_atomic

    parent = os.path.dirname(os.path.abspath(run_dir))
    tmp = tempfile.mkdtemp(prefix=".tmp-best-", dir=parent)
    try:
        paths = RunPaths(tmp)
        config = {**config, "run_dir": run_dir}
        config_lib.save_config(config, paths.config)
        write_json_atomic(paths.dataset, dataset_reference(data_dir, manifest))
        save_model_atomic(model, paths.best)
        # keras-tuner counts the best step from the trial's first epoch, which
        # is not epoch 0 for a Hyperband trial that continues another.
        first = int(trial["values"].get("tuner/initial_epoch", 0))
        best_epoch = first + int(trial.get("best_step") or 0) + 1
        write_json_atomic(
            paths.best_json,
            {"epoch": best_epoch, "val_mAP": trial["score"], "trial_id": trial["trial_id"]},
        )
        split = config["data"]["val_split"]
        results, predictions = evaluate_model(
            model, data_dir, split, class_names(manifest),
            batch_size=config["evaluation"]["batch_size"],
        )  # fmt: skip
        write_evaluation(results, predictions, paths.eval_json(split), paths.predictions(split))
        write_json_atomic(
            paths.summary,
            {
                "model": config["model"]["name"],
                "run_dir": os.path.abspath(run_dir),
                "epochs": config["train"]["epochs"],
                "best_epoch": best_epoch,
                "best_val_mAP": trial["score"],
                "val": {k: v for k, v in results.items() if k != "per_class"},
                "calibrated": False,
                "tuning_trial": trial["trial_id"],
            },
        )
        old = None
        if os.path.exists(run_dir):
            old = tempfile.mkdtemp(prefix=".old-best-", dir=parent)
            os.replace(run_dir, os.path.join(old, "best"))
        os.replace(tmp, run_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"best model: {run_dir} (val mAP {100 * results['mAP']:.2f}% re-evaluated)")
    return results
