"""``train(config) -> run_dir``: what ``kerasmlic train`` and a notebook both call.

Steps: resolve the config, check the shards, prepare (or resume) the run
directory, build the model under the distribution strategy, then fit in one
or two phases (encoder frozen for ``train.freeze_encoder_epochs``, then
fine-tuned), each with its own AdamW warm-up + cosine schedule and its own
``BackupAndRestore`` folder; ``train.early_stopping_patience`` ends the run
after that many validation passes without a val mAP gain (the best model is
kept, not restored into the last). After training: load the best model (by
val mAP), optionally calibrate per-class thresholds on data the validation
split never sees (``evaluation.calibration_split``: a held-out part of train
by default, see :mod:`kerasmlic.training.builder`), evaluate it on the
validation split, and write ``summary.json`` last.
"""

import copy
import os
import sys
import time

from kerasmlic import config as config_lib
from kerasmlic.data.manifest import class_names, load_manifest, split_info, write_json_atomic
from kerasmlic.errors import UsageError
from kerasmlic.training import builder, rundir
from kerasmlic.training.builder import sequence_settings  # noqa: F401  (public here too)
from kerasmlic.training.rundir import RunPaths

BCE_MODELS = ("bce",)
"""Models whose loss is plain BCE on the logits, so ``train.class_weighting`` applies."""


def resolve(config):
    """Return a validated deep copy of a config, a YAML path, or None (defaults).

    Args:
        config: A config dict (partial is fine: it is merged over the
            defaults), a path to a YAML file, or None.

    Returns:
        The resolved config dict.
    """
    if config is None:
        return config_lib.load_config()
    if isinstance(config, (str, os.PathLike)):
        return config_lib.load_config(os.fspath(config))
    merged = config_lib.default_config()
    config_lib.merge_config(merged, copy.deepcopy(dict(config)))
    return config_lib.validate_config(merged)


def default_run_dir(config):
    """Return ``runs/<model name>``: a fixed name, so running the same command resumes."""
    return os.path.join("runs", config["model"]["name"])


def fit_verbosity(setting):
    """Map ``train.verbose`` to ``model.fit``'s ``verbose`` (``auto``: bar on a terminal).

    Args:
        setting: ``"auto"``, 0, 1 or 2.

    Returns:
        0, 1 or 2.
    """
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return setting


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


def _have_tensorboard():
    # tf.summary needs the tensorboard package, which TensorFlow 2.21 no longer pulls in.
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def fit_metrics(num_classes):
    """Return the streaming metrics every training loop reports per epoch.

    Args:
        num_classes: Classes of the shards.

    Returns:
        A list of fresh Keras metrics.
    """
    from kerasmlic.metrics.streaming import default_fit_metrics

    return default_fit_metrics(num_classes)


def check_options(config, manifest, data_dir):
    """Check the options every training loop shares, before anything is built.

    Args:
        config: A resolved config.
        manifest: The shard folder's manifest.
        data_dir: The shard folder.

    Raises:
        UsageError: Class weighting on a model it does not apply to, or a
            calibration split that is the reported one, the training split or
            missing.
    """
    name = config["model"]["name"]
    if config["train"]["class_weighting"] != "none" and name not in BCE_MODELS:
        raise UsageError(
            f"train.class_weighting applies to the {', '.join(BCE_MODELS)} model only, not {name!r}"
        )
    source = builder.calibration_source(config)
    if source is not None and source != builder.TRAIN_HOLDOUT:
        split_info(manifest, source, data_dir)


def class_weighted_loss(config, train_info):
    """Return the class-weighted BCE of ``train.class_weighting``, or None (the model's loss).

    Args:
        config: A resolved config.
        train_info: ``split_info`` of the train split (label counts).

    Returns:
        A Keras loss or None.
    """
    weighting = config["train"]["class_weighting"]
    if weighting == "none":
        return None
    from kerasmlic.training.losses import WeightedBinaryCrossentropy, class_weights

    pos, cls = class_weights(
        train_info["label_counts"],
        train_info["num_examples"],
        weighting,
        max_pos_weight=config["train"]["max_pos_weight"],
        beta=config["train"]["class_balanced_beta"],
    )
    return WeightedBinaryCrossentropy(pos, cls)


def check_data(config):
    """Check a config's shard folder and splits before any training.

    Args:
        config: A resolved config with ``data.dir`` set.

    Returns:
        ``(data_dir, manifest, train_info)``.

    Raises:
        UsageError: No folder, a missing split, or fewer train images than a batch.
    """
    data_dir = config["data"]["dir"]
    if not data_dir:
        raise UsageError("no data folder: pass --data DIR (a folder made by `kerasmlic build`)")
    manifest = load_manifest(data_dir)
    train_info = split_info(manifest, config["data"]["train_split"], data_dir)
    split_info(manifest, config["data"]["val_split"], data_dir)
    batch = config["data"]["batch_size"]
    if config["train"]["steps_per_epoch"] is None and train_info["num_examples"] < batch:
        raise UsageError(
            f"split {config['data']['train_split']!r} has {train_info['num_examples']} images, "
            f"fewer than one batch ({batch}); lower --batch-size"
        )
    return data_dir, manifest, train_info


