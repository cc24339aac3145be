"""``results.md`` and its plots: one run per model, or a multi-seed study.

The tables come from :mod:`~kerasmlic.reporting.tables`, the loaded runs from
:mod:`~kerasmlic.reporting.runs`; this module writes the report around them
(header, learning-rate selection, analysis, plots).
"""

import math
import os
import platform
import time

from kerasmlic.data.manifest import class_names, load_manifest, split_info
from kerasmlic.errors import UsageError
from kerasmlic.reporting.runs import (
    best_sequence_run,
    load_run,
    seed_mean_runs,
    study_order,
    train_minutes,
)
from kerasmlic.reporting.tables import (
    ordering_check,
    p_text,
    paired_table,
    percent,
    results_table,
    seed_summary,
    seed_table,
)

PLOT_FILES = {
    "seeds": "seed_error_bars.png",
    "pr": "pr_curves.png",
    "per_class": "per_class_ap.png",
    "training": "training_curves.png",
    "analysis": "ap_gain_analysis.png",
}


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
    for name in study_order(tuning):
        record = tuning[name]
        scores = {float(k): v for k, v in record["val_mAP"].items()}
        cells = [percent(scores.get(r)) if r in scores else "·" for r in rates]
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
    order = study_order(loaded)
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
    minutes = [train_minutes(run) for run in runs]
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
