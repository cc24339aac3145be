"""``tune(config, ...)``: what ``kerasmlic tune`` and a notebook both call.

A tuning YAML is a training config (the base every trial starts from) plus a
``tune:`` section::

    tune:
      tuner: hyperband          # hyperband (default) | random | bayesian | grid
      max_trials: 20            # random/bayesian: trials; hyperband: a cap
      epochs: 9                 # per trial (hyperband: the most a trial gets)
      factor: 3                 # hyperband's reduction factor
      hyperband_iterations: 1
      seed: 0                   # the oracle's seed
      project_name: null        # default: the YAML file's name
      directory: runs/tune
      max_consecutive_failed_trials: 3
      space: {...}              # see kerasmlic.tuning.space

The project folder is ``directory/project_name``. keras-tuner reloads an
existing project silently when not told to overwrite it; here the choice is
explicit: a new project starts only where none exists, ``resume=True``
continues one (same config required), ``overwrite=True`` deletes it first.
"""

import copy
import glob
import json
import os

import yaml

from kerasmlic.errors import UsageError
from kerasmlic.training import config as config_lib
from kerasmlic.tuning import distributed, results
from kerasmlic.tuning import space as space_lib
from kerasmlic.tuning.tuners import TRIAL_RECORD, TUNERS

TUNE_DEFAULTS = {
    "tuner": "hyperband",
    "max_trials": None,
    "epochs": None,
    "factor": 3,
    "hyperband_iterations": 1,
    "seed": 0,
    "project_name": None,
    "directory": os.path.join("runs", "tune"),
    "max_consecutive_failed_trials": 3,
    "space": None,
}
"""The ``tune:`` section's keys and defaults (``epochs`` defaults to ``train.epochs``)."""

TUNE_RECORD = "kerasmlic_tune.yaml"
"""Saved in the project folder: the search's settings, checked when resuming."""

_POSITIVE = ("max_trials", "epochs", "hyperband_iterations", "max_consecutive_failed_trials")
# Settings that may change when a project is resumed.
_RESUME_FREE = ("max_trials", "max_consecutive_failed_trials", "project_name", "directory")


