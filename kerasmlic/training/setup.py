"""From a config to the objects a training loop runs: model, optimiser, data, callbacks.

:mod:`kerasmlic.training.builder` checks a config and derives its settings
(splits, holdout, steps, phases); this module makes the objects from them,
once, for every caller: ``train`` (``model.fit``,
:mod:`kerasmlic.training.trainer`), the multi-worker step driver
(:mod:`kerasmlic.training.multiworker`), the tuner's trials
(:mod:`kerasmlic.tuning.hypermodel`) and the notebook API
(:mod:`kerasmlic.api`):

- :func:`build_model`: the registry's model with the config's options;
- :func:`prepare_training`: a :class:`TrainingSetup` (class names, training
  stream, steps per epoch, loss);
- :func:`compile_model` (with :func:`build_optimizer`): AdamW with its
  warm-up + cosine schedule (a phase's own), compiled with the loss, metrics
  and XLA setting;
- :func:`validation_callback` and :func:`fit_callbacks` /
  :func:`run_callbacks`: the validation pass and the callback list;
- :func:`precision_policy`: ``train.mixed_precision`` for the length of a run;
- :func:`model_summary`: the model's layer table as text.
"""

import contextlib
import io
import os
from dataclasses import dataclass

from kerasmlic.data.manifest import class_names as manifest_class_names
from kerasmlic.training import builder
from kerasmlic.training import config as config_lib


@dataclass
class TrainingSetup:
    """The objects a training loop needs besides its model, made from one config.

    Args:
        config: The resolved config.
        data_dir: Shard folder.
        manifest: The shard folder's manifest.
        train_info: ``split_info`` of the train split.
        class_names: Class names in class-index order.
        num_train: Training images the stream reads (the holdout excluded).
        steps_per_epoch: Optimiser steps per epoch.
        loss: The class-weighted loss, or None (the model's own).
        train_ds: The training stream (:func:`kerasmlic.training.builder.train_dataset`).
        val_ds: The validation split in eval mode with the model's targets,
            when asked for (a notebook's ``model.evaluate``); the loops
            predict the split through :func:`validation_callback` instead.
    """

    config: dict
    data_dir: str
    manifest: dict
    train_info: dict
    class_names: list
    num_train: int
    steps_per_epoch: int
    loss: object
    train_ds: object
    val_ds: object = None


@contextlib.contextmanager
def _scope(strategy):
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        yield


def build_model(config, num_classes, *, strategy=None):
    """Build the model a config names, with its options, from the registry.

    Seeding is the caller's (:func:`kerasmlic.training.builder.determinism`),
    so a loop's random state is set once, before anything draws from it.

    Args:
        config: A resolved config.
        num_classes: Classes of the shards.
        strategy: Optional ``tf.distribute`` strategy to build the variables under.

    Returns:
        An uncompiled kerasmlic model.

    Raises:
        UsageError: Unknown model or option, or an image size the backbone rejects.
    """
    from kerasmlic.models.encoders import set_batchnorm_momentum
    from kerasmlic.models.registry import build_model as registry_build_model

    with _scope(strategy):
        model = registry_build_model(
            config["model"]["name"],
            num_classes=num_classes,
            image_size=config["data"]["image_size"],
            **config_lib.model_settings(config),
        )
    if config["train"]["bn_momentum"] is not None:
        set_batchnorm_momentum(model, config["train"]["bn_momentum"])
    return model


def val_dataset(config, model, data_dir):
    """The validation split in eval mode, batched, with the targets the model trains on.

    Args:
        config: A resolved config.
        model: The model built from it (its normalisation and target kind).
        data_dir: Shard folder.

    Returns:
        A finite ``tf.data.Dataset`` of ``(images, targets)`` batches.
    """
    from kerasmlic.data.pipeline import make_dataset

    data_cfg = config["data"]
    label_order, max_labels = builder.sequence_settings(model)
    return make_dataset(
        data_dir,
        data_cfg["val_split"],
        image_size=data_cfg["image_size"],
        batch_size=data_cfg["batch_size"],
        training=False,
        normalization=model.normalization,
        label_order=label_order,
        max_labels=max_labels,
        drop_remainder=False,
    )


