"""Read a training run directory (``kerasmlic train``) and export its best model.

A run directory (see :mod:`kerasmlic.evaluation.rundir`) holds ``config.yaml``,
``dataset.json`` (a reference to the shards with their class names),
``best.keras`` and, once evaluated, ``eval_val.json``.
"""

import json
import os

from kerasmlic.errors import UsageError


def _read_yaml(path):
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read {path!r}: {e}") from None


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path!r}: {e}") from None


def is_run_dir(path):
    """Return whether ``path`` looks like a training run directory (has ``best.keras``).

    Args:
        path: A folder.

    Returns:
        A bool.
    """
    return os.path.isfile(os.path.join(path, "best.keras"))


def read_class_names(run_dir, num_classes=None):
    """Return the class names a run trained with.

    Args:
        run_dir: A run directory.
        num_classes: If given, the count the names must have.

    Returns:
        A list of strings.

    Raises:
        UsageError: No readable ``dataset.json`` reference, or a count mismatch.
    """
    from kerasmlic.evaluation.rundir import read_dataset_reference

    names = read_dataset_reference(run_dir).get("class_names")
    if not names:
        raise UsageError(f"the dataset reference of {run_dir!r} lists no class names")
    if num_classes is not None and len(names) != num_classes:
        raise UsageError(
            f"{run_dir!r} lists {len(names)} class names but its model has {num_classes} classes"
        )
    return [str(n) for n in names]


def scalar_metrics(evaluation):
    """Keep the scalar entries of an evaluation dict (drops ``per_class``).

    Args:
        evaluation: A dict with docs/design.md's metric keys.

    Returns:
        A dict of the int/float entries.
    """
    return {
        k: v
        for k, v in evaluation.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def load_run(run_dir):
    """Load a run's best model with its class names, config and metrics.

    Args:
        run_dir: A run directory made by ``kerasmlic train``.

    Returns:
        A dict with ``model`` (the Keras model), ``class_names``, ``config``
        (the resolved training config, or ``{}``), ``metrics`` (scalar metrics
        of ``eval_val.json``, or None), ``best`` (``best.json``, or None) and
        ``model_path``.

    Raises:
        UsageError: The folder or its ``best.keras`` is missing, or its class
            names are missing or do not match the model.
    """
    from kerasmlic.evaluation.loading import load_model

    if not os.path.isdir(run_dir):
        raise UsageError(f"run dir {run_dir!r} does not exist")
    model_path = os.path.join(run_dir, "best.keras")
    if not os.path.isfile(model_path):
        raise UsageError(f"no best.keras in {run_dir!r}: is it a finished `kerasmlic train` run?")
    config_path = os.path.join(run_dir, "config.yaml")
    config = _read_yaml(config_path) if os.path.isfile(config_path) else {}
    eval_path = os.path.join(run_dir, "eval_val.json")
    metrics = scalar_metrics(_read_json(eval_path)) if os.path.isfile(eval_path) else None
    best_path = os.path.join(run_dir, "best.json")
    best = _read_json(best_path) if os.path.isfile(best_path) else None
    try:
        model = load_model(model_path)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"cannot load {model_path!r}: {e}") from None
    num_classes = int(model.output["scores"].shape[-1])
    return {
        "model": model,
        "class_names": read_class_names(run_dir, num_classes),
        "config": config,
        "metrics": metrics,
        "best": best,
        "model_path": model_path,
    }


def export_run(run_dir, out_dir, version=None, *, explain=True):
    """Export a run's best model as a TF Serving SavedModel.

    See :func:`kerasmlic.export.saved_model.export_saved_model` (export from a
    process that sees no GPU; ``kerasmlic export`` hides them).

    Args:
        run_dir: A run directory made by ``kerasmlic train``.
        out_dir: The model base folder, e.g. ``saved_models/NAME``.
        version: Positive int; default: the next free version (1 first).
        explain: Also export the ``explain`` signature (heat maps).

    Returns:
        The path of the written version folder.

    Raises:
        UsageError: Bad run directory or version (see :func:`load_run`).
    """
    from kerasmlic.export.saved_model import export_saved_model

    run = load_run(run_dir)
    metadata = {
        "metrics": run["metrics"],
        "metrics_split": "val" if run["metrics"] is not None else None,
        "best_epoch": (run["best"] or {}).get("epoch"),
        "training_config": run["config"],
        "run_dir": os.path.abspath(run_dir),
    }
    return export_saved_model(
        run["model"],
        out_dir,
        class_names=run["class_names"],
        version=version,
        metadata=metadata,
        explain=explain,
    )
