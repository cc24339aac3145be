r"""``kerasmlic reproduce``: every model, tuned alike, trained over seeds, then the report.

For each model (default: all eleven registered models, the study's eight
first), with its config ``experiments/<name>.yaml`` (the defaults with the
model's name when the file is missing):

1. **Learning rate**: a keras-tuner grid search over the same rates for every
   model (:data:`DEFAULT_RATES`, ``--rates``), each trial trained for the same
   ``--tune-epochs`` (default half the training epochs) with seed 0 and
   scored by val mAP; the best rate is recorded in ``OUT/<name>/tuning.json``
   (project in ``OUT/tune/<name>``). ``--rates none`` keeps the configs' rates.
2. **Seeds**: ``--seeds N`` full trainings with that rate and ``train.seed`` =
   0..N-1, into ``OUT/<name>/seed-<k>``; ``--seed-set KEY=VALUE`` overrides
   apply to these and not to the tuning trials.
3. **Figures** on the ``test`` split when the shards have one (``kerasmlic
   synth --test N`` + ``build --split test``), else on val (said in the
   report); best epoch, early stopping and the rate were chosen on val.

``results.md`` gives mean ± standard deviation over the seeds per metric, a
paired t-test of each model against BCE on F1@3, the ordering check on the
means and ``seed_error_bars.png``. Finished runs, evaluations and tuning
records in ``OUT`` are reused and an interrupted run resumes, so running the
command again after a crash only does what is left.

Sizing of the built-in study (:data:`STUDY_SIZE`, ``make study``): 1000 train /
500 val / 1000 test images at 64 px, batch 16, 24 epochs per training with the
cosine schedule decaying to 0, 2 rates (1e-3, 2e-3) × 6 epochs of tuning per
model (in 22 grids of 4 rates × 3 epochs neither 5e-4 nor 4e-3 ever won, and
6-epoch trials pick the better rate more often), 3 seeds, precise BatchNorm
over 16 training batches after every epoch (trials and seeds), and the seeds
evaluated on an exponential moving average of their weights
(``train.use_ema``; not the tuning trials: the probes behind the grid ran
without it, ``experiments/README.md``)::

    kerasmlic synth data/study --train 1000 --val 500 --test 1000 --seed 1
    for s in train val test; do kerasmlic build --split $s --out data/study-shards \
        --annotations data/study/annotations/instances_$s.json --images data/study/$s; done
    kerasmlic reproduce --data data/study-shards --seeds 3 --epochs 24 \
        --rates 0.001,0.002 --tune-epochs 6 \
        --set data.batch_size=16 --set train.min_learning_rate_ratio=0 \
        --set train.precise_bn_batches=16 --seed-set train.use_ema=true --out runs/study

Its measured time and convergence are in ``experiments/README.md``.
"""

import copy
import json
import os
import shlex
import sys
import time

from kerasmlic.errors import UsageError
from kerasmlic.reporting.results import STUDY_MODELS
from kerasmlic.training import config as config_lib
from kerasmlic.training.rundir import config_fingerprint, finished_run_differences

DEFAULT_OUT = os.path.join("runs", "reproduce")

DEFAULT_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
"""The learning rates every model's grid search tries (the same 4 for all)."""

TUNING_RECORD = "tuning.json"

STUDY_SIZE = {
    "train": 1000,
    "val": 500,
    "test": 1000,
    "synth_seed": 1,
    "image_size": 64,
    "batch_size": 16,
    "epochs": 24,
    "min_learning_rate_ratio": 0.0,
    "tune_epochs": 6,
    "rates": (1e-3, 2e-3),
    "precise_bn_batches": 16,
    "seeds": 3,
    "seed_use_ema": True,
}
"""The built-in study's size (command: the module docstring; time: experiments/README.md)."""


def _cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def experiments_dir():
    """Return the repository's ``experiments/`` folder, or None when it is not there.

    Returns:
        A path or None.
    """
    # kerasmlic/reporting/reproduce.py → the repository root is three levels up.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "experiments")
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
        out: Reproduction folder (runs go to ``out/<name>/seed-<k>``).
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


def all_models():
    """Return every registered model, the study's eight first in its table's order.

    Returns:
        A list of registry names.
    """
    from kerasmlic.models.registry import model_names

    names = list(model_names())
    return [m for m in STUDY_MODELS if m in names] + [m for m in names if m not in STUDY_MODELS]


