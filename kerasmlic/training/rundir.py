"""The run directory: its layout, the dataset reference, and what a resume needs.

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

import copy
import csv
import json
import os

from kerasmlic.config import save_config
from kerasmlic.data.manifest import class_names, file_sha256, manifest_path, write_json_atomic
from kerasmlic.errors import UsageError

# Config keys that may differ between a run and its resumption.
# Keys a resumed run may change: they steer how it runs, not what it learns (a
# moved tf.data service dispatcher, or none, feeds the same stream).
_RESUME_FREE = (("train", "verbose"), ("run_dir",), ("data", "service"))


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


def _comparable(config):
    config = copy.deepcopy(config)
    for path in _RESUME_FREE:
        node = config
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    if config["data"].get("dir"):
        config["data"]["dir"] = os.path.abspath(config["data"]["dir"])
    return config


def _differences(a, b, prefix=""):
    keys = sorted(set(a) | set(b))
    out = []
    for key in keys:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def is_finished(run_dir):
    """Return True when a run directory holds a completed run (``summary.json``)."""
    return os.path.isfile(RunPaths(run_dir).summary)


def prepare_run_dir(run_dir, config, data_dir, manifest):
    """Create a run directory, or check that a started one can be resumed.

    A folder holding ``config.yaml`` but no ``summary.json`` is an
    interrupted run: it resumes when the resolved config is the same (the
    verbosity and run-dir spelling may differ).

    Args:
        run_dir: The run directory.
        config: The resolved config.
        data_dir: The shard folder.
        manifest: Its manifest.

    Returns:
        True when resuming, False for a fresh run.

    Raises:
        UsageError: The folder holds a finished run, a run with another config,
            or a run on shards with another class list.
    """
    paths = RunPaths(run_dir)
    if is_finished(run_dir):
        raise UsageError(
            f"run dir {run_dir!r} already holds a finished run; pass another --run-dir or delete it"
        )
    if os.path.isfile(paths.config):
        import yaml

        with open(paths.config) as f:
            previous = yaml.safe_load(f) or {}
        diff = _differences(_comparable(previous), _comparable(config))
        if diff:
            raise UsageError(
                f"run dir {run_dir!r} holds an interrupted run with another config "
                f"(differs in {', '.join(diff)}); pass another --run-dir or delete it"
            )
        if os.path.isfile(paths.dataset):
            check_same_classes(read_dataset_reference(run_dir), manifest, data_dir)
        return True
    os.makedirs(run_dir, exist_ok=True)
    for stale in (paths.history, paths.state, paths.best, paths.best_json):
        if os.path.exists(stale):
            os.remove(stale)
    write_json_atomic(paths.dataset, dataset_reference(data_dir, manifest))
    save_config(config, paths.config)
    return False


def read_state(run_dir):
    """Return the run's phase state (``{"phases_done": n}``)."""
    path = RunPaths(run_dir).state
    if not os.path.isfile(path):
        return {"phases_done": 0}
    with open(path) as f:
        return json.load(f)


def write_state(run_dir, state):
    """Write the run's phase state atomically."""
    write_json_atomic(RunPaths(run_dir).state, state)


def backup_epoch(backup_dir):
    """Return the epochs completed according to a BackupAndRestore folder, or None.

    Args:
        backup_dir: A ``BackupAndRestore`` backup folder.

    Returns:
        The saved epoch count, or None without a usable backup.
    """
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        path = os.path.join(backup_dir, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return int(json.load(f)["epoch"])
            except (OSError, ValueError, KeyError):
                continue
    return None


def trim_history(path, first_epoch):
    """Drop ``history.csv`` rows of epochs a resumed run will train again.

    ``CSVLogger`` writes a row at the end of an epoch; if the process was
    killed after that but before the backup, the epoch runs again and would
    appear twice.

    Args:
        path: The ``history.csv`` file.
        first_epoch: The 0-based epoch training restarts at; rows with
            ``epoch >= first_epoch`` are removed.
    """
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    if "epoch" not in header:
        return
    col = header.index("epoch")
    kept = [r for r in body if r and r[col].isdigit() and int(r[col]) < first_epoch]
    if len(kept) == len(body):
        return
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(kept)
    os.replace(tmp, path)


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