def _check_tune_settings(tune):
    unknown = sorted(set(tune) - set(TUNE_DEFAULTS))
    if unknown:
        raise UsageError(
            f"unknown key(s) {', '.join('tune.' + k for k in unknown)}; valid: "
            f"{', '.join(sorted(TUNE_DEFAULTS))}"
        )
    if tune["tuner"] not in TUNERS:
        raise UsageError(f"tune.tuner: {tune['tuner']!r} is not one of {', '.join(TUNERS)}")
    for key in _POSITIVE:
        value = tune[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise UsageError(f"tune.{key} must be a positive integer, got {value!r}")
    factor = tune["factor"]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise UsageError(f"tune.factor must be an integer >= 2, got {factor!r}")
    if not isinstance(tune["seed"], int) or isinstance(tune["seed"], bool):
        raise UsageError(f"tune.seed must be an integer, got {tune['seed']!r}")
    if tune["tuner"] in ("random", "bayesian") and not tune["max_trials"]:
        raise UsageError(f"the {tune['tuner']} tuner needs --max-trials (tune.max_trials)")
    name = tune["project_name"]
    if not name or not isinstance(name, str) or os.sep in name or name in (".", ".."):
        raise UsageError(f"tune.project_name must be a folder name, got {name!r}")


def load_tune_config(config, *, data_dir=None, overrides=(), **tune_flags):
    """Resolve a tuning config: the base training config and the ``tune`` settings.

    Args:
        config: A YAML path, or a dict (a training config with a ``tune`` section).
        data_dir: The shard folder (``--data``); wins over ``data.dir``.
        overrides: ``KEY=VALUE`` strings for the base training config (``--set``).
        **tune_flags: ``tune`` settings from flags (``tuner``, ``max_trials``,
            ``epochs``, ``project_name``, ``directory``); None means not given.

    Returns:
        ``(base_config, tune_settings, specs)``: the validated training config,
        the ``tune`` settings with defaults filled in, and the parsed space.

    Raises:
        UsageError: A bad key or value anywhere, or no ``tune.space``.
    """
    if isinstance(config, str | os.PathLike):
        path = os.fspath(config)
        raw = config_lib.read_config_file(path)
        default_name = os.path.splitext(os.path.basename(path))[0]
    elif isinstance(config, dict):
        raw, default_name = copy.deepcopy(config), "kerasmlic_tune"
    else:
        raise UsageError("the tuning config must be a YAML path or a dict")
    tune_section = raw.pop("tune", None)
    if not isinstance(tune_section, dict):
        raise UsageError("the tuning config has no 'tune:' section (see experiments/tune_*.yaml)")
    base = config_lib.default_config()
    for key, value in raw.items():
        config_lib.set_value(base, str(key), value)
    if data_dir is not None:
        config_lib.set_value(base, "data.dir", data_dir)
    config_lib.apply_overrides(base, overrides)
    config_lib.validate_config(base)
    if base["train"]["strategy"] == "multiworker":
        raise UsageError(
            "train.strategy=multiworker is not for tuning: spread trials over hosts with "
            "keras-tuner's chief/worker mode instead (KERASTUNER_* variables, see README)"
        )
    tune = {**TUNE_DEFAULTS, "project_name": default_name, **tune_section}
    for key, value in tune_flags.items():
        if value is not None:
            tune[key] = value
    if tune["epochs"] is None:
        tune["epochs"] = base["train"]["epochs"]
    _check_tune_settings(tune)
    specs = space_lib.parse_space(tune["space"], base)
    return base, tune, specs


def project_dir(tune):
    """Return ``directory/project_name`` of the ``tune`` settings."""
    return os.path.join(tune["directory"], tune["project_name"])


def project_status(folder):
    """Count the trials of a project folder.

    Args:
        folder: ``directory/project_name``.

    Returns:
        ``{"exists", "trials", "completed"}``: whether keras-tuner state is
        there, the number of trials and of completed ones.
    """
    trials = glob.glob(os.path.join(folder, "trial_*", "trial.json"))
    completed = 0
    for path in trials:
        try:
            with open(path) as f:
                completed += json.load(f).get("status") == "COMPLETED"
        except (OSError, ValueError):
            continue
    exists = bool(trials) or os.path.isfile(os.path.join(folder, "oracle.json"))
    return {"exists": exists, "trials": len(trials), "completed": completed}


def _record(base, tune):
    comparable = copy.deepcopy(base)
    comparable["data"]["dir"] = os.path.abspath(comparable["data"]["dir"])
    comparable["train"].pop("verbose", None)
    settings = {k: v for k, v in tune.items() if k not in _RESUME_FREE}
    return {"base_config": comparable, "tune": settings}


def _differences(a, b, prefix=""):
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _check_resumable(folder, record, name):
    path = os.path.join(folder, TUNE_RECORD)
    if not os.path.isfile(path):
        raise UsageError(
            f"project {name!r} in {folder!r} was not started by kerasmlic tune "
            "(no kerasmlic_tune.yaml); pass --overwrite or another --project-name"
        )
    with open(path) as f:
        previous = yaml.safe_load(f) or {}
    diff = _differences(previous, record)
    if diff:
        raise UsageError(
            f"project {name!r} was started with another config (differs in "
            f"{', '.join(diff)}); pass --overwrite or another --project-name"
        )


def choose_mode(tune, *, overwrite=False, resume=False, log=print):
    """Decide between a new, resumed or overwritten project, and say which.

    Args:
        tune: The ``tune`` settings.
        overwrite: Delete an existing project first.
        resume: Continue an existing project.
        log: A ``print``-like function.

    Returns:
        keras-tuner's ``overwrite`` flag.

    Raises:
        UsageError: Both flags; an existing project with neither; ``resume``
            with no project.
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    folder, name = project_dir(tune), tune["project_name"]
    status = project_status(folder)
    if resume:
        if not status["exists"]:
            raise UsageError(f"no project {name!r} in {tune['directory']!r} to resume")
        log(
            f"resuming project {name} in {tune['directory']} "
            f"({status['completed']} trials done, {status['trials']} started)"
        )
        return False
    if overwrite:
        what = f": deleting its {status['trials']} trials" if status["exists"] else ""
        log(f"starting new project {name} in {tune['directory']} (overwriting{what})")
        return True
    if status["exists"]:
        raise UsageError(
            f"project {name!r} in {tune['directory']!r} already holds {status['trials']} trials "
            f"({status['completed']} completed): pass --resume to continue it or --overwrite "
            "to start over"
        )
    log(f"starting new project {name} in {tune['directory']}")
    return True


def _strategy(base):
    if base["train"]["strategy"] == "default":
        return None
    from kerasmlic.training.strategy import make_strategy

    return make_strategy(base["train"]["strategy"])


def _worker_trials(folder, tuner_id):
    count = 0
    for path in glob.glob(os.path.join(folder, "trial_*", TRIAL_RECORD)):
        try:
            with open(path) as f:
                count += json.load(f).get("tuner_id") == tuner_id
        except (OSError, ValueError):
            continue
    return count


def tune(
    config,
    *,
    data_dir=None,
    tuner=None,
    max_trials=None,
    epochs=None,
    project_name=None,
    directory=None,
    overwrite=False,
    resume=False,
    overrides=(),
    log=print,
):
    """Run a keras-tuner search over kerasmlic models; write leaderboard, best config, best run.

    In distributed tuning (``KERASTUNER_*`` variables, see
    :mod:`kerasmlic.tuning.distributed`) a worker only runs trials; the chief
    serves the oracle, then writes the results.

    Args:
        config: A tuning YAML path or dict (a training config plus ``tune:``).
        data_dir: Shard folder (``--data``).
        tuner: ``hyperband``, ``random`` or ``bayesian`` (overrides ``tune.tuner``).
        max_trials: Overrides ``tune.max_trials``.
        epochs: Overrides ``tune.epochs`` (epochs per trial).
        project_name: Overrides ``tune.project_name``.
        directory: Overrides ``tune.directory``.
        overwrite: Delete an existing project of that name first.
        resume: Continue an existing project (its config must be the same).
        overrides: ``KEY=VALUE`` strings for the base training config.
        log: A ``print``-like function.

    Returns:
        A dict: ``role``, ``project_dir``, and for the chief or a single
        process ``leaderboard`` (markdown), ``best_trial``, ``best_val_mAP``,
        ``best_config`` (YAML path), ``best_run_dir``, ``trials`` (ranked rows);
        for a worker ``trials_run``.

    Raises:
        UsageError: Bad config or space, a project choice that is not explicit,
            a trial config the model rejects, or no completed trial.
    """
    base, settings, specs = load_tune_config(
        config,
        data_dir=data_dir,
        overrides=overrides,
        tuner=tuner,
        max_trials=max_trials,
        epochs=epochs,
        project_name=project_name,
        directory=directory,
    )
    role = distributed.role()
    folder = project_dir(settings)
    record = _record(base, settings)
    if role == "worker":
        if overwrite or resume:
            log("worker: --overwrite/--resume are the chief's choice; ignored here")
        log(
            f"worker {distributed.tuner_id()}: running trials of project "
            f"{settings['project_name']} for the chief at {distributed.oracle_address()}"
        )
        keras_overwrite = False
    else:
        if role == "chief":
            log(f"chief: project {settings['project_name']} in {settings['directory']}")
        keras_overwrite = choose_mode(settings, overwrite=overwrite, resume=resume, log=log)
        if not keras_overwrite:
            _check_resumable(folder, record, settings["project_name"])
    log(
        f"tuner {settings['tuner']}, objective val_mAP (max), {settings['epochs']} epochs per "
        f"trial, max trials {settings['max_trials'] or 'schedule'}; space:\n"
        + "\n".join(f"  {s.name}: {s.describe()}" for s in specs)
    )
    if settings["tuner"] == "hyperband" and settings["epochs"] < settings["factor"]:
        log(
            f"note: Hyperband with {settings['epochs']} epoch(s) per trial, below its factor "
            f"{settings['factor']}, has no successive halving and runs very few trials; raise "
            "--epochs or use --tuner random"
        )
    from kerasmlic.training.builder import fit_verbosity
    from kerasmlic.training.setup import precision_policy
    from kerasmlic.tuning.hypermodel import KerasmlicHyperModel
    from kerasmlic.tuning.tuners import make_tuner

    strategy = _strategy(base)
    hypermodel = KerasmlicHyperModel(base, specs, strategy=strategy, log=log)
    with precision_policy(base):
        search = make_tuner(
            settings["tuner"],
            hypermodel,
            directory=settings["directory"],
            project_name=settings["project_name"],
            overwrite=keras_overwrite,
            epochs=settings["epochs"],
            max_trials=settings["max_trials"],
            factor=settings["factor"],
            hyperband_iterations=settings["hyperband_iterations"],
            seed=settings["seed"],
            max_consecutive_failed_trials=settings["max_consecutive_failed_trials"],
            distribution_strategy=strategy,
            log=log,
        )
        if role != "worker":
            os.makedirs(folder, exist_ok=True)
            results.write_text_atomic(
                os.path.join(folder, TUNE_RECORD), yaml.safe_dump(record, sort_keys=False)
            )
        try:
            search.search(
                epochs=settings["epochs"], verbose=fit_verbosity(base["train"]["verbose"])
            )
        except RuntimeError as e:
            if "consecutive failures" not in str(e):
                raise
            # keras-tuner's message ends with the last trial's traceback.
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            raise UsageError(
                f"stopped after {settings['max_consecutive_failed_trials']} failed trials in a "
                f"row; last error: {lines[-1] if lines else e}"
            ) from None
        if role == "worker":
            ran = _worker_trials(folder, distributed.tuner_id())
            log(f"worker {distributed.tuner_id()}: done, ran {ran} trial(s)")
            return {"role": role, "project_dir": folder, "trials_run": ran}
        return _write_results(search, hypermodel, base, settings, specs, folder, role, log)


def _write_results(search, hypermodel, base, settings, specs, folder, role, log):
    names = [s.name for s in specs]
    default_epochs = None if settings["tuner"] == "hyperband" else settings["epochs"]
    title = (
        f"Tuning project `{settings['project_name']}` ({settings['tuner']}, objective val mAP "
        "on the validation split, package metric)"
    )
    markdown, ranked = results.write_leaderboard(
        folder, names, default_epochs=default_epochs, title=title
    )
    log(markdown)
    best = ranked[0] if ranked else None
    if best is None or best["status"] != "COMPLETED" or best["score"] is None:
        raise UsageError(
            f"no trial of project {settings['project_name']!r} completed; see "
            f"{os.path.join(folder, results.LEADERBOARD_MD)} and the trial folders"
        )
    values = {k: v for k, v in best["values"].items() if not k.startswith("tuner/")}
    best_config = space_lib.trial_config(base, values)
    best_config["run_dir"] = os.path.join("runs", f"{settings['project_name']}-best")
    config_path = os.path.join(folder, results.BEST_CONFIG)
    results.write_best_config(
        best_config,
        config_path,
        project_name=settings["project_name"],
        trial_id=best["trial_id"],
        score=best["score"],
    )
    log(f"best trial {best['trial_id']}: val mAP {100 * best['score']:.2f}%; config {config_path}")
    trial = search.oracle.get_trial(best["trial_id"])
    model = search.load_model(trial)
    trained = copy.deepcopy(best_config)
    trained["train"]["epochs"] = int(best["values"].get("tuner/epochs", settings["epochs"]))
    run_dir = os.path.join(folder, results.BEST_RUN)
    evaluation = results.write_best_run(
        model,
        trained,
        run_dir,
        data_dir=hypermodel.data_dir,
        manifest=hypermodel.manifest,
        trial=best,
        log=log,
    )
    log(f"export it: kerasmlic export {run_dir} --out saved_models/{settings['project_name']}")
    return {
        "role": role,
        "project_dir": folder,
        "leaderboard": markdown,
        "best_trial": best["trial_id"],
        "best_val_mAP": best["score"],
        "best_eval_mAP": evaluation["mAP"],
        "best_config": config_path,
        "best_run_dir": run_dir,
        "trials": ranked,
    }
