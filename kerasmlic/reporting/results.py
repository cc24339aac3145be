"""``results.md`` in the study's table layout, plus the plots and the analysis.

The study's table gives precision, recall and F1 of each image's top-3
labels pooled over all images (``OP_top3``/``OR_top3``/``OF1_top3``); we
print those, then mAP, CF1 and OF1 on the predicted label sets.
"""

import json
import math
import os
import platform
import time

import numpy as np

from kerasmlic.data.manifest import class_names, load_manifest, split_info
from kerasmlic.errors import UsageError

STUDY_MODELS = (
    "warp",
    "softmax",
    "bce",
    "rnn_hidden",
    "joint_embedding",
    "rnn_input",
    "seq2seq_attention",
    "seq2seq",
)
"""The study's eight models, in the order of its table."""

STUDY_TABLE = {
    "warp": ("WARP", 59.8, 61.4, 60.7),
    "softmax": ("Softmax", 60.2, 62.1, 61.1),
    "bce": ("Binary cross entropy", 61.7, 65.0, 63.3),
    "rnn_hidden": ("CNN initialize – hidden state", 64.0, 64.1, 64.1),
    "joint_embedding": ("Image/label joint embedding", 66.6, 65.3, 65.9),
    "rnn_input": ("CNN initialize – input", 67.2, 66.1, 66.6),
    "seq2seq_attention": ("CNN seq2seq attention", 67.7, 65.6, 66.6),
    "seq2seq": ("CNN seq2seq", 68.9, 65.6, 67.2),
}
"""Registry name → (study's row label, P, R, F1) on COCO (top-3 overall)."""

PLOT_FILES = {
    "seeds": "seed_error_bars.png",
    "pr": "pr_curves.png",
    "per_class": "per_class_ap.png",
    "training": "training_curves.png",
    "analysis": "ap_gain_analysis.png",
}


def is_sequence_model(name):
    """Return True for models that decode a label sequence (the study's RNN family).

    Args:
        name: A registry name.

    Returns:
        A bool.
    """
    from kerasmlic.models.registry import get_model_class

    return bool(get_model_class(name).uses_sequences)


def load_run(run_dir, split="val"):
    """Load what the report needs from a finished run directory.

    Args:
        run_dir: A run directory.
        split: The evaluated split.

    Returns:
        A dict: ``name``, ``run_dir``, ``config`` (dict), ``eval``,
        ``summary``, ``history`` (columns), ``predictions`` (arrays or None).

    Raises:
        UsageError: The run has no evaluation of ``split``.
    """
    import yaml

    from kerasmlic.evaluation.rundir import RunPaths, read_history

    paths = RunPaths(run_dir)
    eval_path = paths.eval_json(split)
    if not os.path.isfile(eval_path):
        raise UsageError(f"{run_dir!r} has no {os.path.basename(eval_path)}: unfinished run?")
    with open(eval_path) as f:
        results = json.load(f)
    config = {}
    if os.path.isfile(paths.config):
        with open(paths.config) as f:
            config = yaml.safe_load(f) or {}
    summary = {}
    if os.path.isfile(paths.summary):
        with open(paths.summary) as f:
            summary = json.load(f)
    predictions = None
    if os.path.isfile(paths.predictions(split)):
        with np.load(paths.predictions(split)) as npz:
            predictions = {k: npz[k] for k in npz.files}
    history = read_history(paths.history)
    name = (config.get("model") or {}).get("name") or os.path.basename(os.path.normpath(run_dir))
    return {
        "name": name,
        "run_dir": run_dir,
        "config": config,
        "eval": results,
        "summary": summary,
        "history": history,
        "predictions": predictions,
    }


def _pct(value):
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _train_minutes(run):
    seconds = run["history"].get("epoch_seconds")
    if seconds:
        return sum(s for s in seconds if math.isfinite(s)) / 60.0
    return run["summary"].get("train_seconds_this_process", float("nan")) / 60.0


