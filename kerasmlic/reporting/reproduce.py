r"""``kerasmlic reproduce``: every model, tuned alike, trained over seeds, then the report.

For each model (default: all eleven registered models, the study's eight
first), with its config ``experiments/<name>.yaml`` (the defaults with the
model's name when the file is missing):

1. **Learning rate**: a keras-tuner grid search over the same rates for every
   model (:data:`DEFAULT_RATES`, ``--rates``), each trial trained for the same
   ``--tune-epochs`` (default half the training epochs) with seed 0 and
   scored by val mAP; the best rate is recorded in ``OUT/<name>/tuning.json``
   (project in ``OUT/tune/<name>``). ``--rates none`` keeps the configs' rates.
   ``--rate-selection full`` trains seed 0 for the whole run at each rate
   instead, into ``OUT/<name>/lr-<rate>/seed-0``, and keeps the best rate's
   run as seed 0 (same record).
2. **Seeds**: ``--seeds N`` full trainings with that rate and ``train.seed`` =
   0..N-1, into ``OUT/<name>/seed-<k>`` (``OUT/<name>/lr-<rate>/seed-<k>``
   with full-length selection); ``--seed-set KEY=VALUE`` overrides apply to
   these and not to the tuning trials. With ``evaluation.every`` > 1
   each run's last 3 epochs are still validated: the report's convergence
   rule compares their val mAPs.
3. **Figures** on the ``test`` split when the shards have one (``kerasmlic
   synth --test N`` + ``build --split test``), else on val (said in the
   report); best epoch, early stopping and the rate were chosen on val.

``results.md`` gives mean ± standard deviation over the seeds per metric, a
paired t-test of each model against BCE on F1@3, the ordering check on the
means and ``seed_error_bars.png``. Finished runs, evaluations and tuning
records in ``OUT`` are reused and an interrupted run resumes, so running the
command again after a crash only does what is left. ``--jobs N`` runs N
searches, then N seed runs, at once, each in a worker process that dies with
this one: one TensorFlow process keeps about 1.4 of 2 cores busy, so two
fill them.

Sizing of the built-in study (:data:`STUDY_SIZE`, ``make study``): 800 train /
1000 val / 1000 test images at 64 px, batch 16, 24 epochs per training with the
cosine schedule decaying to 0, each model's rate chosen between 1e-3 and 2e-3
by full-length seed-0 runs (``--rate-selection full``: short trials picked
2e-3 for decoders that end better at 1e-3, in run after run; in 22 grids of 4
rates neither 5e-4 nor 4e-3 ever won), 3 seeds, precise BatchNorm over 16
training batches before every validation pass, every run deterministic
(``train.deterministic``: the same seed retrains to the same figures),
evaluated on an exponential moving average of its weights (``train.use_ema``)
at momentum 0.98, a horizon of about one 48-step epoch of the 24 (at the default
0.99 the three widest last-3-epoch spreads of 33 runs were 0.30 to 0.57 point,
one over the 0.5 rule; at 0.98 the same runs retrained to within 0.16, at the
same val mAP), and validated every 6 epochs and on each of the last 3, two
tasks at once. The val split is as large as the test split: at 500 images a
quarter of the classes had under 10 positives, and in the last epochs, at a
learning rate near 0, val mAP still moved by up to 0.9 point from one epoch to
the next::

    kerasmlic synth data/study --train 800 --val 1000 --test 1000 --seed 1
    for s in train val test; do kerasmlic build --split $s --out data/study-shards \
        --annotations data/study/annotations/instances_$s.json --images data/study/$s; done
    kerasmlic reproduce --data data/study-shards --seeds 3 --epochs 24 \
        --rates 0.001,0.002 --rate-selection full \
        --set data.batch_size=16 --set train.min_learning_rate_ratio=0 \
        --set train.precise_bn_batches=16 --set train.deterministic=true \
        --seed-set train.use_ema=true --seed-set train.ema_momentum=0.98 \
        --seed-set evaluation.every=6 --jobs 2 --out runs/study

Its measured time and convergence are in ``experiments/README.md``.
"""

import copy
import os
import shlex
import sys
import time