def train(config, *, log=print):
    """Train a model from a config; return the run directory.

    Running the same config again after an interruption (even SIGKILL)
    continues from the last completed epoch.

    Args:
        config: A config dict (merged over ``config.DEFAULTS``), a YAML path,
            or None for the defaults (``data.dir`` must then come from somewhere).
        log: A ``print``-like function for progress lines.

    Returns:
        The run directory (str).

    Raises:
        UsageError: Bad config, missing data or split, a run dir that cannot be
            resumed, an image size the backbone rejects, a diverging loss.
    """
    config = resolve(config)
    name = config["model"]["name"]
    if config["train"]["strategy"] == "multiworker":
        # Keras 3 model.fit fails under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585): a step driver over strategy.run instead.
        from kerasmlic.training.multiworker import train_multiworker

        return train_multiworker(config, log=log)
    data_dir, manifest, train_info = check_data(config)
    check_options(config, manifest, data_dir)
    config["run_dir"] = config["run_dir"] or default_run_dir(config)

    import keras

    previous_policy = keras.mixed_precision.global_policy()
    try:
        if config["train"]["mixed_precision"]:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with builder.determinism(config):
            # The model is built before the run dir is touched, so a config the
            # model rejects (e.g. an image size) leaves nothing half-made behind.
            strategy, model = _build(config, manifest)
            resuming = rundir.prepare_run_dir(config["run_dir"], config, data_dir, manifest)
            log(
                f"{'resuming' if resuming else 'training'} {name} in {config['run_dir']} "
                f"on {data_dir}"
            )
            return _train(config, strategy, model, data_dir, manifest, train_info, log)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _build(config, manifest):
    from kerasmlic.models.registry import build_model
    from kerasmlic.training.strategy import make_strategy

    strategy = make_strategy(config["train"]["strategy"])
    with strategy.scope():
        model = build_model(
            config["model"]["name"],
            num_classes=len(manifest["classes"]),
            image_size=config["data"]["image_size"],
            **config_lib.model_settings(config),
        )
    return strategy, model