def results_table(runs):
    """The study's table layout as Markdown, one row per run, in the study's order.

    Args:
        runs: Loaded runs.

    Returns:
        Markdown text (header + rows).
    """
    order = {name: i for i, name in enumerate(STUDY_MODELS)}
    runs = sorted(runs, key=lambda r: (order.get(r["name"], len(order)), r["name"]))
    lines = [
        "| model | P | R | F1 | mAP | CF1 | OF1 | epochs | train min | study P / R / F1 (COCO) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        e = run["eval"]
        label, *study = STUDY_TABLE.get(run["name"], (run["name"], None, None, None))
        study_text = " / ".join(f"{v:.1f}" for v in study) if study[0] is not None else "–"
        epochs = len(run["history"].get("epoch", [])) or run["summary"].get("epochs", "–")
        lines.append(
            f"| {label} (`{run['name']}`) | {_pct(e['OP_top3'])} | {_pct(e['OR_top3'])} | "
            f"{_pct(e['OF1_top3'])} | {_pct(e['mAP'])} | {_pct(e['CF1'])} | {_pct(e['OF1'])} | "
            f"{epochs} | {_train_minutes(run):.1f} | {study_text} |"
        )
    return "\n".join(lines)


STUDY_METRICS = (
    ("OP_top3", "P"),
    ("OR_top3", "R"),
    ("OF1_top3", "F1"),
    ("mAP", "mAP"),
    ("CF1", "CF1"),
    ("OF1", "OF1"),
)
"""Metric keys of the study table (key, column) as the single-seed table has them."""


def _pm(mean, std):
    if not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if not math.isfinite(std) else f" ± {100 * std:.1f}")


def seed_summary(groups):
    """Mean and standard deviation of every study metric per model, over its seeds.

    Args:
        groups: ``{model name: [loaded runs, one per seed]}``.

    Returns:
        ``{model name: {metric key: (mean, std, n)}}``.
    """
    from kerasmlic.reporting.stats import mean_std

    return {
        name: {key: mean_std([r["eval"][key] for r in runs]) for key, _ in STUDY_METRICS}
        for name, runs in groups.items()
    }


CONVERGED_SPREAD = 0.005
"""A run has converged when its last 3 val mAPs lie within this (0.5 point)."""

CONVERGED_EPOCHS = 3
"""How many final val mAPs the convergence rule compares."""


def last_epochs_spread(history, last=CONVERGED_EPOCHS):
    """Spread (max - min) of the last ``last`` val mAPs of a run's history.

    The study's convergence criterion: no best epoch is restored, so a run
    whose final epochs still move is not converged, whatever its best epoch.

    Args:
        history: A run's history columns (``val_mAP`` per evaluated epoch).
        last: How many final evaluations to compare.

    Returns:
        The spread in mAP units (0-1), or NaN with fewer than ``last`` evaluations.

    Example:
        >>> round(last_epochs_spread({"val_mAP": [0.5, 0.70, 0.71, 0.704]}), 3)
        0.01
    """
    values = [float(v) for v in history.get("val_mAP", []) if math.isfinite(float(v))]
    if len(values) < last:
        return float("nan")
    tail = values[-last:]
    return max(tail) - min(tail)


def _spread_text(runs):
    spreads = [last_epochs_spread(r["history"]) for r in runs]
    if not spreads or not all(math.isfinite(v) for v in spreads):
        return "–"
    worst = max(spreads)
    return f"{100 * worst:.2f}" + (" ✓" if worst <= CONVERGED_SPREAD else " ✗")