from kerasmlic.errors import UsageError
from kerasmlic.reporting.rate_search import (
    DEFAULT_RATES,
    RATE_SELECTIONS,
    finished_run_score,
    full_length_selection,
    reusable_tuning_record,
    selection_task,
    tune_task,
)
from kerasmlic.reporting.runs import CONVERGED_EPOCHS, STUDY_MODELS
from kerasmlic.training import config as config_lib
from kerasmlic.training.rundir import finished_run_differences

DEFAULT_OUT = os.path.join("runs", "reproduce")

STUDY_SIZE = {
    "train": 800,
    "val": 1000,
    "test": 1000,
    "synth_seed": 1,
    "image_size": 64,
    "batch_size": 16,
    "epochs": 24,
    "min_learning_rate_ratio": 0.0,
    "rate_selection": "full",
    "rates": (1e-3, 2e-3),
    "precise_bn_batches": 16,
    "deterministic": True,
    "seeds": 3,
    "seed_use_ema": True,
    "seed_ema_momentum": 0.98,
    "seed_evaluation_every": 6,
    "jobs": 2,
}
"""The built-in study's size (command: the module docstring; time: experiments/README.md)."""


def _cpu_seconds():
    """CPU time (user + system) of this process and of its finished worker processes."""
    import resource

    own, workers = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


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


def _select_rates_full_length(seed_configs, rates, out, data_dir, jobs, log):
    """Train seed 0 of every model at every rate for the whole run; record each choice.

    Returns:
        ``{model name: record}`` (:func:`full_length_selection`).
    """
    from kerasmlic.evaluation.rundir import is_finished

    scores, run_dirs, tasks = {}, {}, []
    for seed_config in seed_configs:
        name = seed_config["model"]["name"]
        for rate in rates:
            run = _seed_run(seed_config, out, data_dir, 0, rate)
            run_dirs.setdefault(name, {})[rate] = run["run_dir"]
            if is_finished(run["run_dir"]):
                scores[name, rate] = finished_run_score(run["run_dir"])
            else:
                tasks.append((f"{name} lr {rate:g}", (run,)))
    for name, rate, score in _run_tasks("rate-selection runs", selection_task, tasks, jobs, log):
        scores[name, rate] = score
    tuning = {}
    for name, dirs in run_dirs.items():
        record = full_length_selection(
            name, rates, {rate: scores[name, rate] for rate in rates}, dirs, out
        )
        best = record["val_mAP"][repr(record["chosen"])]
        log(
            f"{name}: learning rate {record['chosen']:g} (seed 0's best val mAP "
            f"{100 * best:.1f} over {record['epochs']} epochs)"
        )
        tuning[name] = record
    return tuning


def _seed_task(run, data_dir, split, log=print):
    """Train one seed run unless it finished, then evaluate it on ``split`` unless done."""
    import keras

    from kerasmlic.evaluation import evaluate_run
    from kerasmlic.evaluation.rundir import RunPaths, is_finished
    from kerasmlic.training import train

    name, seed = run["model"]["name"], run["train"]["seed"]
    if not is_finished(run["run_dir"]):
        log(f"{name} seed {seed}: training into {run['run_dir']}")
        train(run, log=log)
        keras.backend.clear_session()  # free the finished model's graphs and variables
    if not os.path.isfile(RunPaths(run["run_dir"]).eval_json(split)):
        evaluate_run(run["run_dir"], data_dir, split, log=None)
        keras.backend.clear_session()
    return run["run_dir"]


