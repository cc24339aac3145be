"""What every training loop checks and builds the same way, from one config.

``train`` (``model.fit``, :mod:`kerasmlic.training.trainer`), the multi-worker
step driver (:mod:`kerasmlic.training.multiworker`) and the tuner's trials
resolve the config (:func:`resolve`), check the shards and options
(:func:`check_data`, :func:`check_options`), compile the same loss and
metrics (:func:`class_weighted_loss`, :func:`fit_metrics`) and read the
training split through :func:`train_dataset`, so they share the same
pipeline settings (augmentation, label sequences, seed, shuffle buffer) and
the same train holdout when thresholds are calibrated on one
(``evaluation.calibration_split: train-holdout``).

The objects themselves (model, optimiser, compile, callbacks) are made from
these by :mod:`kerasmlic.training.setup`.
"""

import contextlib
import copy
import os
import sys

from kerasmlic.data.manifest import load_manifest, split_info
from kerasmlic.errors import UsageError
from kerasmlic.training import config as config_lib

TRAIN_HOLDOUT = "train-holdout"
"""``evaluation.calibration_split`` value: fit thresholds on a held-out part of train."""


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


def class_weighting_supported(model_name):
    """Return whether ``train.class_weighting`` applies to a model.

    The model class says so (``supports_class_weighting``: its loss is plain
    BCE on the logits, which the class-weighted BCE replaces).

    Args:
        model_name: A registry name.

    Returns:
        True or False.

    Raises:
        UsageError: Unknown model name.
    """
    from kerasmlic.models.registry import get_model_class

    cls = get_model_class(model_name)
    return bool(cls.supports_class_weighting)


def class_weighted_models():
    """Return the registry names ``train.class_weighting`` applies to, sorted."""
    from kerasmlic.models.registry import model_names

    return [name for name in model_names() if class_weighting_supported(name)]


def check_class_weighting(config, hint=""):
    """Refuse ``train.class_weighting`` on a model it does not apply to.

    Args:
        config: A resolved (or about to be) config.
        hint: Text appended to the message (e.g. how to condition a search space).

    Raises:
        UsageError: A class weighting other than ``none`` on such a model.
    """
    weighting, name = config["train"]["class_weighting"], config["model"]["name"]
    if weighting == "none" or class_weighting_supported(name):
        return
    raise UsageError(
        f"train.class_weighting={weighting} applies to the "
        f"{', '.join(class_weighted_models())} model only, not {name!r}{hint}"
    )


def check_options(config, manifest, data_dir):
    """Check the options every training loop shares, before anything is built.

    Args:
        config: A resolved config.
        manifest: The shard folder's manifest.
        data_dir: The shard folder.

    Raises:
        UsageError: Class weighting on a model it does not apply to, precise
            BatchNorm with a distribution strategy, or a calibration split
            that is the reported one, the training split or missing.
    """
    from kerasmlic.training.precise_bn import check_precise_batchnorm

    check_class_weighting(config)
    check_precise_batchnorm(config)
    source = calibration_source(config)
    if source is not None and source != TRAIN_HOLDOUT:
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


def fit_metrics(num_classes):
    """Return the streaming metrics every training loop reports per epoch.

    Args:
        num_classes: Classes of the shards.

    Returns:
        A list of fresh Keras metrics.
    """
    from kerasmlic.metrics.streaming import default_fit_metrics

    return default_fit_metrics(num_classes)


def sequence_settings(model):
    """Return ``(label_order, max_labels)`` for the pipeline, or ``(None, None)``.

    The model's options decide both: its ``max_labels`` fixes the sequence
    length and its ``label_order`` the training order (an orderless ``pla``
    model asks for any fixed order through ``pipeline_label_order``).

    Args:
        model: A built kerasmlic model.

    Returns:
        The label order and length the model's targets need.
    """
    if not getattr(type(model), "uses_sequences", False):
        return None, None
    model_cfg = getattr(model, "options", None) or {}
    order = getattr(model, "pipeline_label_order", None) or model_cfg.get("label_order")
    if order in (None, "pla"):
        order = "frequent_first"
    return order, model_cfg.get("max_labels")


def calibration_source(config):
    """Return where a config fits its thresholds: None, ``"train-holdout"`` or a split name.

    Args:
        config: A resolved config.

    Returns:
        None when ``evaluation.calibrate`` is off, else
        ``evaluation.calibration_split``.

    Raises:
        UsageError: The calibration split is the reported (validation) or the
            training split, or a train holdout of no images.
    """
    eval_cfg = config["evaluation"]
    if not eval_cfg["calibrate"]:
        return None
    source = eval_cfg["calibration_split"]
    if source == config["data"]["val_split"]:
        raise UsageError(
            f"evaluation.calibration_split={source!r} is the split the figures are reported on; "
            f"use {TRAIN_HOLDOUT!r} or another split"
        )
    if source == config["data"]["train_split"]:
        raise UsageError(
            f"evaluation.calibration_split={source!r} is the training split (thresholds fit on "
            f"seen images are optimistic); use {TRAIN_HOLDOUT!r}"
        )
    if source == TRAIN_HOLDOUT and not 0 < eval_cfg["holdout_fraction"] < 1:
        raise UsageError(
            f"evaluation.holdout_fraction must be in (0, 1) to calibrate on {TRAIN_HOLDOUT!r}, "
            f"got {eval_cfg['holdout_fraction']!r}"
        )
    return source