def _ordered(names):
    order = {name: i for i, name in enumerate(STUDY_MODELS)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def seed_table(groups, tuning=None):
    """The study's table with ``mean ± std`` over seeds in every metric cell.

    Args:
        groups: ``{model name: [loaded runs, one per seed]}``.
        tuning: Optional ``{model name: tuning record}`` (``chosen`` rate).

    Returns:
        Markdown text (header + rows).
    """
    summary = seed_summary(groups)
    lines = [
        "| model | P | R | F1 | mAP | CF1 | OF1 | seeds | learning rate | epochs "
        "| last-3 spread | train min | study P / R / F1 (COCO) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in _ordered(groups):
        runs = groups[name]
        label, *study = STUDY_TABLE.get(name, (name, None, None, None))
        study_text = " / ".join(f"{v:.1f}" for v in study) if study[0] is not None else "–"
        cells = [_pm(*summary[name][key][:2]) for key, _ in STUDY_METRICS]
        rate = (tuning or {}).get(name, {}).get("chosen")
        if rate is None:
            rate = runs[0]["config"].get("train", {}).get("learning_rate")
        epochs = [len(r["history"].get("epoch", [])) for r in runs]
        epoch_text = str(epochs[0]) if len(set(epochs)) == 1 else f"{min(epochs)}–{max(epochs)}"
        minutes = sum(_train_minutes(r) for r in runs) / len(runs)
        lines.append(
            f"| {label} (`{name}`) | {' | '.join(cells)} | {len(runs)} | "
            f"{'–' if rate is None else f'{rate:.2g}'} | {epoch_text} | {_spread_text(runs)} | "
            f"{minutes:.1f} | {study_text} |"
        )
    return "\n".join(lines)


def paired_table(groups, baseline="bce", key="OF1_top3"):
    """Paired comparison of every model with the baseline on one metric, seed by seed.

    Args:
        groups: ``{model name: [loaded runs]}``; runs are paired by ``train.seed``.
        baseline: The model compared against.
        key: The metric (default F1@3, the study's headline figure).

    Returns:
        ``(lines, comparisons)``: Markdown lines (empty without the baseline)
        and ``{model: paired_comparison dict}``.
    """
    from kerasmlic.reporting.stats import paired_comparison

    if baseline not in groups:
        return [f"- `{baseline}` was not trained: no paired comparison."], {}

    def by_seed(runs):
        return {r["config"].get("train", {}).get("seed", i): r for i, r in enumerate(runs)}

    base = by_seed(groups[baseline])
    lines = [
        f"| model | mean difference in F1@3 vs `{baseline}` (points) | std of the difference | "
        "pairs | t | p (paired t-test, two-sided) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    comparisons = {}
    for name in _ordered(groups):
        if name == baseline:
            continue
        runs = by_seed(groups[name])
        seeds = sorted(set(runs) & set(base))
        result = paired_comparison(
            [runs[s]["eval"][key] for s in seeds], [base[s]["eval"][key] for s in seeds]
        )
        comparisons[name] = result

        def fmt(value, scale=1.0, digits=2):
            return "–" if not math.isfinite(value) else f"{scale * value:+.{digits}f}"

        p, std = result["p"], result["std_diff"]
        lines.append(
            f"| `{name}` | {fmt(result['mean_diff'], 100)} | "
            f"{'–' if not math.isfinite(std) else f'{100 * std:.2f}'} | {result['n']} | "
            f"{fmt(result['t'])} | {'–' if not math.isfinite(p) else p_text(p)} |"
        )
    return lines, comparisons


def ordering_check(runs):
    """Check the study's ordering on F1@3: sequence models ≥ BCE ≥ WARP and softmax.

    Args:
        runs: Loaded runs.

    Returns:
        ``(holds, lines)``: True/False, or None when BCE is missing; and
        Markdown bullet lines explaining each comparison.
    """
    f1 = {r["name"]: r["eval"]["OF1_top3"] for r in runs}
    if "bce" not in f1:
        return None, ["- BCE was not trained, so the ordering cannot be checked."]
    bce = f1["bce"]
    lines, holds = [], True
    for name in sorted(f1):
        if name == "bce":
            continue
        if name in ("warp", "softmax"):
            ok = f1[name] <= bce
            relation = "≤" if ok else ">"
            lines.append(f"- `{name}` F1@3 {_pct(f1[name])} {relation} BCE {_pct(bce)}")
            holds &= ok
        elif is_sequence_model(name):
            ok = f1[name] >= bce
            relation = "≥" if ok else "<"
            lines.append(f"- `{name}` F1@3 {_pct(f1[name])} {relation} BCE {_pct(bce)}")
            holds &= ok
    return holds, lines


def best_sequence_run(runs):
    """Return the sequence model with the highest F1@3 (ties: mAP), or None.

    Args:
        runs: Loaded runs.

    Returns:
        A loaded run or None.
    """
    candidates = [r for r in runs if is_sequence_model(r["name"])]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["eval"]["OF1_top3"], r["eval"]["mAP"] or 0.0))


def seed_mean_runs(groups, summary):
    """Return one run per model whose evaluation holds its seeds' means.

    The multi-seed report checks the ordering, picks the best sequence model
    and measures its per-class AP gain over BCE on these, so none of them rests
    on one seed's draw: each metric is its seed mean from ``summary``, and each
    class's AP is the mean of its APs over the seeds (None where a seed has
    none: a class with no positives in the split has none in any seed).

    Args:
        groups: ``{model name: [loaded runs, one per seed]}``, in report order.
        summary: ``{model name: {metric key: (mean, std, n)}}``, as
            :func:`seed_summary` gives it.

    Returns:
        A list of ``{"name": ..., "eval": {metric key: mean, "per_class": rows}}``.

    Example:
        >>> best_sequence_run(seed_mean_runs(loaded, seed_summary(loaded)))["name"]
        'seq2seq_attention'
    """
    means = []
    for name, runs in groups.items():
        per_class = []
        for rows in zip(*(r["eval"]["per_class"] for r in runs), strict=True):
            aps = [row["AP"] for row in rows]
            per_class.append({"AP": None if None in aps else sum(aps) / len(aps)})
        evaluation = {key: stats[0] for key, stats in summary[name].items()}
        means.append({"name": name, "eval": {**evaluation, "per_class": per_class}})
    return means


def p_text(p):
    """Format a permutation p-value (its floor is 1 / (permutations + 1)).

    Args:
        p: A p-value.

    Returns:
        ``"< 0.001"`` or three decimals.
    """
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _analysis_section(runs, manifest, out, names, basis="F1@3"):
    from kerasmlic.reporting import plots
    from kerasmlic.reporting.analysis import gain_analysis, per_class_ap

    bce = next((r for r in runs if r["name"] == "bce"), None)
    best = best_sequence_run(runs)
    if bce is None or best is None:
        return ["", "## Analysis", "", "Needs BCE and at least one sequence model; skipped."], {}
    train_info = split_info(manifest, "train") if "train" in manifest["splits"] else None
    figures = {}
    figures["per_class"] = plots.plot_per_class_ap(
        best["name"],
        per_class_ap(best["eval"]),
        "bce",
        per_class_ap(bce["eval"]),
        names,
        os.path.join(out, PLOT_FILES["per_class"]),
    )
    lines = ["", "## Analysis: where does the best sequence model beat BCE?", ""]
    if train_info is None or "cooccurrence" not in train_info:
        lines.append("The shards have no train-split co-occurrence statistics; skipped.")
        return lines, figures
    result = gain_analysis(best["eval"], bce["eval"], train_info)
    figures["analysis"] = plots.plot_gain_analysis(
        result, best["name"], "bce", names, os.path.join(out, PLOT_FILES["analysis"])
    )
    co, size = result["cooccurrence_stats"], result["size_stats"]
    lines += [
        f"Best sequence model by {basis}: `{best['name']}`. Per-class AP gain over BCE on "
        f"{result['num_classes']} classes: mean {100 * result['mean_gain']:+.2f} points, "
        f"{result['classes_improved']} classes improved.",
        "",
        "| claim | per-class variable (train split) | Spearman ρ | permutation p | Pearson r |",
        "|---|---|---:|---:|---:|",
        f"| helps objects that commonly appear together | mean other labels per image "
        f"holding the class | {co['rho']:+.3f} | {p_text(co['p'])} | {co['r']:+.3f} |",
        f"| helps objects that are barely discernible | mean object area / image area "
        f"(Pearson on log area) | {size['rho']:+.3f} | {p_text(size['p'])} | {size['r']:+.3f} |",
        "",
        "Support for claim (a) would be ρ > 0 with co-occurrence; for claim (b), ρ < 0 with "
        "object size (bigger gains for smaller objects). p is a two-sided permutation "
        "p-value (2000 permutations, seed 0).",
    ]
    return lines, figures


def machine_description():
    """Return a one-line description of this machine (CPU count, platform, Python, TF).

    Returns:
        A string.
    """
    try:
        import tensorflow as tf

        tf_version = tf.__version__
        gpus = len(tf.config.list_physical_devices("GPU"))
    except ImportError:  # pragma: no cover
        tf_version, gpus = "?", 0
    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpus} GPU, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, TensorFlow {tf_version}"
    )


