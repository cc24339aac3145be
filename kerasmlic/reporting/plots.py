"""PNG plots of a reproduction: PR curves, per-class AP bars, training curves, the analysis.

Every function takes already-loaded data (see :mod:`kerasmlic.reporting.runs`)
and writes one PNG atomically with matplotlib's Agg backend (no display needed).
"""

import math
import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_pr_curves(runs, path):
    """Micro-averaged precision-recall curve of every model on one axis.

    Args:
        runs: List of loaded runs (``name``, ``predictions`` with ``y_true``
            and ``scores``, ``eval``).
        path: Output PNG.

    Returns:
        ``path``.
    """
    from kerasmlic.metrics import precision_recall_curves

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for run in runs:
        pred = run.get("predictions")
        if pred is None:
            continue
        curve = precision_recall_curves(pred["y_true"], pred["scores"])["micro"]
        if curve is None:
            continue
        label = f"{run['name']} (mAP {100 * (run['eval']['mAP'] or 0):.1f})"
        ax.plot(curve["recall"], curve["precision"], label=label, linewidth=1.3)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall, all (image, label) pairs pooled")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_per_class_ap(best_name, best_ap, base_name, base_ap, class_names, path):
    """Per-class AP bars of the best model beside a baseline, sorted by the gain.

    Args:
        best_name: Name of the best model.
        best_ap: Its per-class AP (C,), NaN where undefined.
        base_name: Name of the baseline (BCE).
        base_ap: The baseline's per-class AP (C,).
        class_names: C names.
        path: Output PNG.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    best_ap, base_ap = np.asarray(best_ap, float), np.asarray(base_ap, float)
    keep = np.isfinite(best_ap) & np.isfinite(base_ap)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-(best_ap[idx] - base_ap[idx]), kind="stable")]
    x = np.arange(len(idx))
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(idx) + 2), 4.8))
    ax.bar(x - 0.2, 100 * best_ap[idx], width=0.4, label=best_name)
    ax.bar(x + 0.2, 100 * base_ap[idx], width=0.4, label=base_name)
    ax.set_xticks(x)
    ax.set_xticklabels([class_names[i] for i in idx], rotation=90, fontsize=7)
    ax.set_ylabel("AP (%)")
    ax.set_title(f"Per-class AP, {best_name} vs {base_name} (sorted by gain)")
    ax.legend(loc="upper right", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_training_curves(runs, path):
    """Training loss (relative to epoch 1) and validation mAP per epoch, per model.

    Losses differ in scale between models (BCE sums over classes, WARP is a
    ranking loss), so each is divided by its first-epoch value.

    Args:
        runs: Loaded runs (``name``, ``history`` dict of columns).
        path: Output PNG.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        history = run.get("history") or {}
        epochs = np.asarray(history.get("epoch", []), float) + 1
        if len(epochs) == 0:
            continue
        loss = np.asarray(history.get("loss", [np.nan] * len(epochs)), float)
        if np.isfinite(loss[0]) and loss[0] != 0:
            ax_loss.plot(epochs, loss / loss[0], marker=".", label=run["name"])
        val = np.asarray(history.get("val_mAP", [np.nan] * len(epochs)), float)
        ok = np.isfinite(val)
        if ok.any():
            ax_map.plot(epochs[ok], 100 * val[ok], marker=".", label=run["name"])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss / epoch-1 loss")
    ax_loss.set_title("Training loss")
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("val mAP (%)")
    ax_map.set_title("Validation mAP")
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
    ax_map.legend(fontsize=8)
    return _save(fig, path)


def plot_gain_analysis(analysis, best_name, base_name, class_names, path):
    """Scatter of per-class AP gain against co-occurrence strength and object size.

    Args:
        analysis: :func:`kerasmlic.reporting.analysis.gain_analysis`'s dict.
        best_name: Name of the sequence model.
        base_name: Name of the baseline.
        class_names: All class names (indexed by ``analysis['class_index']``).
        path: Output PNG.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    gain = 100 * np.asarray(analysis["gain"], float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    panels = (
        ("cooccurrence", "mean other labels on the class's train images", False),
        ("size", "mean object area / image area (log scale)", True),
    )
    for ax, (key, xlabel, logx) in zip(axes, panels, strict=True):
        x = np.asarray(analysis[key], float)
        stats = analysis[f"{key}_stats"]
        ax.scatter(x, gain, s=14, alpha=0.75)
        ax.axhline(0, color="grey", linewidth=0.8)
        if logx:
            ax.set_xscale("log")
        # Name the classes with the largest |gain| so the plot can be read.
        for i in np.argsort(-np.abs(gain))[:6]:
            name = class_names[analysis["class_index"][i]]
            ax.annotate(name, (x[i], gain[i]), fontsize=7, alpha=0.8)
        rho, p = stats["rho"], stats["p"]
        p_shown = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
        title = f"Spearman ρ = {rho:.2f} ({p_shown})" if math.isfinite(rho) else "too few classes"
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"AP gain of {best_name} over {base_name} (points)")
    return _save(fig, path)


def plot_seed_error_bars(rows, metrics, path, *, seeds=None):
    """Bars of each model's mean figure with ± one standard deviation over seeds.

    Args:
        rows: ``[(model name, {metric: (mean, std)})]`` in display order;
            figures are fractions (shown in %), a NaN std draws no bar.
        metrics: ``[(metric key, axis label)]``: one panel each.
        path: Output PNG.
        seeds: Seed count, for the title.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.4), squeeze=False)
    names = [name for name, _ in rows]
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        means = np.array([100 * figures[key][0] for _, figures in rows], float)
        stds = np.array([100 * figures[key][1] for _, figures in rows], float)
        ax.bar(x, means, yerr=np.where(np.isfinite(stds), stds, 0.0), capsize=4, alpha=0.8)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (%)")
        title = f"{label}: mean ± std"
        ax.set_title(title + (f" over {seeds} seeds" if seeds else ""))
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
