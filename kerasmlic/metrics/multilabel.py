"""Multi-label evaluation metrics on whole score matrices (vectorised NumPy).

Every function takes ``y_true`` (N, C) with 0/1 entries (N images, C classes)
and ``scores`` (N, C) real-valued (higher = more confident). No Python loop
runs over images or classes except where the output is one ragged array per
class (:func:`precision_recall_curves`).

Conventions (fixed here so every report and test agrees):

* **AP** is sklearn's non-interpolated average precision
  (``average_precision_score``): images are ranked by score, tied scores form
  one group that enters the precision/recall curve as a single point (so the
  order inside a tie never matters), and AP = Σ (R_k − R_{k−1}) · P_k over the
  distinct thresholds. A class with no positive has no AP: ``nan`` from
  :func:`average_precision_per_class`, ``None`` in ``per_class`` and left out
  of ``mAP``. If no class has a positive, ``mAP`` is ``None``.
* **Zero denominators give 0**, as sklearn's ``zero_division=0`` and the
  ML-GCN/Wang et al. evaluation code: a class never predicted has P = 0, a
  class with no positive has R = 0, and both still count in the CP/CR means,
  which run over all C classes. (COCO val has positives for all 80 classes, so
  only the precision case matters there.) F1 is 2·TP/(2·TP+FP+FN), 0 when that
  denominator is 0.
* **CF1 = 2·CP·CR/(CP+CR)** (not the mean of per-class F1); OP/OR/OF1 use TP,
  FP, FN summed over all classes (sklearn ``average="micro"``).
* **EP/ER/EF1** average per-image precision, recall and F1 over *all* images
  (sklearn ``average="samples"``, ``zero_division=0``): an image with no
  predicted label has precision 0, an image with no true label has recall 0,
  and an image with neither has F1 0. The COCO-2014 protocol drops unlabelled
  images, so only the first case matters unless ``--keep-empty`` was used.
* **Top-3** takes each image's 3 highest-scored labels as its predicted set
  (Wang et al., CVPR 2016); among equal scores the lower class index wins;
  with C < 3 every label is taken.
"""

import numpy as np

from kerasmlic.errors import UsageError

#: Headline figures of :func:`evaluate_predictions`, in report order.
HEADLINE_KEYS = (
    "mAP",
    "CP",
    "CR",
    "CF1",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
    "EP",
    "ER",
    "EF1",
    "num_images",
)
#: Every key of :func:`evaluate_predictions`' result (docs/design.md, Metrics).
RESULT_KEYS = HEADLINE_KEYS + ("per_class",)
#: Keys of each ``per_class`` entry.
PER_CLASS_KEYS = ("name", "AP", "P", "R", "F1", "support")


# --------------------------------------------------------------------------- input checks


def as_labels(y, name, shape=None):
    """Check a 0/1 label matrix and return it as a bool array.

    Args:
        y: (N, C) array-like of 0/1 (or bool).
        name: What it is, for messages (``"y_true"``, ``"predicted"``).
        shape: The shape it must have, or None.

    Returns:
        A bool (N, C) array.

    Raises:
        UsageError: Empty, not 2-D, another shape, not numeric, or a value
            other than 0 and 1.
    """
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
        raise UsageError(f"{name} must be a non-empty (N, C) matrix, got shape {y.shape}")
    if shape is not None and y.shape != shape:
        raise UsageError(f"{name} has shape {y.shape}, expected {shape}")
    if y.dtype == bool:
        return y
    if not np.issubdtype(y.dtype, np.number):
        raise UsageError(f"{name} must be numeric 0/1, got dtype {y.dtype}")
    if not ((y == 0) | (y == 1)).all():
        raise UsageError(f"{name} must contain only 0 and 1")
    return y != 0


def as_scores(scores, shape):
    """Check a score matrix and return it as float64 (exact for float32, so ties survive).

    Args:
        scores: (N, C) array-like of real scores.
        shape: The shape it must have (that of ``y_true``).

    Returns:
        A float64 (N, C) array.

    Raises:
        UsageError: Another shape, a non-real dtype, or a NaN.
    """
    s = np.asarray(scores)
    if s.shape != shape:
        raise UsageError(f"scores has shape {s.shape}, expected {shape} (same as y_true)")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise UsageError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise UsageError("scores contain NaN")
    return s