def write_report(
    run_dirs,
    data_dir,
    out,
    *,
    command=None,
    wall_seconds=None,
    cpu_seconds=None,
    split="val",
    title="Reproduction of the study's table",
):
    """Write ``results.md`` and the PNG plots for a set of finished runs.

    Args:
        run_dirs: Run directories (one per model).
        data_dir: The shard folder they were evaluated on.
        out: Output folder.
        command: The command line to print in the report.
        wall_seconds: Wall time of this invocation, if known.
        cpu_seconds: CPU time (user + system) it used, if known.
        split: The evaluated split.
        title: The Markdown title.

    Returns:
        A dict: ``results`` (path of results.md), ``plots`` (name → path),
        ``ordering_holds`` (bool or None), ``analysis`` lines.
    """
    from kerasmlic.reporting import plots

    runs = [load_run(d, split) for d in run_dirs]
    if not runs:
        raise UsageError("no finished run to report")
    manifest = load_manifest(data_dir)
    names = class_names(manifest)
    os.makedirs(out, exist_ok=True)
    figures = {
        "pr": plots.plot_pr_curves(runs, os.path.join(out, PLOT_FILES["pr"])),
        "training": plots.plot_training_curves(runs, os.path.join(out, PLOT_FILES["training"])),
    }
    analysis_lines, more = _analysis_section(runs, manifest, out, names)
    figures.update(more)
    holds, order_lines = ordering_check(runs)
    val = split_info(manifest, split, data_dir)
    train = manifest["splits"].get("train", {})
    header = [
        f"# {title}",
        "",
        *_run_lines(command, wall_seconds, cpu_seconds),
        _recorded_time_line(runs),
        f"- Data: `{os.path.abspath(data_dir)}`: {train.get('num_examples', '?')} train / "
        f"{val['num_examples']} {split} images, {len(names)} classes",
        "",
        "P, R and F1 are overall precision, recall and F1 of each image's top-3 labels (the "
        "study's protocol, Wang et al. 2016); mAP is the mean over classes of "
        "non-interpolated AP; CF1 (per-class) and OF1 (overall) are on the model's predicted "
        "label sets. The last column is the study's COCO figure, for reference only: the "
        "data here differ.",
        "",
        results_table(runs),
        "",
        "## The study's ordering on F1@3 (sequence models ≥ BCE ≥ WARP, softmax)",
        "",
        {True: "Holds on this data.", False: "Does not fully hold on this data.", None: ""}[holds],
        "",
        *order_lines,
    ]
    path, text = _write_results_md(out, header + analysis_lines, figures)
    return {"results": path, "plots": figures, "ordering_holds": holds, "text": text}