def _start_worker():
    """A worker process's set-up: TensorFlow's start-up lines quietened as in the CLI."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kerasmlic import quiet_start

    quiet_start.install()


def _run_tasks(kind, function, tasks, jobs, log):
    """Yield ``function(*args)`` for every ``(label, args)`` task.

    With ``jobs`` 1 the tasks run here, in order, logging through ``log``;
    otherwise in ``min(jobs, len(tasks))`` worker processes, which print their
    lines behind ``[label]`` and are killed if a task fails or the caller stops
    (a killed training resumes on the next call).
    """
    from kerasmlic.processes import WorkerPool

    if jobs == 1:
        for _, args in tasks:
            yield function(*args, log=log)
        return
    if not tasks:
        return
    size = min(jobs, len(tasks))
    with WorkerPool(size, initializer=_start_worker, expected_errors=(UsageError,)) as pool:
        pids = ", ".join(map(str, pool.pids))
        log(f"{len(tasks)} {kind} in {size} worker processes (pids {pids})")
        yield from pool.map_unordered(function, tasks)


def costliest_first(tasks, tuning):
    """Order ``(model name, label, args)`` tasks by their model's recorded rate-search time.

    The costliest models go first, so the last tasks to finish are short ones
    and no worker idles long at the end. A model without a record, or a
    record without a time, goes last; ties keep their order.

    Args:
        tasks: ``(model name, label, args)`` tuples.
        tuning: ``{model name: tuning record}`` (``seconds``).

    Returns:
        A new list.

    Example:
        >>> costliest_first([("a", "a", ()), ("b", "b", ()), ("c", "c", ())],
        ...                 {"a": {"seconds": 5.0}, "c": {"seconds": 9.0}})
        [('c', 'c', ()), ('a', 'a', ()), ('b', 'b', ())]
    """
    return sorted(tasks, key=lambda task: -(tuning.get(task[0], {}).get("seconds") or 0))


def seed_run_dir(out, name, seed, rate=None):
    """Return ``out/<name>/seed-<seed>``, or ``out/<name>/lr-<rate>/seed-<seed>``.

    Args:
        out: The study's output folder.
        name: A registry name.
        seed: ``train.seed``.
        rate: The learning rate, for full-length rate selection, whose runs
            of every rate live side by side.

    Returns:
        A path.
    """
    if rate is None:
        return os.path.join(out, name, f"seed-{seed}")
    return os.path.join(out, name, f"lr-{rate:g}", f"seed-{seed}")


def _seed_run(seed_config, out, data_dir, seed, rate=None):
    """One seed run's config; a finished run of another config in its folder raises."""
    from kerasmlic.evaluation.rundir import is_finished

    run = copy.deepcopy(seed_config)
    run["train"]["seed"] = seed
    if rate is not None:
        run["train"]["learning_rate"] = rate
    run["run_dir"] = seed_run_dir(out, run["model"]["name"], seed, rate)
    if is_finished(run["run_dir"]):
        stale = finished_run_differences(run["run_dir"], run, data_dir)
        if stale:
            raise UsageError(
                f"{run['run_dir']} holds a finished run of another config or of "
                f"rebuilt shards (differs in {', '.join(stale)}); delete it or pass "
                "another --out"
            )
    return run


