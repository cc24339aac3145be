"""Per-class thresholds of a trained model, fit where its config says (after training).

``train`` and the multi-worker driver both call :func:`calibrate_for_config`
on the best model before evaluating it; the thresholds are fit on data the
validation split never sees (``evaluation.calibration_split``: a held-out
part of train by default, see :mod:`kerasmlic.training.builder`).
"""

from kerasmlic.training import builder


def find_thresholds_layers(model):
    """Return the model's ``Thresholds`` layers (where calibrated thresholds go).

    Args:
        model: A kerasmlic model.

    Returns:
        A list (empty for models whose predicted set is decoded, not thresholded).
    """
    from kerasmlic.models.base import Thresholds

    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, Thresholds)
    ]


def calibrate_for_config(model, config, data_dir, log=print):
    """Calibrate a trained model's thresholds where its config says; return the source.

    Args:
        model: The trained kerasmlic model (its thresholds are set in place).
        config: Its resolved config.
        data_dir: Shard folder.
        log: A ``print``-like function.

    Returns:
        ``evaluation.calibration_split`` (``"train-holdout"`` or a split name)
        when thresholds were fit, else None (calibration off, or a model
        whose label set is decoded).
    """
    where = builder.calibration_holdout(config)
    if where is None:
        return None
    split, holdout = where
    thresholds = calibrate_model(
        model, data_dir, split, config["evaluation"]["batch_size"], log, holdout=holdout
    )
    return None if thresholds is None else config["evaluation"]["calibration_split"]


def calibrate_model(model, data_dir, split, batch_size=64, log=print, *, holdout=None):
    """Set the model's per-class thresholds to maximise F1 on a split.

    Args:
        model: A kerasmlic model.
        data_dir: Shard folder.
        split: The split to calibrate on (never the one the figures are reported on).
        batch_size: Prediction batch size.
        log: A ``print``-like function.
        holdout: ``None``, or ``(part, fraction)`` to use part of the split
            (``("heldout", f)``: the train images held out of training).

    Returns:
        The thresholds (C,), or None when the model has no ``Thresholds`` layer
        (its predicted set is decoded, e.g. a sequence model).
    """
    import numpy as np

    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.metrics.calibration import calibrate_thresholds

    layers = find_thresholds_layers(model)
    if not layers:
        log(f"calibration skipped: {model.name} has no thresholds (its label set is decoded)")
        return None
    out = predict_split(model, data_dir, split, batch_size=batch_size, holdout=holdout)
    thresholds = calibrate_thresholds(out["y_true"], out["scores"])
    for layer in layers:
        layer.thresholds.assign(thresholds.astype("float32"))
    where = f"{split!r}" if holdout is None else f"the {100 * holdout[1]:g}% held out of {split!r}"
    log(
        f"calibrated {len(thresholds)} per-class thresholds on {where} "
        f"({len(out['y_true'])} images, median {float(np.median(thresholds)):.3f})"
    )
    return thresholds