def _chosen_by_full_runs(tuning):
    """Whether every record comes from ``reproduce --rate-selection full``."""
    return all(record.get("selection") == "full" for record in tuning.values())


def _tuning_lines(tuning):
    if not tuning:
        return ["Learning rates: each model's config (no tuning)."]
    rates = sorted({rate for record in tuning.values() for rate in record["rates"]})
    if _chosen_by_full_runs(tuning):
        head = (
            f"Learning rate per model: seed 0 trained for the whole run at each of the same "
            f"{len(rates)} rates for every model (column `epochs`), with the seed runs' "
            "settings; the rate whose run reached the best val mAP is kept, and that run is "
            "seed 0. Short trials were not used: they favour the rate that learns fastest, "
            "not the one that ends best."
        )
        return _rate_table(tuning, rates, head, "epochs")
    # Records written before trial seeds existed had one trial per rate, seed 0.
    trial_seeds = sorted({record.get("trial_seeds", 1) for record in tuning.values()})
    if trial_seeds == [1]:
        selection = "selected by val mAP (seed 0)"
    else:
        counts = " or ".join(str(n) for n in trial_seeds)
        selection = (
            f"each rate trained with {counts} trial seeds (`train.seed` from 0) and scored by "
            "the mean of its trials' val mAP"
        )
    head = (
        "Learning rate per model: a keras-tuner grid search over the same "
        f"{len(rates)} rates for every model, each trial trained for the same epochs "
        f"(column `tune epochs`), {selection}."
    )
    return _rate_table(tuning, rates, head, "tune epochs")


