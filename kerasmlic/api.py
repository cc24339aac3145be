"""The notebook API: ``kerasmlic train``'s steps as a few calls on the package.

``import kerasmlic`` exposes these names (lazily: the package import stays
cheap and loads no TensorFlow). Each is a thin wrapper over what the CLI
runs, :mod:`kerasmlic.training.setup` above all, so a notebook gets the
same model, stream, optimiser and callbacks as ``kerasmlic train``::

    import kerasmlic

    kerasmlic.synthesize("work/synth", train=1500, val=300)   # COCO layout
    for split in ("train", "val"):
        kerasmlic.build_split(f"work/synth/annotations/instances_{split}.json",
                              f"work/synth/{split}", split, "work/shards")
    config = kerasmlic.default_config()
    config["data"]["dir"] = "work/shards"
    model = kerasmlic.build_model(config)
    data = kerasmlic.make_datasets(config, model)
    kerasmlic.compile_model(model, data)
    evaluation = kerasmlic.validation(data, best_path="work/best.keras")
    model.fit(data.train_ds, epochs=config["train"]["epochs"],
              steps_per_epoch=data.steps_per_epoch,
              callbacks=kerasmlic.callbacks(evaluation), shuffle=False)
    results = kerasmlic.evaluate(model, "work/shards")
    kerasmlic.export_model(model, "saved_models/demo", data.class_names, results=results)

``kerasmlic.train(config)`` does all of it in one call, in a resumable run
directory, as ``kerasmlic train`` does.
"""

import os

from kerasmlic.data import manifest as manifest_lib
from kerasmlic.data.build import build_split
from kerasmlic.data.synth import synthesize
from kerasmlic.training import builder, setup
from kerasmlic.training import config as config_lib
from kerasmlic.training.setup import TrainingSetup

__all__ = [
    "TrainingSetup",
    "build_model",
    "build_split",
    "callbacks",
    "compile_model",
    "default_config",
    "evaluate",
    "export_model",
    "format_results",
    "load_config",
    "load_model",
    "make_datasets",
    "model_names",
    "model_summary",
    "predict",
    "synthesize",
    "train",
    "tune",
    "validation",
]


def default_config():
    """Return a fresh copy of the default training config (a nested dict).

    Set ``config["data"]["dir"]`` to a shard folder before building from it;
    every other key has a default (``kerasmlic.training.config.DEFAULTS``).

    Returns:
        A dict with the sections ``model``, ``data``, ``train``,
        ``evaluation`` and ``run_dir``.
    """
    return config_lib.default_config()


def load_config(path=None, overrides=()):
    """Read a YAML config (``experiments/*.yaml``) over the defaults, validated.

    Args:
        path: A YAML file, or None for the defaults alone.
        overrides: ``"key=value"`` strings with dotted keys, as ``--set``
            takes them (``"train.epochs=3"``).

    Returns:
        The resolved config dict.

    Raises:
        UsageError: Unknown key, bad value, unknown model or option.
    """
    return config_lib.load_config(path, overrides)


def model_names():
    """Return the registry's model names (importing, so registering, every model class).

    Returns:
        A sorted list of names for ``config["model"]["name"]``.
    """
    from kerasmlic.models.registry import model_names as registry_names

    return registry_names()


def build_model(config, num_classes=None):
    """Build the model a config names, seeded by ``train.seed``, as ``kerasmlic train`` does.

    Args:
        config: A config dict (partial is fine: merged over the defaults), a
            YAML path, or None.
        num_classes: Classes to predict; default: those of the shard folder
            ``data.dir``.

    Returns:
        An uncompiled kerasmlic model (a ``keras.Model``).

    Raises:
        UsageError: Bad config, unknown model or option, no shard folder to
            count the classes of.
    """
    import keras

    config = builder.resolve(config)
    if num_classes is None:
        _, manifest, _ = builder.check_data(config)
        num_classes = len(manifest["classes"])
    keras.utils.set_random_seed(config["train"]["seed"])
    return setup.build_model(config, num_classes)


def make_datasets(config, model):
    """Make the datasets and settings a model trains on, from a config.

    Args:
        config: A config dict (merged over the defaults), a YAML path, or None.
        model: The model built from it (its normalisation and targets: label
            sequences for the decoder models).

    Returns:
        A :class:`TrainingSetup`: ``train_ds`` (augmented, repeated: pass
        ``steps_per_epoch``), ``val_ds`` (the validation split in eval mode),
        ``steps_per_epoch``, ``class_names``, ``loss`` (the class-weighted
        loss or None), the resolved ``config`` and ``data_dir``.

    Raises:
        UsageError: Bad config, missing data or split, fewer images than a batch.
    """
    config = builder.resolve(config)
    data = builder.check_data(config)
    builder.check_options(config, data[1], data[0])
    return setup.prepare_training(config, model, data, with_val=True)


def compile_model(model, data, *, epochs=None):
    """Compile a model as ``kerasmlic train`` does: AdamW with warm-up + cosine decay.

    Args:
        model: A kerasmlic model.
        data: :func:`make_datasets`' result (config, steps per epoch, loss).
        epochs: Epochs the learning-rate schedule spans; default ``train.epochs``.

    Returns:
        The model, compiled with the streaming fit metrics.
    """
    config = data.config
    setup.compile_model(
        model,
        config,
        data.steps_per_epoch,
        epochs or config["train"]["epochs"],
        loss=data.loss,
        num_classes=len(data.class_names),
    )
    return model