def _train(config, strategy, model, data_dir, manifest, train_info, log):
    import keras

    from kerasmlic.data.pipeline import read_split_labels
    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.models.encoders import set_encoder_trainable
    from kerasmlic.training import callbacks as cb
    from kerasmlic.training.optim import make_optimizer

    start_time = time.time()
    data_cfg, train_cfg, eval_cfg = config["data"], config["train"], config["evaluation"]
    paths = RunPaths(config["run_dir"])
    names = class_names(manifest)
    options = config_lib.model_settings(config)
    train_ds = builder.train_dataset(config, model, data_dir)
    num_train = builder.train_examples(config, data_dir, train_info)
    steps_per_epoch = builder.steps_per_epoch(config, num_train)
    if builder.train_holdout(config) is not None:
        log(
            f"training on {num_train} of {train_info['num_examples']} train images; the rest "
            f"({100 * eval_cfg['holdout_fraction']:g}%) is held out to calibrate thresholds"
        )
    val_labels = read_split_labels(data_dir, data_cfg["val_split"])

    def predict_val(m):
        out = predict_split(
            m,
            data_dir,
            data_cfg["val_split"],
            batch_size=eval_cfg["batch_size"],
            labels=val_labels,
        )
        return out["y_true"], out["scores"], out["predicted"]

    evaluation = cb.MultiLabelEvaluation(
        predict_val,
        names,
        every=eval_cfg["every"],
        best_path=paths.best,
        log=log,
        final_epoch=train_cfg["epochs"],
    )
    loss = class_weighted_loss(config, train_info)
    state = rundir.read_state(paths.root)
    phases = builder.phase_plan(train_cfg, options)
    verbose = fit_verbosity(train_cfg["verbose"])
    for index, (first, last, trainable) in enumerate(phases):
        if index < state["phases_done"] or state.get("stopped_early_at"):
            continue
        if index and index == state["phases_done"]:
            model.load_weights(paths.phase_weights(index - 1))
        if trainable is not None:
            set_encoder_trainable(model, trainable)
            log(
                f"phase {index + 1}: epochs {first + 1}-{last}, encoder "
                f"{'fine-tuned' if trainable else 'frozen'}"
            )
        phase_cfg = dict(train_cfg)
        if trainable and train_cfg["fine_tune_learning_rate"] is not None:
            phase_cfg["learning_rate"] = train_cfg["fine_tune_learning_rate"]
        with strategy.scope():
            model.compile(
                optimizer=make_optimizer(phase_cfg, steps_per_epoch, last - first),
                loss=loss,
                metrics=fit_metrics(len(names)),
                jit_compile=train_cfg["jit_compile"],
            )
        backup = paths.backup_dir(index)
        restart = rundir.backup_epoch(backup)
        rundir.trim_history(paths.history, first if restart is None else restart)
        if restart is not None:
            log(f"restoring the backup of epoch {restart} from {backup}")
        callbacks = [
            cb.StopOnNaN(),
            cb.AverageReplicaStatistics(),
            cb.LearningRateLogger(),
            evaluation,
        ]
        stopper = None
        if train_cfg["early_stopping_patience"]:
            stopper = cb.EarlyStopOnValMAP(
                evaluation, train_cfg["early_stopping_patience"], paths.history, log=log
            )
            callbacks.append(stopper)
        callbacks += [
            cb.EpochTimer(),
            # The history row goes before the backup: a kill in between leaves a
            # row that trim_history drops on resume, never a missing one.
            keras.callbacks.CSVLogger(paths.history, append=True),
            cb.LastWeights(os.path.join(paths.checkpoints, "last.weights.h5")),
            keras.callbacks.BackupAndRestore(backup, double_checkpoint=True),
        ]
        if _have_tensorboard():
            callbacks.append(
                keras.callbacks.TensorBoard(paths.logs, write_graph=False, profile_batch=0)
            )
        elif index == 0:
            log("TensorBoard logs skipped: the tensorboard package is not installed")
        model._initial_epoch = None  # a restored epoch must not leak into the next phase
        model.fit(
            train_ds,
            epochs=last,
            initial_epoch=first,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles
        )
        cb.save_weights_atomic(model, paths.phase_weights(index))
        state = {"phases_done": index + 1}
        if stopper is not None and stopper.stopped_epoch is not None:
            # Later phases are skipped, on this call and on any resumed one.
            state["stopped_early_at"] = stopper.stopped_epoch
        rundir.write_state(paths.root, state)

    if not os.path.isfile(paths.best):
        cb.save_model_atomic(model, paths.best)
    best = load_model(paths.best)
    thresholds_from = calibrate_for_config(best, config, data_dir, log)
    if thresholds_from is not None:
        cb.save_model_atomic(best, paths.best)
    from kerasmlic.evaluation.evaluate import evaluate_model, write_evaluation

    results, predictions = evaluate_model(
        best, data_dir, data_cfg["val_split"], names, batch_size=eval_cfg["batch_size"]
    )
    results["thresholds_from"] = thresholds_from
    write_evaluation(
        results,
        predictions,
        paths.eval_json(data_cfg["val_split"]),
        paths.predictions(data_cfg["val_split"]),
    )
    history = rundir.read_history(paths.history)
    summary = {
        "model": config["model"]["name"],
        "run_dir": os.path.abspath(paths.root),
        "epochs": train_cfg["epochs"],
        "best_epoch": evaluation.best_epoch,
        "best_val_mAP": cb.finite_or_none(evaluation.best),
        "stopped_early_at": state.get("stopped_early_at"),
        "train_seconds_this_process": round(time.time() - start_time, 1),
        "epochs_logged": len(history.get("epoch", [])),
        "val": {k: v for k, v in results.items() if k != "per_class"},
        "calibrated": thresholds_from is not None,
        "thresholds_from": thresholds_from,
    }
    write_json_atomic(paths.summary, summary)
    from kerasmlic.evaluation.evaluate import format_table

    log(format_table(results))
    log(f"run dir: {paths.root} (best.keras from epoch {evaluation.best_epoch})")
    return paths.root


def load_model(path):
    """Load a saved kerasmlic model (custom objects registered by the registry import).

    A model saved by an earlier kerasmlic (format version 1: it took images the
    pipeline had normalised) is rebuilt with today's architecture, whose
    normalisation layer has no weights, so it scores 0-255 pixels as it scored
    their normalised form; ``model.normalization`` then tells the pipeline to
    give it pixels (see ``kerasmlic.models.base``).

    Args:
        path: A ``.keras`` file.

    Returns:
        The model, not compiled.

    Raises:
        UsageError: A ``format_version`` this kerasmlic cannot read (a newer one).
    """
    import keras

    from kerasmlic.models.registry import model_names
    from kerasmlic.training import losses  # noqa: F401  (registers the weighted loss)

    model_names()  # imports every model module, registering the classes
    return keras.saving.load_model(path, compile=False)


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