def prepare_training(
    config, model, data=None, *, shard_policy="auto", num_workers=None, with_val=False
):
    """Make a config's training stream, step count and loss for a built model.

    Args:
        config: A resolved config.
        model: The model built from it.
        data: ``(data_dir, manifest, train_info)`` from
            :func:`kerasmlic.training.builder.check_data`; checked here when None.
        shard_policy: ``make_dataset``'s ``shard_policy`` (multi-worker).
        num_workers: ``make_dataset``'s ``num_workers`` (multi-worker).
        with_val: Also make :attr:`TrainingSetup.val_ds`.

    Returns:
        A :class:`TrainingSetup`.

    Raises:
        UsageError: Missing data or split, fewer training images than a batch,
            or a ``data.service`` the stream cannot use.
    """
    data_dir, manifest, train_info = data if data is not None else builder.check_data(config)
    train_ds = builder.train_dataset(
        config, model, data_dir, shard_policy=shard_policy, num_workers=num_workers
    )
    num_train = builder.train_examples(config, data_dir, train_info)
    return TrainingSetup(
        config=config,
        data_dir=data_dir,
        manifest=manifest,
        train_info=train_info,
        class_names=manifest_class_names(manifest),
        num_train=num_train,
        steps_per_epoch=builder.steps_per_epoch(config, num_train),
        loss=builder.class_weighted_loss(config, train_info),
        train_ds=train_ds,
        val_ds=val_dataset(config, model, data_dir) if with_val else None,
    )


def build_optimizer(config, steps_per_epoch, epochs, *, trainable=None):
    """AdamW with the config's warm-up + cosine schedule over one phase.

    Args:
        config: A resolved config.
        steps_per_epoch: Optimiser steps per epoch.
        epochs: Epochs the schedule spans (the phase's).
        trainable: The phase's encoder setting (``builder.phase_plan``): once
            the encoder is fine-tuned (True), ``train.fine_tune_learning_rate``
            replaces the peak rate when set.

    Returns:
        A ``keras.optimizers.AdamW`` (not yet built).
    """
    from kerasmlic.training.optim import make_optimizer

    train_cfg = dict(config["train"])
    if trainable and train_cfg["fine_tune_learning_rate"] is not None:
        train_cfg["learning_rate"] = train_cfg["fine_tune_learning_rate"]
    return make_optimizer(train_cfg, steps_per_epoch, epochs)


def compile_model(
    model,
    config,
    steps_per_epoch,
    epochs,
    *,
    trainable=None,
    loss=None,
    num_classes=None,
    strategy=None,
    step_driver=False,
):
    """Compile a model the way the config trains it, with a fresh optimiser.

    The optimiser (:func:`build_optimizer`) and the metrics are made here,
    under ``strategy``: their variables must belong to the strategy the model
    trains under.

    Args:
        model: A kerasmlic model.
        config: A resolved config.
        steps_per_epoch: Optimiser steps per epoch.
        epochs: Epochs the learning-rate schedule spans (the phase's).
        trainable: The phase's encoder setting (see :func:`build_optimizer`).
        loss: A loss replacing the model's own (``TrainingSetup.loss``), or None.
        num_classes: With it, the streaming fit metrics
            (``builder.fit_metrics``) are compiled in; None: no metrics.
        strategy: Optional ``tf.distribute`` strategy.
        step_driver: For a loop that runs its own steps (multi-worker): XLA is
            left to that loop's step function, and the optimiser is built over
            the trainable variables now, so its slots exist (and mirror) before
            a checkpoint is restored into them.

    Returns:
        The model's optimiser.
    """
    with _scope(strategy):
        optimizer = build_optimizer(config, steps_per_epoch, epochs, trainable=trainable)
        metrics = None if num_classes is None else builder.fit_metrics(num_classes)
        if step_driver:
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
            model.optimizer.build(model.trainable_variables)
        else:
            model.compile(
                optimizer=optimizer,
                loss=loss,
                metrics=metrics,
                jit_compile=config["train"]["jit_compile"],
            )
    return model.optimizer


def val_predictor(config, data_dir, *, labels=None):
    """Return ``predict(model) -> (y_true, scores, predicted)`` over the validation split.

    Args:
        config: A resolved config.
        data_dir: Shard folder.
        labels: ``read_split_labels`` of the split, to reuse across calls
            (read here when None).

    Returns:
        The function :class:`~kerasmlic.training.callbacks.MultiLabelEvaluation` calls.
    """
    from kerasmlic.data.pipeline import read_split_labels
    from kerasmlic.evaluation.predict import predict_split

    split = config["data"]["val_split"]
    if labels is None:
        labels = read_split_labels(data_dir, split)

    def predict(model):
        out = predict_split(
            model, data_dir, split, batch_size=config["evaluation"]["batch_size"], labels=labels
        )
        return out["y_true"], out["scores"], out["predicted"]

    return predict