def validation(data, *, best_path=None, log=print):
    """The validation callback: the whole val split's mAP and F1s each epoch, the best kept.

    Args:
        data: :func:`make_datasets`' result.
        best_path: Where to save the best model by val mAP (``.keras``), or None.
        log: A ``print``-like function for the figures.

    Returns:
        A ``MultiLabelEvaluation`` callback; after ``fit``, ``.best`` and
        ``.best_epoch`` hold the best val mAP and its epoch.
    """
    predict_val = setup.val_predictor(data.config, data.data_dir)
    return setup.validation_callback(
        data.config, data.class_names, predict_val, best_path=best_path, log=log
    )


def callbacks(evaluation):
    """Return the callbacks ``kerasmlic train`` fits with (no run directory).

    Args:
        evaluation: :func:`validation`'s callback.

    Returns:
        A list: NaN stop, replica statistics, learning-rate log, the validation.
    """
    return setup.fit_callbacks(evaluation)


def model_summary(model):
    """Return a model's layer table and parameter counts as text.

    Args:
        model: A built kerasmlic model.

    Returns:
        A string.
    """
    return setup.model_summary(model)


def train(config, *, log=print):
    """Train from a config in a run directory, exactly as ``kerasmlic train``; resumable.

    Args:
        config: A config dict (merged over the defaults), a YAML path, or None.
        log: A ``print``-like function for progress lines.

    Returns:
        The run directory (``best.keras``, ``history.csv``, ``summary.json`` ...).
    """
    from kerasmlic.training import train as train_config

    return train_config(config, log=log)


def tune(config, **options):
    """Run a hyperparameter search, as ``kerasmlic tune``.

    Args:
        config: A tuning config (``experiments/tune_*.yaml``) or dict.
        **options: :func:`kerasmlic.tuning.tune`'s keyword arguments
            (``data_dir``, ``tuner``, ``max_trials``, ``epochs`` ...).

    Returns:
        The search's result dict (leaderboard, best config, best run dir).
    """
    from kerasmlic.tuning import tune as tune_config

    return tune_config(config, **options)


def load_model(path):
    """Load a saved kerasmlic model (``.keras``), every model class registered.

    Args:
        path: A ``.keras`` file, e.g. a run's ``best.keras``.

    Returns:
        The model, not compiled.
    """
    from kerasmlic.evaluation.loading import load_model as load_keras_model

    return load_keras_model(path)


def predict(model, data_dir, split="val", *, batch_size=64):
    """Predict a whole split of a shard folder.

    Args:
        model: A kerasmlic model.
        data_dir: Shard folder.
        split: Split name.
        batch_size: Images per prediction batch.

    Returns:
        A dict of numpy arrays in the split's record order: ``scores``,
        ``predicted``, ``y_true``, ``image_ids``, ``label_areas``.
    """
    from kerasmlic.evaluation.predict import predict_split

    return predict_split(model, data_dir, split, batch_size=batch_size)


def evaluate(model, data_dir, split="val", *, batch_size=64):
    """Predict a split and compute the package's metrics, as ``kerasmlic evaluate``.

    Args:
        model: A kerasmlic model.
        data_dir: Shard folder.
        split: Split name.
        batch_size: Images per prediction batch.

    Returns:
        The metric dict: ``mAP``, ``CP CR CF1 OP OR OF1`` and their
        ``_top3`` forms, per-image figures and ``per_class``.
    """
    from kerasmlic.evaluation.evaluate import evaluate_model

    names = manifest_lib.class_names(manifest_lib.load_manifest(data_dir))
    results, _ = evaluate_model(model, data_dir, split, names, batch_size=batch_size)
    return results


def format_results(results, *, top=None):
    """Return :func:`evaluate`'s figures as text; with ``top``, the best and worst classes too.

    Args:
        results: :func:`evaluate`'s dict.
        top: Rows of the per-class table (sorted by AP), or None for no table.

    Returns:
        A string.
    """
    from kerasmlic.evaluation.evaluate import format_table
    from kerasmlic.metrics.report import format_per_class

    text = format_table(results)
    if top:
        text += "\n\n" + format_per_class(results, top=top)
    return text


def export_model(model, out_dir, class_names, *, results=None, split="val", version=None):
    """Export a model for TF Serving as ``out_dir/VERSION/`` (as ``kerasmlic export``).

    Args:
        model: A kerasmlic model.
        out_dir: The model's base folder, e.g. ``saved_models/NAME``.
        class_names: Class names in class-index order (``TrainingSetup.class_names``).
        results: :func:`evaluate`'s dict, recorded in ``metadata.json``, or None.
        split: The split ``results`` were computed on.
        version: Version number; default one above the highest there, or 1.

    Returns:
        The written version folder.
    """
    from kerasmlic.export import export_saved_model
    from kerasmlic.export.run import scalar_metrics

    metadata = None
    if results is not None:
        metadata = {"metrics": scalar_metrics(results), "metrics_split": split}
    return export_saved_model(
        model, os.fspath(out_dir), class_names=class_names, version=version, metadata=metadata
    )
