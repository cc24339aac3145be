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

    from kerasmlic.training.rundir import RunPaths, read_history

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


def p_text(p):
    """Format a permutation p-value (its floor is 1 / (permutations + 1)).

    Args:
        p: A p-value.

    Returns:
        ``"< 0.001"`` or three decimals.
    """
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _analysis_section(runs, manifest, out, names):
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
        f"Best sequence model by F1@3: `{best['name']}`. Per-class AP gain over BCE on "
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
        wall_seconds: Wall time of the whole reproduction, if known.
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
        f"- Command: `{command}`" if command else "- Command: (library call)",
        f"- Machine: {machine_description()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}"
        + (f"; wall time {wall_seconds / 60:.1f} min" if wall_seconds else "")
        + (f", CPU time {cpu_seconds / 60:.1f} min (user + system)" if cpu_seconds else ""),
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
    plot_lines = ["", "## Plots", ""] + [
        f"- {key}: ![{key}]({os.path.basename(path)})" for key, path in figures.items()
    ]
    text = "\n".join(header + analysis_lines + plot_lines) + "\n"
    path = os.path.join(out, "results.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return {"results": path, "plots": figures, "ordering_holds": holds, "text": text}