def _rate_table(tuning, rates, head, epochs_column):
    """``head``, then each model's val mAP at every rate and the rate chosen."""
    lines = [
        head,
        "",
        f"| model | {epochs_column} | "
        + " | ".join(f"val mAP @ {r:g}" for r in rates)
        + " | chosen |",
        "|---|---:|" + "---:|" * len(rates) + "---:|",
    ]
    for name in _ordered(tuning):
        record = tuning[name]
        scores = {float(k): v for k, v in record["val_mAP"].items()}
        cells = [_pct(scores.get(r)) if r in scores else "·" for r in rates]
        lines.append(
            f"| `{name}` | {record['epochs']} | {' | '.join(cells)} | {record['chosen']:g} |"
        )
    return lines


def write_study_report(
    groups,
    data_dir,
    out,
    *,
    split="val",
    tuning=None,
    command=None,
    wall_seconds=None,
    cpu_seconds=None,
    title="Reproduction of the study's table",
):
    """Write ``results.md`` and the plots of a multi-seed study.

    The table gives ``mean ± std`` over seeds; a paired comparison tests each
    model against BCE on F1@3 seed by seed; the ordering is checked on the
    means; ``seed_error_bars.png`` shows F1@3 and mAP with ± one standard
    deviation. The PR curves and training curves use each model's first
    seed; the analysis picks the best sequence model by its mean F1@3 and
    compares per-class APs averaged over the seeds (:func:`seed_mean_runs`).

    Args:
        groups: ``{model name: [run directories, one per seed]}``.
        data_dir: The shard folder they were evaluated on.
        out: Output folder.
        split: The split the figures are reported on (``test`` on the
            built-in data; model selection used val).
        tuning: Optional ``{model name: tuning record}`` (``rates``,
            ``val_mAP`` by rate, ``chosen``, ``epochs`` and, in records
            written since it was kept, the search's ``seconds``).
        command: The command line to print in the report.
        wall_seconds: Wall time of this invocation, if known.
        cpu_seconds: CPU time (user + system) it used, if known.
        title: The Markdown title.

    Returns:
        A dict: ``results`` (path), ``plots`` (name → path), ``ordering_holds``
        (on the means; bool or None), ``summary`` (per model and metric
        ``(mean, std, n)``), ``paired`` (per model the comparison with BCE),
        ``text``.

    Raises:
        UsageError: No run, or a run without an evaluation of ``split``.
    """
    from kerasmlic.reporting import plots

    if not groups or not all(groups.values()):
        raise UsageError("no finished run to report")
    loaded = {name: [load_run(d, split) for d in dirs] for name, dirs in groups.items()}
    manifest = load_manifest(data_dir)
    names = class_names(manifest)
    os.makedirs(out, exist_ok=True)
    summary = seed_summary(loaded)
    seeds = max(len(runs) for runs in loaded.values())
    order = _ordered(loaded)
    bars = [(n, {k: summary[n][k][:2] for k in ("OF1_top3", "mAP")}) for n in order]
    firsts = [loaded[n][0] for n in order]
    figures = {
        "seeds": plots.plot_seed_error_bars(
            bars,
            [("OF1_top3", "F1@3"), ("mAP", "mAP")],
            os.path.join(out, PLOT_FILES["seeds"]),
            seeds=seeds,
        ),
        "pr": plots.plot_pr_curves(firsts, os.path.join(out, PLOT_FILES["pr"])),
        "training": plots.plot_training_curves(firsts, os.path.join(out, PLOT_FILES["training"])),
    }
    means = seed_mean_runs({n: loaded[n] for n in order}, summary)
    analysis_lines, more = _analysis_section(
        means,
        manifest,
        out,
        names,
        basis=f"mean F1@3 over {seeds} seeds (per-class APs averaged over the seeds)",
    )
    figures.update(more)
    holds, order_lines = ordering_check(means)
    paired_lines, paired = paired_table(loaded)
    info = split_info(manifest, split, data_dir)
    train = manifest["splits"].get("train", {})
    val = manifest["splits"].get("val", {})
    header = [
        f"# {title}",
        "",
        *_run_lines(command, wall_seconds, cpu_seconds),
        _recorded_time_line([run for runs in loaded.values() for run in runs], tuning),
        f"- Data: `{os.path.abspath(data_dir)}`: {train.get('num_examples', '?')} train / "
        f"{val.get('num_examples', '?')} val / {info['num_examples']} {split} images, "
        f"{len(names)} classes",
        f"- Seeds: {seeds} per model (`train.seed` 0..{seeds - 1}); figures on the "
        f"`{split}` split; model selection (best epoch, learning rate) on val.",
        "",
        "P, R and F1 are overall precision, recall and F1 of each image's top-3 labels (the "
        "study's protocol, Wang et al. 2016); mAP is the mean over classes of "
        "non-interpolated AP; CF1 (per-class) and OF1 (overall) are on the model's predicted "
        "label sets. Each cell is mean ± sample standard deviation over the seeds. The last "
        "column is the study's COCO figure, for reference only: the data here differ.",
        "",
        seed_table(loaded, tuning),
        "",
        *_tuning_lines(tuning),
        "",
        "## Each model against BCE on F1@3, seed by seed",
        "",
        "Pairs share `train.seed` (same initialisation seed and data order). p is a "
        "two-sided paired t-test on the per-seed differences (n - 1 degrees of freedom); it "
        "needs at least 2 seeds.",
        "",
        *paired_lines,
        "",
        "## The study's ordering on mean F1@3 (sequence models ≥ BCE ≥ WARP, softmax)",
        "",
        {True: "Holds on the means.", False: "Does not fully hold on the means.", None: ""}[holds],
        "",
        *order_lines,
    ]
    path, text = _write_results_md(out, header + analysis_lines, figures)
    return {
        "results": path,
        "plots": figures,
        "ordering_holds": holds,
        "summary": summary,
        "paired": paired,
        "text": text,
    }


