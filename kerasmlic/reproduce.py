"""``kerasmlic reproduce``: train the study's models, then write results.md and the plots.

Each model trains with its config ``experiments/<name>.yaml`` (the defaults
with the model's name when the file is missing), into ``OUT/<name>``. A run
directory that already holds a finished run is reused and an interrupted one
resumes, so running the command again after a crash only does what is left.
"""

import os
import shlex
import sys
import time

from kerasmlic import config as config_lib
from kerasmlic.errors import UsageError
from kerasmlic.reporting.results import STUDY_MODELS

DEFAULT_OUT = os.path.join("runs", "reproduce")


def _cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def experiments_dir():
    """Return the repository's ``experiments/`` folder, or None when it is not there.

    Returns:
        A path or None.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(here, "experiments")
    return path if os.path.isdir(path) else None


def model_config_path(name):
    """Return ``experiments/<name>.yaml`` if it exists, else None.

    Args:
        name: A registry name.

    Returns:
        A path or None.
    """
    folder = experiments_dir()
    if folder is None:
        return None
    path = os.path.join(folder, f"{name}.yaml")
    return path if os.path.isfile(path) else None


def run_config(name, data_dir, out, *, epochs=None, overrides=()):
    """Resolve the config of one model of a reproduction.

    Args:
        name: A registry name.
        data_dir: Shard folder.
        out: Reproduction folder (the run goes to ``out/<name>``).
        epochs: Optional epoch override.
        overrides: ``KEY=VALUE`` strings applied to every model.

    Returns:
        The validated config.
    """
    return config_lib.load_config(
        model_config_path(name),
        overrides,
        **{
            "model.name": name,
            "data.dir": data_dir,
            "train.epochs": epochs,
            "run_dir": os.path.join(out, name),
        },
    )


def reproduce(data_dir, models=None, epochs=None, out=None, *, overrides=(), log=print):
    """Train the study's models (or ``models``) and write the report.

    Args:
        data_dir: Shard folder made by ``kerasmlic build``.
        models: Registry names (default: the study's eight).
        epochs: Override every config's ``train.epochs``.
        out: Output folder (default ``runs/reproduce``): one run dir per model,
            plus ``results.md`` and the PNGs.
        overrides: ``KEY=VALUE`` strings applied to every model's config.
        log: A ``print``-like function.

    Returns:
        The report dict of :func:`kerasmlic.reporting.results.write_report`
        (``results`` path, ``plots``, ``ordering_holds``).

    Raises:
        UsageError: Unknown model, missing data, a bad config.
    """
    from kerasmlic.data.manifest import load_manifest
    from kerasmlic.models.registry import model_names
    from kerasmlic.reporting.results import write_report
    from kerasmlic.training import train
    from kerasmlic.training.rundir import is_finished

    start, cpu_start = time.time(), _cpu_seconds()
    load_manifest(data_dir)  # a clear error before any training
    models = list(models) if models else list(STUDY_MODELS)
    valid = model_names()
    unknown = [m for m in models if m not in valid]
    if unknown:
        raise UsageError(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(valid)}")
    out = out or DEFAULT_OUT
    configs = [run_config(m, data_dir, out, epochs=epochs, overrides=overrides) for m in models]
    run_dirs = []
    for i, config in enumerate(configs, 1):
        run_dir = config["run_dir"]
        if is_finished(run_dir):
            log(
                f"[{i}/{len(configs)}] {config['model']['name']}: finished run in {run_dir}, reused"
            )
        else:
            source = model_config_path(config["model"]["name"]) or "defaults"
            log(f"[{i}/{len(configs)}] {config['model']['name']} ({source})")
            train(config, log=log)
            import keras

            keras.backend.clear_session()  # free the finished model's graphs and variables
        run_dirs.append(run_dir)
    command = "kerasmlic " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not sys.argv[1:2] == ["reproduce"]:
        command = (
            f"kerasmlic reproduce --data {data_dir} --models {','.join(models)}"
            + (f" --epochs {epochs}" if epochs else "")
            + f" --out {out}"
        )
    report = write_report(
        run_dirs,
        data_dir,
        out,
        command=command,
        wall_seconds=time.time() - start,
        cpu_seconds=_cpu_seconds() - cpu_start,
    )
    log(f"wrote {report['results']} and {len(report['plots'])} plots in {out}")
    return report
