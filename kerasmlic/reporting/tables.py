"""The report's Markdown tables and the statistics behind them.

The study's table (one seed, or mean ± std over seeds), the paired
comparison of each model with BCE, and the check of the study's ordering.

The study's table gives precision, recall and F1 of each image's top-3
labels pooled over all images (``OP_top3``/``OR_top3``/``OF1_top3``); we
print those, then mAP, CF1 and OF1 on the predicted label sets.
"""

import math

from kerasmlic.reporting.runs import (
    CONVERGED_SPREAD,
    STUDY_TABLE,
    is_sequence_model,
    last_epochs_spread,
    study_order,
    train_minutes,
)


def percent(value):
    """Format a fraction as a percentage with one decimal; a dash when missing.

    Args:
        value: A fraction (0-1), None or NaN.

    Returns:
        A string, e.g. ``"42.4"`` or ``"–"``.
    """
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def results_table(runs):
    """The study's table layout as Markdown, one row per run, in the study's order.

    Args:
        runs: Loaded runs.

    Returns:
        Markdown text (header + rows).
    """
    rank = {name: i for i, name in enumerate(study_order({r["name"] for r in runs}))}
    runs = sorted(runs, key=lambda r: rank[r["name"]])
    lines = [
        "| model | P | R | F1 | mAP | CF1 | OF1 | epochs | train min | study P / R / F1 (COCO) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        cells = [percent(run["eval"][key]) for key, _ in STUDY_METRICS]
        label, *study = STUDY_TABLE.get(run["name"], (run["name"], None, None, None))
        study_text = " / ".join(f"{v:.1f}" for v in study) if study[0] is not None else "–"
        epochs = len(run["history"].get("epoch", [])) or run["summary"].get("epochs", "–")
        lines.append(
            f"| {label} (`{run['name']}`) | {' | '.join(cells)} | "
            f"{epochs} | {train_minutes(run):.1f} | {study_text} |"
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


def _spread_text(runs):
    spreads = [last_epochs_spread(r["history"]) for r in runs]
    if not spreads or not all(math.isfinite(v) for v in spreads):
        return "–"
    worst = max(spreads)
    return f"{100 * worst:.2f}" + (" ✓" if worst <= CONVERGED_SPREAD else " ✗")


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
    for name in study_order(groups):
        runs = groups[name]
        label, *study = STUDY_TABLE.get(name, (name, None, None, None))
        study_text = " / ".join(f"{v:.1f}" for v in study) if study[0] is not None else "–"
        cells = [_pm(*summary[name][key][:2]) for key, _ in STUDY_METRICS]
        rate = (tuning or {}).get(name, {}).get("chosen")
        if rate is None:
            rate = runs[0]["config"].get("train", {}).get("learning_rate")
        epochs = [len(r["history"].get("epoch", [])) for r in runs]
        epoch_text = str(epochs[0]) if len(set(epochs)) == 1 else f"{min(epochs)}–{max(epochs)}"
        minutes = sum(train_minutes(r) for r in runs) / len(runs)
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
    for name in study_order(groups):
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
            lines.append(f"- `{name}` F1@3 {percent(f1[name])} {relation} BCE {percent(bce)}")
            holds &= ok
        elif is_sequence_model(name):
            ok = f1[name] >= bce
            relation = "≥" if ok else "<"
            lines.append(f"- `{name}` F1@3 {percent(f1[name])} {relation} BCE {percent(bce)}")
            holds &= ok
    return holds, lines


def p_text(p):
    """Format a permutation p-value (its floor is 1 / (permutations + 1)).

    Args:
        p: A p-value.

    Returns:
        ``"< 0.001"`` or three decimals.
    """
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
