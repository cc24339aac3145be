"""Evaluate a trained run on a split: the full metric set, a table, the JSON."""

import os
import tempfile

import numpy as np

from kerasmlic.data.manifest import class_names, load_manifest, split_info, write_json_atomic
from kerasmlic.errors import UsageError
from kerasmlic.evaluation.predict import predict_split


def format_table(results):
    """Return the readable metric table of an evaluation dict.

    Args:
        results: A dict from ``evaluate_predictions``.

    Returns:
        A string.
    """
    from kerasmlic.metrics.report import format_metrics_table

    return format_metrics_table(results)


def evaluate_model(model, data_dir, split, names, *, batch_size=64):
    """Predict a split and compute docs/design.md's metrics.

    Args:
        model: A kerasmlic model.
        data_dir: Shard folder.
        split: Split name.
        names: Class names (for ``per_class``).
        batch_size: Prediction batch size.

    Returns:
        ``(results, predictions)``: the metric dict and :func:`predict_split`'s arrays.
    """
    from kerasmlic.metrics import evaluate_predictions

    predictions = predict_split(model, data_dir, split, batch_size=batch_size)
    results = evaluate_predictions(
        predictions["y_true"],
        predictions["scores"],
        predictions["predicted"],
        class_names=names,
    )
    return results, predictions


def write_evaluation(results, predictions, json_path, npz_path=None):
    """Write the metric JSON and, optionally, the prediction arrays (both atomically).

    Args:
        results: The metric dict.
        predictions: :func:`predict_split`'s arrays.
        json_path: Destination of the JSON.
        npz_path: Destination of ``scores``/``predicted``/``y_true``/``image_ids``, or None.
    """
    write_json_atomic(json_path, results)
    if npz_path is None:
        return
    folder = os.path.dirname(os.path.abspath(npz_path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        np.savez_compressed(
            tmp,
            scores=predictions["scores"],
            predicted=predictions["predicted"],
            y_true=predictions["y_true"],
            image_ids=predictions["image_ids"],
        )
        os.replace(tmp, npz_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def thresholds_source(run_dir):
    """Return where a run fit its thresholds (``summary.json``), or None.

    Args:
        run_dir: A run directory.

    Returns:
        ``"train-holdout"``, a split name, or None (not calibrated, or an
        unfinished run).
    """
    import json

    from kerasmlic.evaluation.rundir import RunPaths

    path = RunPaths(run_dir).summary
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary.get("thresholds_from")


def evaluate_run(run_dir, data_dir=None, split="val", json_path=None, *, batch_size=64, log=print):
    """Evaluate a run's best model; print the table and write the JSON.

    Args:
        run_dir: A run directory made by ``train``.
        data_dir: Shard folder (default: the one the run trained on).
        split: Split to evaluate.
        json_path: Where to write the JSON (default ``RUN_DIR/eval_<split>.json``).
        batch_size: Prediction batch size.
        log: A ``print``-like function (None: silent).

    Returns:
        The metric dict (docs/design.md keys), plus ``thresholds_from``: where the
        run fit its thresholds (``train-holdout`` or a split name), or None.

    Raises:
        UsageError: Missing run dir, model or data folder; a missing split;
            shards whose class list differs from the model's.
    """
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.evaluation.rundir import RunPaths, check_same_classes, read_dataset_reference

    if not os.path.isdir(run_dir):
        raise UsageError(f"run dir {run_dir!r} does not exist")
    paths = RunPaths(run_dir)
    if not os.path.isfile(paths.best):
        raise UsageError(f"no best.keras in {run_dir!r}: is it a finished `kerasmlic train` run?")
    reference = read_dataset_reference(run_dir)
    data_dir = data_dir or reference["path"]
    manifest = load_manifest(data_dir)
    split_info(manifest, split, data_dir)
    check_same_classes(reference, manifest, data_dir)
    if log is not None and os.path.abspath(data_dir) == reference.get("path"):
        from kerasmlic.data.manifest import file_sha256, manifest_path

        if file_sha256(manifest_path(data_dir)) != reference.get("sha256"):
            log(f"note: {data_dir} was rebuilt since training (dataset.json sha256 differs)")
    thresholds_from = thresholds_source(run_dir)
    if log is not None and thresholds_from == split:
        log(f"note: the thresholds were fit on {split!r}: its CF1/OF1/EF1 are optimistic")
    model = load_model(paths.best)
    results, predictions = evaluate_model(
        model, data_dir, split, class_names(manifest), batch_size=batch_size
    )
    results["thresholds_from"] = thresholds_from
    json_path = json_path or paths.eval_json(split)
    default_place = os.path.abspath(json_path) == os.path.abspath(paths.eval_json(split))
    write_evaluation(
        results, predictions, json_path, paths.predictions(split) if default_place else None
    )
    if log is not None:
        log(f"{run_dir}: {split} split of {data_dir}")
        log(format_table(results))
        log(f"wrote {json_path}")
    return results