def validation_callback(
    config,
    class_names,
    predict,
    *,
    best_path=None,
    every=None,
    final_epoch=None,
    log=print,
):
    """The validation pass: the full metric set into the epoch logs, the best model kept.

    Args:
        config: A resolved config.
        class_names: Class names in class-index order.
        predict: ``predict(model) -> (y_true, scores, predicted)``
            (:func:`val_predictor`, or the multi-worker sharded pass).
        best_path: Where to save the best model (``.keras``), or None.
        every: Epochs between passes; default ``evaluation.every`` (the
            last ``evaluation.last_epochs`` epochs are each evaluated).
        final_epoch: The run's last epoch (always evaluated); default the last
            epoch of each ``fit`` call.
        log: A ``print``-like function for the one-line figures.

    Returns:
        A :class:`~kerasmlic.training.callbacks.MultiLabelEvaluation`.
    """
    from kerasmlic.training import callbacks as cb

    return cb.MultiLabelEvaluation(
        predict,
        class_names,
        every=config["evaluation"]["every"] if every is None else every,
        last_epochs=config["evaluation"]["last_epochs"],
        best_path=best_path,
        log=log,
        final_epoch=final_epoch,
    )


def fit_callbacks(evaluation, precise_bn=None):
    """The callbacks every ``model.fit`` of the package runs, in their order.

    The NaN stop first; the replica-statistics average, precise BatchNorm and
    the learning rate before the validation pass, whose figures must be in the
    logs before any logger (a caller's callbacks go after these).

    Args:
        evaluation: From :func:`validation_callback`.
        precise_bn: From
            :func:`~kerasmlic.training.precise_bn.precise_batchnorm_callback`, or None.

    Returns:
        A list of Keras callbacks.
    """
    from kerasmlic.training import callbacks as cb

    callbacks = [cb.StopOnNaN(), cb.AverageReplicaStatistics()]
    if precise_bn is not None:
        callbacks.append(precise_bn)
    return [*callbacks, cb.LearningRateLogger(), evaluation]


def have_tensorboard():
    """Return whether the ``tensorboard`` package is installed.

    ``tf.summary`` needs it, and TensorFlow 2.21 no longer pulls it in.

    Returns:
        True or False.
    """
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def run_callbacks(config, evaluation, paths, phase, *, precise_bn=None, log=print):
    """:func:`fit_callbacks` plus what a run directory keeps, for one phase of ``train``.

    Args:
        config: A resolved config.
        evaluation: From :func:`validation_callback`.
        paths: The run's ``RunPaths``.
        phase: 0-based phase index (its backup folder; the TensorBoard note
            is logged on the first only).
        precise_bn: From
            :func:`~kerasmlic.training.precise_bn.precise_batchnorm_callback`, or None.
        log: A ``print``-like function.

    Returns:
        ``(callbacks, stopper)``: the list, and the early stopper or None when
        ``train.early_stopping_patience`` is off.
    """
    import keras

    from kerasmlic.training import callbacks as cb

    callbacks = fit_callbacks(evaluation, precise_bn)
    stopper = None
    patience = config["train"]["early_stopping_patience"]
    if patience:
        stopper = cb.EarlyStopOnValMAP(evaluation, patience, paths.history, log=log)
        callbacks.append(stopper)
    callbacks += [
        cb.EpochTimer(),
        # The history row goes before the backup: a kill in between leaves a
        # row that trim_history drops on resume, never a missing one.
        keras.callbacks.CSVLogger(paths.history, append=True),
        cb.LastWeights(os.path.join(paths.checkpoints, "last.weights.h5")),
        keras.callbacks.BackupAndRestore(paths.backup_dir(phase), double_checkpoint=True),
    ]
    if have_tensorboard():
        callbacks.append(
            keras.callbacks.TensorBoard(paths.logs, write_graph=False, profile_batch=0)
        )
    elif phase == 0:
        log("TensorBoard logs skipped: the tensorboard package is not installed")
    return callbacks, stopper


@contextlib.contextmanager
def precision_policy(config):
    """Set ``mixed_float16`` when ``train.mixed_precision`` asks, restoring the caller's after.

    Args:
        config: A resolved config.

    Yields:
        None.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        if config["train"]["mixed_precision"]:
            keras.mixed_precision.set_global_policy("mixed_float16")
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def model_summary(model, *, line_length=100):
    """Return a model's layer table (``model.summary``) as text.

    Args:
        model: A built Keras model.
        line_length: Width of the table.

    Returns:
        The table, ending with the parameter counts.
    """
    out = io.StringIO()
    model.summary(line_length=line_length, print_fn=lambda line, **_: out.write(line + "\n"))
    return out.getvalue()
