"""Creating and resuming a run directory (its layout: :mod:`kerasmlic.evaluation.rundir`).

A run directory is prepared here before training starts, or checked for a
resume; the phase state, the ``BackupAndRestore`` epoch and ``history.csv``
are kept consistent across an interruption.
"""

import copy
import csv
import hashlib
import json
import os

from kerasmlic.data.manifest import file_sha256, manifest_path, write_json_atomic
from kerasmlic.errors import UsageError
from kerasmlic.evaluation.rundir import (
    RunPaths,
    check_same_classes,
    dataset_reference,
    is_finished,
    read_dataset_reference,
)
from kerasmlic.training.config import default_config, save_config

# Keys a resumed run may change: they steer how it runs, not what it learns (a
# moved tf.data service dispatcher, or none, feeds the same stream).
_RESUME_FREE = (("train", "verbose"), ("run_dir",), ("data", "service"))


def comparable_config(config):
    """Return a copy of a resolved config without the keys a resumed run may change.

    Args:
        config: A resolved config.

    Returns:
        The copy, with ``data.dir`` made absolute.
    """
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


def _with_new_defaults(saved, defaults):
    """Fill in the keys added to the defaults since ``saved`` was written, in place."""
    for key, value in defaults.items():
        if key not in saved:
            saved[key] = copy.deepcopy(value)
        elif key != "model" and isinstance(value, dict) and isinstance(saved[key], dict):
            # The model section is open (its options come from the registry).
            _with_new_defaults(saved[key], value)


def _saved_config_differences(paths, config):
    """The comparable keys where a run dir's ``config.yaml`` and ``config`` differ.

    A key the defaults gained since the run started counts as its default:
    upgrading the package does not make a run of the same settings another run.
    """
    import yaml

    with open(paths.config) as f:
        previous = yaml.safe_load(f) or {}
    _with_new_defaults(previous, default_config())
    return _differences(comparable_config(previous), comparable_config(config))


def config_fingerprint(config, data_dir):
    """Return a digest of what a config trains: its comparable keys and its shards.

    Records derived from a training (such as ``reproduce``'s tuning record)
    keep it, so a record of another config or of rebuilt shards is not reused.

    Args:
        config: A resolved config.
        data_dir: Its shard folder (the digest covers its ``dataset.json``).

    Returns:
        A hex string.
    """
    text = json.dumps(comparable_config(config), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode())
    digest.update(file_sha256(manifest_path(data_dir)).encode())
    return digest.hexdigest()


def finished_run_differences(run_dir, config, data_dir):
    """Return what a finished run was trained with that ``config`` would not use.

    Args:
        run_dir: A run directory holding a finished run.
        config: The resolved config it is checked against.
        data_dir: The shard folder ``config`` trains on.

    Returns:
        A list of differing config keys, plus ``"shards (dataset.json)"`` when
        the shards were rebuilt since; empty when the run is the config's.
    """
    paths = RunPaths(run_dir)
    if not os.path.isfile(paths.config):
        return ["config.yaml (missing)"]
    diff = _saved_config_differences(paths, config)
    reference = read_dataset_reference(run_dir) if os.path.isfile(paths.dataset) else {}
    if reference.get("sha256") != file_sha256(manifest_path(data_dir)):
        diff.append("shards (dataset.json)")
    return diff


def prepare_run_dir(run_dir, config, data_dir, manifest):
    """Create a run directory, or check that a started one can be resumed.

    A folder holding ``config.yaml`` but no ``summary.json`` is an
    interrupted run: it resumes when the resolved config is the same (the
    verbosity and run-dir spelling may differ) and the shards are the ones it
    started on (their ``dataset.json`` digest; moved shards keep it).

    Args:
        run_dir: The run directory.
        config: The resolved config.
        data_dir: The shard folder.
        manifest: Its manifest.

    Returns:
        True when resuming, False for a fresh run.

    Raises:
        UsageError: The folder holds a finished run, a run with another config,
            or a run on shards with another class list or rebuilt since.
    """
    paths = RunPaths(run_dir)
    if is_finished(run_dir):
        raise UsageError(
            f"run dir {run_dir!r} already holds a finished run; pass another --run-dir or delete it"
        )
    if os.path.isfile(paths.config):
        diff = _saved_config_differences(paths, config)
        if diff:
            raise UsageError(
                f"run dir {run_dir!r} holds an interrupted run with another config "
                f"(differs in {', '.join(diff)}); pass another --run-dir or delete it"
            )
        if os.path.isfile(paths.dataset):
            reference = read_dataset_reference(run_dir)
            check_same_classes(reference, manifest, data_dir)
            # A reference of an older layout has no digest and resumes as before.
            if reference.get("sha256") not in (None, file_sha256(manifest_path(data_dir))):
                raise UsageError(
                    f"run dir {run_dir!r} holds an interrupted run on other shards "
                    f"({os.path.join(data_dir, 'dataset.json')} changed since it started); "
                    "pass another --run-dir or delete it"
                )
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
