"""The end of a training run: the best model's val evaluation and ``summary.json``.

``model.fit`` training (:mod:`~kerasmlic.training.trainer`) and the
multi-worker step driver (:mod:`~kerasmlic.training.multiworker`, on its
chief) end the same way, here: load ``best.keras``, calibrate its thresholds
when the config asks (on data the val split never sees), evaluate it on the
val split, write the evaluation, then ``summary.json`` last, so a run with a
summary is a finished one.
"""

import os
import time

from kerasmlic.data.manifest import write_json_atomic
from kerasmlic.evaluation.loading import load_model
from kerasmlic.evaluation.rundir import read_history
from kerasmlic.training.calibration import calibrate_for_config


def finish_run(
    model, config, paths, data_dir, names, evaluation, start_time, *, log=print, **summary
):
    """Evaluate the run's best model on the val split and write ``summary.json``.

    The model is loaded from ``best.keras`` outside any distribution strategy's
    scope, so it predicts without collectives.

    Args:
        model: The trained model, saved as ``best.keras`` when no validation
            pass saved one (e.g. a run with no val mAP).
        config: The run's resolved config.
        paths: Its :class:`~kerasmlic.evaluation.rundir.RunPaths`.
        data_dir: The shard folder.
        names: Class names.
        evaluation: The run's
            :class:`~kerasmlic.training.callbacks.MultiLabelEvaluation` (its
            ``best_epoch`` and ``best``).
        start_time: ``time.time()`` when this process started training.
        log: A ``print``-like function; it gets the metric table and the run dir.
        **summary: More ``summary.json`` entries (``stopped_early_at``, ``strategy``).

    Returns:
        The val split's metric dict.
    """
    from kerasmlic.evaluation.evaluate import evaluate_model, format_table, write_evaluation
    from kerasmlic.training import callbacks as cb

    val_split = config["data"]["val_split"]
    if not os.path.isfile(paths.best):
        cb.save_model_atomic(model, paths.best)
    best = load_model(paths.best)
    thresholds_from = calibrate_for_config(best, config, data_dir, log)
    if thresholds_from is not None:
        cb.save_model_atomic(best, paths.best)
    results, predictions = evaluate_model(
        best, data_dir, val_split, names, batch_size=config["evaluation"]["batch_size"]
    )
    results["thresholds_from"] = thresholds_from
    write_evaluation(results, predictions, paths.eval_json(val_split), paths.predictions(val_split))
    history = read_history(paths.history)
    write_json_atomic(
        paths.summary,
        {
            "model": config["model"]["name"],
            "run_dir": os.path.abspath(paths.root),
            "epochs": config["train"]["epochs"],
            "best_epoch": evaluation.best_epoch,
            "best_val_mAP": cb.finite_or_none(evaluation.best),
            "stopped_early_at": None,
            "train_seconds_this_process": round(time.time() - start_time, 1),
            "epochs_logged": len(history.get("epoch", [])),
            "val": {k: v for k, v in results.items() if k != "per_class"},
            "calibrated": thresholds_from is not None,
            "thresholds_from": thresholds_from,
            **summary,
        },
    )
    log(format_table(results))
    log(f"run dir: {paths.root} (best.keras from epoch {evaluation.best_epoch})")
    return results