def phase_plan(train_cfg, model_options):
    """Return a config's training phases, as ``train`` runs them.

    Args:
        train_cfg: The config's ``train`` section.
        model_options: The model's settings (``config.model_settings``).

    Returns:
        ``[(first_epoch, end_epoch, encoder_trainable)]`` (0-based first,
        exclusive end); ``encoder_trainable`` is None for a one-phase run
        (the encoder keeps the model's own setting), else False while frozen
        and then True (False again when the model's ``freeze_encoder`` is set).
    """
    epochs, frozen = train_cfg["epochs"], train_cfg["freeze_encoder_epochs"]
    if not frozen:
        return [(0, epochs, None)]
    phases = [(0, min(frozen, epochs), False)]
    if frozen < epochs:
        phases.append((frozen, epochs, not model_options.get("freeze_encoder", False)))
    return phases


def train_holdout(config):
    """Return the training split's holdout: ``("rest", fraction)`` or None.

    A fraction of train is held out of training only when thresholds are
    calibrated on it.

    Args:
        config: A resolved config.

    Returns:
        The ``holdout`` argument of ``make_dataset`` for the training stream.
    """
    if calibration_source(config) != TRAIN_HOLDOUT:
        return None
    return ("rest", config["evaluation"]["holdout_fraction"])


def calibration_holdout(config):
    """Return ``(split, holdout)`` that calibration predicts, or None when not calibrating.

    Args:
        config: A resolved config.

    Returns:
        ``(train split, ("heldout", fraction))`` for ``train-holdout``,
        ``(split, None)`` for a split name, or None.
    """
    source = calibration_source(config)
    if source is None:
        return None
    if source == TRAIN_HOLDOUT:
        return config["data"]["train_split"], ("heldout", config["evaluation"]["holdout_fraction"])
    return source, None


def train_examples(config, data_dir, train_info):
    """Return how many training images the stream reads (the holdout excluded).

    Args:
        config: A resolved config.
        data_dir: Shard folder.
        train_info: ``split_info`` of the train split.

    Returns:
        The image count.
    """
    holdout = train_holdout(config)
    if holdout is None:
        return train_info["num_examples"]
    from kerasmlic.data.pipeline import read_split_ids

    return int(len(read_split_ids(data_dir, config["data"]["train_split"], holdout)))


def steps_per_epoch(config, num_examples):
    """Return ``train.steps_per_epoch``, or full batches over ``num_examples``.

    Args:
        config: A resolved config.
        num_examples: Training images.

    Returns:
        Steps per epoch (>= 1).

    Raises:
        UsageError: Fewer training images than one batch.
    """
    steps = config["train"]["steps_per_epoch"]
    if steps:
        return steps
    batch = config["data"]["batch_size"]
    if num_examples < batch:
        raise UsageError(
            f"{num_examples} training images (after the calibration holdout) are fewer than "
            f"one batch ({batch}); lower --batch-size"
        )
    return num_examples // batch


def train_dataset(config, model, data_dir, *, shard_policy="auto", num_workers=None):
    """The training stream of a config: repeated, augmented, with the model's targets.

    Args:
        config: A resolved config.
        model: The model built from it (its normalisation and target kind).
        data_dir: Shard folder.
        shard_policy: ``make_dataset``'s ``shard_policy`` (multi-worker).
        num_workers: ``make_dataset``'s ``num_workers`` (multi-worker).

    Returns:
        A ``tf.data.Dataset`` of ``(images, targets)`` batches of
        ``data.batch_size`` (global), repeated forever; made by the tf.data
        service's workers when ``data.service`` names a dispatcher.

    Raises:
        UsageError: ``data.service`` with ``train.deterministic``, a malformed
            service address or an unreachable dispatcher.
    """
    from kerasmlic.data.pipeline import make_dataset

    data_cfg, train_cfg = config["data"], config["train"]
    label_order, max_labels = sequence_settings(model)
    dataset = make_dataset(
        data_dir,
        data_cfg["train_split"],
        image_size=data_cfg["image_size"],
        batch_size=data_cfg["batch_size"],
        training=True,
        normalization=model.normalization,
        label_order=label_order,
        max_labels=max_labels,
        seed=train_cfg["seed"],
        shuffle_buffer=data_cfg["shuffle_buffer"],
        augment=data_cfg["augment"],
        holdout=train_holdout(config),
        # A repeated stream with a fixed step count: exact epochs and schedule,
        # no end-of-data probing.
        repeat=True,
        shard_policy=shard_policy,
        num_workers=num_workers,
    )
    if train_cfg["deterministic"]:
        import tensorflow as tf

        options = tf.data.Options()
        options.deterministic = True
        dataset = dataset.with_options(options)
    if data_cfg.get("service"):
        # The tf.data service's workers run the pipeline above (seeded as here); the
        # batches arrive in the order the workers finish them.
        from kerasmlic.training import data_service

        if train_cfg["deterministic"]:
            raise UsageError(
                "train.deterministic cannot hold with data.service: the service's workers "
                "hand out batches in the order they finish them; drop one of the two"
            )
        # All workers of a multi-worker run read one shared job, each batch going to one.
        shared = train_cfg["strategy"] == "multiworker"
        job_name = data_service.shared_job_name(config) if shared else None
        dataset = data_service.distribute(dataset, data_cfg["service"], job_name=job_name)
    return dataset


@contextlib.contextmanager
def determinism(config):
    """Seed Python, NumPy and TF, and, with ``train.deterministic``, deterministic TF ops.

    ``tf.config.experimental.enable_op_determinism`` is process-wide; it is
    switched off again on exit when it was off before, so a study's
    deterministic run does not slow later work in the same process.

    Args:
        config: A resolved config.

    Yields:
        None.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config["train"]["seed"])
    if not config["train"]["deterministic"]:
        yield
        return
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            tf_config.disable_op_determinism()