def _safe_div(num, den):
    """Divide elementwise, giving 0 where den == 0 (the zero_division=0 convention)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------- ranking


def ranked_columns(y_true, scores):
    """Rank every class column by descending score.

    Args:
        y_true: Bool (N, C).
        scores: Float64 (N, C).

    Returns:
        ``(sorted_scores, sorted_true, tp_cum, group_end)``, each (C, N):
        the class's scores in descending order, the matching labels, the
        cumulative true-positive count at each rank, and True at the last
        rank of each group of equal scores. Only group ends are valid
        operating points, so the order inside a tie is irrelevant and the
        faster unstable sort is fine.
    """
    s = np.ascontiguousarray(scores.T)
    order = np.argsort(s, axis=1)[:, ::-1]
    sorted_scores = np.take_along_axis(s, order, axis=1)
    sorted_true = np.take_along_axis(np.ascontiguousarray(y_true.T), order, axis=1)
    tp_cum = np.cumsum(sorted_true, axis=1, dtype=np.int64)
    group_end = np.empty(s.shape, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    group_end[:, -1] = True
    return sorted_scores, sorted_true, tp_cum, group_end


def average_precision_per_class(y_true, scores):
    """Non-interpolated average precision of each class, as sklearn computes it.

    Each positive contributes the precision at the end of its tie group, so
    AP = (1 / n_pos) · Σ_positives P(end of its group), which equals sklearn's
    ``average_precision_score`` (Σ ΔR · P over distinct thresholds).

    Args:
        y_true: (N, C) 0/1 ground truth.
        scores: (N, C) real scores.

    Returns:
        Float64 array (C,): AP per class, ``nan`` for a class with no positive.

    Raises:
        UsageError: on malformed input.
    """
    y = as_labels(y_true, "y_true")
    s = as_scores(scores, y.shape)
    return _average_precision(y, s)


def _average_precision(y, s):
    _, sorted_true, tp_cum, group_end = ranked_columns(y, s)
    n = y.shape[0]
    rank = np.arange(n)
    # Index of the end of each rank's tie group: reverse running minimum over
    # the end positions (non-ends hold n, larger than any index).
    end_at = np.where(group_end, rank, n)
    end_at = np.minimum.accumulate(end_at[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(tp_cum, end_at, axis=1) / (end_at + 1.0)
    npos = tp_cum[:, -1]
    total = np.sum(precision_at_end, axis=1, where=sorted_true)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npos > 0, total / npos, np.nan)


def precision_recall_curves(y_true, scores):
    """Precision-recall curves per class and micro-averaged, for PR plots.

    Each curve has sklearn's ``precision_recall_curve`` layout: ``thresholds``
    are the distinct scores in increasing order, ``precision[i]`` and
    ``recall[i]`` hold for the predicted set ``scores >= thresholds[i]``, and
    a final point (precision 1, recall 0) closes the curve.

    Args:
        y_true: (N, C) 0/1 ground truth.
        scores: (N, C) real scores.

    Returns:
        ``{"per_class": [curve or None, ...], "micro": curve or None}`` where
        a curve is ``{"precision": (K+1,), "recall": (K+1,), "thresholds":
        (K,)}`` float64 arrays, and ``None`` stands for a class (or a whole
        matrix, for ``micro``) with no positive. The micro curve ranks all
        N·C (image, class) pairs together.

    Raises:
        UsageError: on malformed input.
    """
    y = as_labels(y_true, "y_true")
    s = as_scores(scores, y.shape)
    per_class = _curves(y, s)
    micro = _curves(y.reshape(-1, 1), s.reshape(-1, 1))[0]
    return {"per_class": per_class, "micro": micro}


def _curves(y, s):
    sorted_scores, _, tp_cum, group_end = ranked_columns(y, s)
    predicted = np.arange(1, y.shape[0] + 1)
    curves = []
    for c in range(y.shape[1]):
        npos = tp_cum[c, -1]
        if npos == 0:
            curves.append(None)
            continue
        ends = group_end[c]
        tps = tp_cum[c, ends]
        precision = tps / predicted[ends]
        recall = tps / npos
        curves.append(
            {
                "precision": np.concatenate([precision[::-1], [1.0]]),
                "recall": np.concatenate([recall[::-1], [0.0]]),
                "thresholds": sorted_scores[c, ends][::-1].copy(),
            }
        )
    return curves


# --------------------------------------------------------------------------- label sets


def top_k_predictions(scores, k):
    """Each image's k highest-scored labels as a predicted set.

    Ties at the k-th score go to the lower class indices (deterministic, as
    ``tf.math.top_k``), so exactly min(k, C) labels are set per image.

    Args:
        scores: (N, C) real scores.
        k: Labels per image, an int >= 0.

    Returns:
        Bool array (N, C), True for the chosen labels.

    Raises:
        UsageError: on malformed input.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise UsageError(f"scores must be an (N, C) matrix, got shape {s.shape}")
    s = as_scores(s, s.shape)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise UsageError(f"k must be an integer >= 0, got {k!r}")
    n, c = s.shape
    if k >= c:
        return np.ones((n, c), dtype=bool)
    if k == 0:
        return np.zeros((n, c), dtype=bool)
    # O(N·C) instead of a full sort: everything above the k-th largest score is
    # in; among scores equal to it, the lowest indices fill the remaining slots.
    kth = np.partition(s, c - k, axis=1)[:, c - k : c - k + 1]
    above = s > kth
    at = s == kth
    free = k - above.sum(axis=1, keepdims=True)
    return above | (at & (np.cumsum(at, axis=1) <= free))