def reproduce(
    data_dir,
    models=None,
    epochs=None,
    out=None,
    *,
    seeds=1,
    rates=DEFAULT_RATES,
    tune_epochs=None,
    trial_seeds=1,
    rate_selection="trials",
    overrides=(),
    seed_overrides=(),
    jobs=1,
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
        trial_seeds: Trials per rate (``--trial-seeds``; ``train.seed``
            0..N-1); a rate scores the mean of its trials' val mAP.
        rate_selection: ``"trials"`` (default): the keras-tuner grid of
            short trials. ``"full"`` (``--rate-selection full``): seed 0 is
            trained for the whole run at each rate, with the seed runs'
            settings, into ``OUT/<name>/lr-<rate>/seed-0``; the rate whose
            run has the best val mAP is kept and its run is seed 0, the other
            seeds follow in ``OUT/<name>/lr-<rate>/seed-<k>``. Short trials
            favour the rate that learns fastest, not the one that ends best
            (``experiments/study-runs.md``); full-length runs cannot, for one
            extra training per extra rate.
        overrides: ``KEY=VALUE`` strings applied to every model's config.
        seed_overrides: ``KEY=VALUE`` strings applied after ``overrides`` to
            the seed trainings only, not the tuning trials (``--seed-set``):
            a setting that a short trial would judge unfairly, such as a
            slow ``train.bn_momentum`` whose statistics lag the weights for
            the first epochs.
        jobs: Searches (or full-length selection runs) and seed runs at
            once, each in its own worker process (``--jobs``; default 1: one
            after another, in this process). All of the rate selection runs
            before the other seed runs, whose rates it picks.
        log: A ``print``-like function.

    Returns:
        :func:`kerasmlic.reporting.results.write_study_report`'s dict, plus
        ``split`` (the reported split), ``tuning`` and ``run_dirs``
        (``{model: [run dirs]}``).

    Raises:
        UsageError: Unknown model, missing data, a bad config or count.
    """
    from kerasmlic.data.manifest import load_manifest
    from kerasmlic.evaluation.rundir import RunPaths, is_finished
    from kerasmlic.models.registry import model_names
    from kerasmlic.reporting.results import write_study_report

    start, cpu_start = time.time(), _cpu_seconds()
    manifest = load_manifest(data_dir)  # a clear error before any training
    for flag, value in (("--seeds", seeds), ("--jobs", jobs), ("--trial-seeds", trial_seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value!r}")
    if rate_selection not in RATE_SELECTIONS:
        raise UsageError(
            f"--rate-selection must be one of {', '.join(RATE_SELECTIONS)}, got {rate_selection!r}"
        )
    models = list(models) if models else all_models()
    valid = model_names()
    unknown = [m for m in models if m not in valid]
    if unknown:
        raise UsageError(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(valid)}")
    rates = list(rates or ())
    if any(not isinstance(r, int | float) or isinstance(r, bool) or r <= 0 for r in rates):
        raise UsageError(f"--rates must be positive numbers, got {rates!r}")
    full_length = rate_selection == "full"
    if full_length and (not rates or tune_epochs is not None or trial_seeds != 1):
        raise UsageError(
            "--rate-selection full trains seed 0 for the whole run at each of --rates: it "
            "needs --rates and takes no --tune-epochs or --trial-seeds"
        )
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
    for i, (config, seed_config) in enumerate(configs, 1):
        name = config["model"]["name"]
        log(f"[{i}/{len(configs)}] {name} ({model_config_path(name) or 'defaults'})")
        evaluation = seed_config["evaluation"]
        if evaluation["every"] > 1:
            # The convergence rule reads the last 3 val mAPs: those epochs are each
            # validated whatever evaluation.every says.
            evaluation["last_epochs"] = max(evaluation["last_epochs"], CONVERGED_EPOCHS)
    tuning = {}
    if full_length:
        seed_configs = [seed_config for _, seed_config in configs]
        tuning = _select_rates_full_length(seed_configs, rates, out, data_dir, jobs, log)
    elif rates:
        searches = []
        for config, _ in configs:
            name = config["model"]["name"]
            trial_epochs = tune_epochs or max(1, config["train"]["epochs"] // 2)
            record = reusable_tuning_record(
                config, rates, trial_epochs, out, trial_seeds=trial_seeds, log=log
            )
            if record is None:
                searches.append((name, (config, rates, trial_epochs, out, trial_seeds)))
            else:
                tuning[name] = record
        for name, record in _run_tasks("searches", tune_task, searches, jobs, log):
            tuning[name] = record
    groups, seed_tasks = {}, []
    for _, seed_config in configs:
        name = seed_config["model"]["name"]
        if rates and not full_length:
            seed_config["train"]["learning_rate"] = tuning[name]["chosen"]
        rate = tuning[name]["chosen"] if full_length else None
        groups[name] = []
        for seed in range(seeds):
            run = _seed_run(seed_config, out, data_dir, seed, rate)
            groups[name].append(run["run_dir"])
            if is_finished(run["run_dir"]) and os.path.isfile(
                RunPaths(run["run_dir"]).eval_json(split)
            ):
                log(f"{name} seed {seed}: finished and evaluated in {run['run_dir']}, reused")
                continue
            seed_tasks.append((name, f"{name} seed {seed}", (run, data_dir, split)))
    if jobs > 1:
        seed_tasks = costliest_first(seed_tasks, tuning)
    seed_tasks = [(label, args) for _, label, args in seed_tasks]
    for _ in _run_tasks("seed runs", _seed_task, seed_tasks, jobs, log):
        pass
    command = "kerasmlic " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not sys.argv[1:2] == ["reproduce"]:
        command = (
            f"kerasmlic reproduce --data {data_dir} --models {','.join(models)}"
            + (f" --epochs {epochs}" if epochs else "")
            + f" --seeds {seeds} --rates {','.join(f'{r:g}' for r in rates) or 'none'}"
            + (" --rate-selection full" if full_length else "")
            + (f" --tune-epochs {tune_epochs}" if tune_epochs else "")
            + "".join(f" --set {shlex.quote(o)}" for o in overrides)
            + "".join(f" --seed-set {shlex.quote(o)}" for o in seed_overrides)
            + (f" --jobs {jobs}" if jobs > 1 else "")
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
        cpu_seconds=_cpu_seconds() - cpu_start,  # the workers' included
    )
    log(f"wrote {report['results']} and {len(report['plots'])} plots in {out}")
    return {**report, "split": split, "tuning": tuning, "run_dirs": groups}