def report_split(manifest):
    """Return the split the study reports on: ``test`` when the shards have it, else ``val``.

    Args:
        manifest: The shard folder's manifest.

    Returns:
        A split name.
    """
    return "test" if "test" in manifest["splits"] else "val"


def tune_learning_rate(config, rates, epochs, out, *, log=print):
    """Pick a model's learning rate with a keras-tuner grid search on val mAP.

    A record in ``out/<name>/tuning.json`` from an earlier call with the same
    rates, epochs, config and shards (its ``fingerprint``) is reused; one of
    another config or of rebuilt shards is searched again and replaced.

    Args:
        config: The model's resolved config (its other settings are kept).
        rates: Learning rates to try (each one trial).
        epochs: Epochs per trial.
        out: The study's output folder.
        log: A ``print``-like function.

    Returns:
        The record: ``rates``, ``epochs``, ``val_mAP`` (rate text → best val
        mAP of the trial, None when it failed), ``chosen`` and ``seconds``
        (the search's wall time; keras-tuner's trials keep none).
    """
    import keras

    from kerasmlic.data.manifest import write_json_atomic
    from kerasmlic.tuning import tune

    name = config["model"]["name"]
    path = os.path.join(out, name, TUNING_RECORD)
    rates = [float(r) for r in rates]
    base = copy.deepcopy(config)
    base["run_dir"] = None
    base["tune"] = {
        "tuner": "grid",
        "epochs": epochs,
        "seed": 0,
        "max_consecutive_failed_trials": len(rates),
        "space": {"train.learning_rate": {"choice": rates}},
    }
    base["train"]["seed"] = 0
    fingerprint = config_fingerprint(base, config["data"]["dir"])
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        if record.get("fingerprint") == fingerprint:
            log(f"{name}: learning rate {record['chosen']:g} from {path}, reused")
            return record
        log(f"{name}: {path} is of another config or of rebuilt shards; searching again")
    search_start = time.time()
    result = tune(
        base,
        project_name=name,
        directory=os.path.join(out, "tune"),
        overwrite=True,
        log=log,
    )
    seconds = time.time() - search_start
    keras.backend.clear_session()
    scores = {}
    for row in result["trials"]:
        rate = row["values"].get("train.learning_rate")
        if rate is not None:
            scores[repr(float(rate))] = row["score"] if row["status"] == "COMPLETED" else None
    chosen = float(result["trials"][0]["values"]["train.learning_rate"])
    record = {
        "rates": rates,
        "epochs": epochs,
        "val_mAP": scores,
        "chosen": chosen,
        "seconds": round(seconds, 1),
        "fingerprint": fingerprint,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, record)
    log(f"{name}: learning rate {chosen:g} (val mAP {100 * result['best_val_mAP']:.1f})")
    return record


def seed_run_dir(out, name, seed):
    """Return ``out/<name>/seed-<seed>``: one training of one model."""
    return os.path.join(out, name, f"seed-{seed}")


