"""The study's analysis: where does the best sequence model beat BCE?

The study claims the recurrent label decoders help with (a) objects that
commonly appear together and (b) objects that are barely discernible. Per
class we take the AP gain of the best sequence model over BCE and correlate
it with (a) the mean number of other labels on the training images that
hold the class (from ``dataset.json``'s co-occurrence counts) and (b) the
class's mean object size (``label_mean_area``, the fraction of the image its
instances cover). Spearman's rank correlation is the headline (sizes are
heavy-tailed); a seeded permutation test gives its two-sided p-value.
"""

import numpy as np


def cooccurrence_strength(split_info):
    """Mean number of *other* labels on the images that hold each class.

    Args:
        split_info: One split's entry of ``dataset.json`` (``label_counts``,
            ``cooccurrence``).

    Returns:
        float64 (C,); NaN for classes with no image.
    """
    counts = np.asarray(split_info["label_counts"], np.float64)
    cooc = np.asarray(split_info["cooccurrence"], np.float64)
    others = cooc.sum(axis=1) - np.diag(cooc)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, others / np.maximum(counts, 1), np.nan)


def object_size(split_info):
    """Mean fraction of the image a class's instances cover, per class.

    Args:
        split_info: One split's entry of ``dataset.json`` (``label_mean_area``).

    Returns:
        float64 (C,); NaN for classes with no image.
    """
    area = np.asarray(split_info["label_mean_area"], np.float64)
    counts = np.asarray(split_info["label_counts"], np.float64)
    return np.where(counts > 0, area, np.nan)


def per_class_ap(results):
    """Return the per-class AP of an evaluation dict as float64 (NaN where undefined).

    Args:
        results: A dict from ``evaluate_predictions`` (``per_class``).

    Returns:
        float64 (C,).
    """
    return np.array(
        [np.nan if row["AP"] is None else row["AP"] for row in results["per_class"]], np.float64
    )


def _ranks(x):
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    values = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or values[end] != values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
            start = end
    return ranks


def pearson(x, y):
    """Pearson's correlation of two equal-length arrays (NaN if either is constant).

    Args:
        x: Values.
        y: Values.

    Returns:
        A float.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def spearman(x, y):
    """Spearman's rank correlation (Pearson on average ranks).

    Args:
        x: Values.
        y: Values.

    Returns:
        A float.
    """
    return pearson(_ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64)))


def permutation_p_value(x, y, statistic=spearman, permutations=2000, seed=0):
    """Two-sided permutation p-value of a correlation statistic.

    Args:
        x: Values.
        y: Values.
        statistic: ``f(x, y) -> float``.
        permutations: Random permutations of ``y``.
        seed: Seed of the permutations.

    Returns:
        ``(statistic, p)`` with ``p = (1 + #|perm| >= |observed|) / (1 + permutations)``.
    """
    observed = statistic(x, y)
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    hits = sum(abs(statistic(x, rng.permutation(y))) >= abs(observed) for _ in range(permutations))
    return observed, (1 + hits) / (1 + permutations)


def gain_analysis(best_results, bce_results, train_split_info, *, permutations=2000, seed=0):
    """Correlate the per-class AP gain over BCE with co-occurrence and object size.

    Args:
        best_results: Evaluation dict of the best sequence model.
        bce_results: Evaluation dict of BCE on the same split.
        train_split_info: The training split's ``dataset.json`` entry.
        permutations: Permutations for the p-values.
        seed: Their seed.

    Returns:
        A dict: ``gain``, ``cooccurrence``, ``size`` (lists over the classes
        used), ``class_index`` (their indices), ``mean_gain``,
        ``classes_improved``, ``num_classes``, and for ``cooccurrence`` and
        ``size`` the Spearman ``rho``, its ``p`` and Pearson ``r`` (on log
        size for sizes).
    """
    gain = per_class_ap(best_results) - per_class_ap(bce_results)
    cooc = cooccurrence_strength(train_split_info)
    size = object_size(train_split_info)
    keep = np.isfinite(gain) & np.isfinite(cooc) & np.isfinite(size) & (size > 0)
    gain, cooc, size = gain[keep], cooc[keep], size[keep]
    out = {
        "class_index": np.flatnonzero(keep).tolist(),
        "gain": gain.tolist(),
        "cooccurrence": cooc.tolist(),
        "size": size.tolist(),
        "num_classes": int(keep.sum()),
        "mean_gain": float(gain.mean()) if len(gain) else float("nan"),
        "classes_improved": int((gain > 0).sum()),
    }
    for key, values, transform in (("cooccurrence", cooc, None), ("size", size, np.log)):
        if len(gain) < 3:
            out[f"{key}_stats"] = {"rho": float("nan"), "p": float("nan"), "r": float("nan")}
            continue
        rho, p = permutation_p_value(values, gain, permutations=permutations, seed=seed)
        r = pearson(transform(values) if transform else values, gain)
        out[f"{key}_stats"] = {"rho": rho, "p": p, "r": r}
    return out
