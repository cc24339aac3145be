"""The run directory: its layout, the dataset reference, and reading a finished run.

Evaluation, export, tuning and reporting read run directories through this
module; creating and resuming one is :mod:`kerasmlic.training.rundir`'s.

Layout::

    RUN_DIR/
      config.yaml            resolved config (what ran)
      dataset.json           reference to the shards: path, sha256 of their
                             dataset.json, class names
      history.csv            one row per epoch (CSVLogger, appended on resume)
      logs/                  TensorBoard
      backup/phaseN/         BackupAndRestore state (deleted when a phase ends)
      checkpoints/           last.weights.h5 (every epoch), phaseN.weights.h5
      state.json             phases completed (freeze-then-fine-tune)
      best.keras, best.json  best model by val mAP, and its epoch
      eval_val.json          final evaluation (docs/design.md metric keys)
      predictions_val.npz    its scores, predicted sets and ground truth
      summary.json           written last: the run finished
"""

import csv
import json
import os

from kerasmlic.data.manifest import class_names, file_sha256, manifest_path
from kerasmlic.errors import UsageError


class RunPaths:
    """Paths inside a run directory.

    Args:
        root: The run directory.
    """

    def __init__(self, root):
        self.root = os.fspath(root)

    def __getattr__(self, name):
        files = {
            "config": "config.yaml",
            "dataset": "dataset.json",
            "history": "history.csv",
            "logs": "logs",
            "backup": "backup",
            "checkpoints": "checkpoints",
            "state": "state.json",
            "best": "best.keras",
            "best_json": "best.json",
            "summary": "summary.json",
        }
        if name in files:
            return os.path.join(self.root, files[name])
        raise AttributeError(name)

    def backup_dir(self, phase):
        """Return the BackupAndRestore folder of a phase."""
        return os.path.join(self.root, "backup", f"phase{phase}")

    def phase_weights(self, phase):
        """Return the weights file written when a phase completes."""
        return os.path.join(self.root, "checkpoints", f"phase{phase}.weights.h5")

    def eval_json(self, split):
        """Return the evaluation JSON of a split."""
        return os.path.join(self.root, f"eval_{split}.json")

    def predictions(self, split):
        """Return the predictions file of a split."""
        return os.path.join(self.root, f"predictions_{split}.npz")


def dataset_reference(data_dir, manifest):
    """Return the run's reference to its shard folder.

    Args:
        data_dir: Shard folder.
        manifest: Its loaded ``dataset.json``.

    Returns:
        ``{"path", "sha256", "num_classes", "class_names"}``.
    """
    return {
        "path": os.path.abspath(data_dir),
        "sha256": file_sha256(manifest_path(data_dir)),
        "num_classes": len(manifest["classes"]),
        "class_names": class_names(manifest),
    }


def read_dataset_reference(run_dir):
    """Read a run's ``dataset.json`` reference.

    Args:
        run_dir: A run directory.

    Returns:
        The reference dict.

    Raises:
        UsageError: Missing or unreadable.
    """
    path = RunPaths(run_dir).dataset
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the run's dataset reference {path!r}: {e}") from None


def check_same_classes(reference, manifest, data_dir):
    """Refuse shards whose class list differs from the one a model was trained on.

    Args:
        reference: A run's dataset reference (or any dict with ``class_names``).
        manifest: The shards' manifest.
        data_dir: The shard folder (for the message).

    Raises:
        UsageError: The class lists differ.
    """
    theirs = class_names(manifest)
    ours = list(reference["class_names"])
    if theirs == ours:
        return
    if len(theirs) != len(ours):
        detail = f"{len(theirs)} classes, the model has {len(ours)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
        detail = f"class {i} is {theirs[i]!r}, the model's is {ours[i]!r}"
    raise UsageError(f"the shards in {data_dir!r} do not match the model's class list: {detail}")


def is_finished(run_dir):
    """Return True when a run directory holds a completed run (``summary.json``)."""
    return os.path.isfile(RunPaths(run_dir).summary)


def read_history(path):
    """Read ``history.csv`` as a dict column → list of floats (NaN for missing).

    Args:
        path: The ``history.csv`` file.

    Returns:
        A dict; empty when the file is missing.
    """
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            columns.setdefault(key, []).append(number)
    return columns