def _set_counts(y, p):
    """Per-class TP/FP/FN and per-image intersection sizes of two bool matrices."""
    hit = y & p
    tp = hit.sum(axis=0)
    predicted = p.sum(axis=0)
    positives = y.sum(axis=0)
    return tp, predicted - tp, positives - tp, hit


def _class_and_overall(y, p):
    """Per-class P/R/F1 arrays and the CP/CR/CF1/OP/OR/OF1 figures."""
    tp, fp, fn, _ = _set_counts(y, p)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    cp, cr = precision.mean(), recall.mean()
    stp, sfp, sfn = tp.sum(), fp.sum(), fn.sum()
    figures = {
        "CP": cp,
        "CR": cr,
        "CF1": _safe_div(2 * cp * cr, cp + cr),
        "OP": _safe_div(stp, stp + sfp),
        "OR": _safe_div(stp, stp + sfn),
        "OF1": _safe_div(2 * stp, 2 * stp + sfp + sfn),
    }
    return {k: float(v) for k, v in figures.items()}, precision, recall, f1


def _per_image(y, p):
    """EP/ER/EF1: per-image precision, recall and F1 averaged over all images."""
    inter = (y & p).sum(axis=1)
    npred = p.sum(axis=1)
    ntrue = y.sum(axis=1)
    return {
        "EP": float(_safe_div(inter, npred).mean()),
        "ER": float(_safe_div(inter, ntrue).mean()),
        "EF1": float(_safe_div(2 * inter, npred + ntrue).mean()),
    }


def _predicted_from_thresholds(s, thresholds):
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(s.shape[1], float(t))
    if t.shape != (s.shape[1],):
        raise UsageError(
            f"thresholds must be a scalar or shape ({s.shape[1]},), got shape {t.shape}"
        )
    if np.isnan(t).any():
        raise UsageError("thresholds contain NaN")
    return s >= t


# --------------------------------------------------------------------------- evaluation


def evaluate_predictions(y_true, scores, predicted=None, thresholds=0.5, class_names=None):
    """All evaluation figures of docs/design.md (Metrics) for one score matrix.

    See the module docstring for the zero-denominator and tie conventions.

    Args:
        y_true: (N, C) 0/1 ground-truth label sets.
        scores: (N, C) real scores; rank the labels for AP and top-3.
        predicted: Optional (N, C) 0/1 predicted label sets (e.g. a sequence
            decoder's output). If None, ``scores >= thresholds``.
        thresholds: Scalar or (C,) per-class thresholds, used only when
            ``predicted`` is None.
        class_names: Optional C names for ``per_class``; default
            ``"class_0"``, ``"class_1"``, ...

    Returns:
        A JSON-serialisable dict with exactly :data:`RESULT_KEYS`: ``mAP``
        (float, or None if no class has a positive), the fractions ``CP CR
        CF1 OP OR OF1`` on the predicted sets, the same six with suffix
        ``_top3`` on each image's 3 highest-scored labels, ``EP ER EF1`` on
        the predicted sets, ``num_images`` (int), and ``per_class``: a list
        of ``{"name", "AP" (float or None), "P", "R", "F1", "support"}``
        with P/R/F1 on the predicted sets and support = number of positives.
        All numbers are plain Python floats/ints.

    Raises:
        UsageError: on malformed input (shapes, non-0/1 labels, NaN scores,
            wrong number of thresholds or class names).
    """
    y = as_labels(y_true, "y_true")
    s = as_scores(scores, y.shape)
    n, c = y.shape
    if predicted is None:
        p = _predicted_from_thresholds(s, thresholds)
    else:
        p = as_labels(predicted, "predicted", shape=y.shape)
    if class_names is None:
        names = [f"class_{i}" for i in range(c)]
    else:
        names = [str(name) for name in class_names]
        if len(names) != c:
            raise UsageError(f"class_names has {len(names)} names, scores have {c} classes")

    ap = _average_precision(y, s)
    valid = ~np.isnan(ap)
    results = {"mAP": float(ap[valid].mean()) if valid.any() else None}
    figures, precision, recall, f1 = _class_and_overall(y, p)
    results.update(figures)
    top3, _, _, _ = _class_and_overall(y, top_k_predictions(s, 3))
    results.update({f"{key}_top3": value for key, value in top3.items()})
    results.update(_per_image(y, p))
    results["num_images"] = int(n)
    support = y.sum(axis=0)
    results["per_class"] = [
        {
            "name": names[i],
            "AP": float(ap[i]) if valid[i] else None,
            "P": float(precision[i]),
            "R": float(recall[i]),
            "F1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    return results