def reproduce(
    data_dir,
    models=None,
    epochs=None,
    out=None,
    *,
    seeds=1,
    rates=DEFAULT_RATES,
    tune_epochs=None,
    overrides=(),
    seed_overrides=(),
    log=print,
):
    """Tune, train over seeds and report every model of the study (or ``models``).

    Args:
        data_dir: Shard folder made by ``kerasmlic build``.
        models: Registry names (default: all registered models).
        epochs: Override every config's ``train.epochs``.
        out: Output folder (default ``runs/reproduce``).
        seeds: Trainings per model (``train.seed`` 0..seeds-1).
        rates: Learning rates of each model's grid search; None or empty
            keeps each config's rate.
        tune_epochs: Epochs per tuning trial (default half the training
            epochs, at least 1).
        overrides: ``KEY=VALUE`` strings applied to every model's config.
        seed_overrides: ``KEY=VALUE`` strings applied after ``overrides`` to
            the seed trainings only, not the tuning trials (``--seed-set``):
            a setting that a short trial would judge unfairly, such as a
            slow ``train.bn_momentum`` whose statistics lag the weights for
            the first epochs.
        log: A ``print``-like function.

    Returns:
        :func:`kerasmlic.reporting.results.write_study_report`'s dict, plus
        ``split`` (the reported split), ``tuning`` and ``run_dirs``
        (``{model: [run dirs]}``).

    Raises:
        UsageError: Unknown model, missing data, a bad config or count.
    """
    from kerasmlic.data.manifest import load_manifest
    from kerasmlic.evaluation import evaluate_run
    from kerasmlic.evaluation.rundir import RunPaths, is_finished
    from kerasmlic.models.registry import model_names
    from kerasmlic.reporting.results import write_study_report
    from kerasmlic.training import train

    start, cpu_start = time.time(), _cpu_seconds()
    manifest = load_manifest(data_dir)  # a clear error before any training
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"--seeds must be a positive integer, got {seeds!r}")
    models = list(models) if models else all_models()
    valid = model_names()
    unknown = [m for m in models if m not in valid]
    if unknown:
        raise UsageError(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(valid)}")
    rates = list(rates or ())
    if any(not isinstance(r, int | float) or isinstance(r, bool) or r <= 0 for r in rates):
        raise UsageError(f"--rates must be positive numbers, got {rates!r}")
    out = out or DEFAULT_OUT
    split = report_split(manifest)
    if split != "test":
        log(
            "note: the shards have no test split, so the figures are on val (also used for "
            "model selection); build one with `kerasmlic synth --test N` + `build --split test`"
        )
    # Both configs of every model are resolved (and so validated) before any training.
    configs = [
        (
            run_config(m, data_dir, out, epochs=epochs, overrides=overrides),
            run_config(m, data_dir, out, epochs=epochs, overrides=[*overrides, *seed_overrides]),
        )
        for m in models
    ]
    tuning, groups = {}, {}
    for i, (config, seed_config) in enumerate(configs, 1):
        import keras

        name = config["model"]["name"]
        source = model_config_path(name) or "defaults"
        log(f"[{i}/{len(configs)}] {name} ({source})")
        if rates:
            trial_epochs = tune_epochs or max(1, config["train"]["epochs"] // 2)
            tuning[name] = tune_learning_rate(config, rates, trial_epochs, out, log=log)
            seed_config["train"]["learning_rate"] = tuning[name]["chosen"]
        groups[name] = []
        for seed in range(seeds):
            run = copy.deepcopy(seed_config)
            run["train"]["seed"] = seed
            run["run_dir"] = seed_run_dir(out, name, seed)
            if is_finished(run["run_dir"]):
                stale = finished_run_differences(run["run_dir"], run, data_dir)
                if stale:
                    raise UsageError(
                        f"{run['run_dir']} holds a finished run of another config or of "
                        f"rebuilt shards (differs in {', '.join(stale)}); delete it or pass "
                        "another --out"
                    )
                log(f"{name} seed {seed}: finished run in {run['run_dir']}, reused")
            else:
                log(f"{name} seed {seed}: training into {run['run_dir']}")
                train(run, log=log)
                keras.backend.clear_session()  # free the finished model's graphs and variables
            if not os.path.isfile(RunPaths(run["run_dir"]).eval_json(split)):
                evaluate_run(run["run_dir"], data_dir, split, log=None)
                keras.backend.clear_session()
            groups[name].append(run["run_dir"])
    command = "kerasmlic " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not sys.argv[1:2] == ["reproduce"]:
        command = (
            f"kerasmlic reproduce --data {data_dir} --models {','.join(models)}"
            + (f" --epochs {epochs}" if epochs else "")
            + f" --seeds {seeds} --rates {','.join(f'{r:g}' for r in rates) or 'none'}"
            + (f" --tune-epochs {tune_epochs}" if tune_epochs else "")
            + "".join(f" --set {shlex.quote(o)}" for o in overrides)
            + "".join(f" --seed-set {shlex.quote(o)}" for o in seed_overrides)
            + f" --out {out}"
        )
    report = write_study_report(
        groups,
        data_dir,
        out,
        split=split,
        tuning=tuning,
        command=command,
        wall_seconds=time.time() - start,
        cpu_seconds=_cpu_seconds() - cpu_start,
    )
    log(f"wrote {report['results']} and {len(report['plots'])} plots in {out}")
    return {**report, "split": split, "tuning": tuning, "run_dirs": groups}