def _write_results_md(out, lines, figures):
    """Write ``OUT/results.md`` atomically: ``lines``, then a list of the plots.

    Returns:
        ``(path, text)``.
    """
    plot_lines = ["", "## Plots", ""] + [
        f"- {key}: ![{key}]({os.path.basename(path)})" for key, path in figures.items()
    ]
    text = "\n".join(lines + plot_lines) + "\n"
    path = os.path.join(out, "results.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path, text


def _recorded_time_line(runs, tuning=None):
    """The runs' own training (and tuning) time, which survives resumed and reused runs.

    The header's wall time is the last invocation's only; a run's history
    keeps every epoch's time, and a tuning record its search's, whichever
    invocation made them.
    """
    minutes = [_train_minutes(run) for run in runs]
    training = sum(m for m in minutes if math.isfinite(m))
    head = (
        f"- Training time recorded in the {len(minutes)} runs: {training:.1f} min (their "
        "epochs, whichever invocation trained them"
    )
    if not tuning:
        return f"{head}; tuning and evaluation not included)"
    timed = [r["seconds"] for r in tuning.values() if r.get("seconds") is not None]
    untimed = len(tuning) - len(timed)  # records written before the search time was kept
    carried = f" ({untimed} of {len(tuning)} records carry no time)" if untimed else ""
    searched = (
        "the seed-0 runs at the rates not chosen"
        if _chosen_by_full_runs(tuning)
        else "the tuning searches"
    )
    return f"{head}); in {searched}: {sum(timed) / 60:.1f} min{carried}; evaluation not included"


def _run_lines(command, wall_seconds, cpu_seconds):
    """The report header's command, machine and date/time lines."""
    return [
        f"- Command: `{command}`" if command else "- Command: (library call)",
        f"- Machine: {machine_description()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}"
        + (f"; this invocation's wall time {wall_seconds / 60:.1f} min" if wall_seconds else "")
        + (f", CPU time {cpu_seconds / 60:.1f} min (user + system)" if cpu_seconds else ""),
    ]
