"""Per-class decision thresholds that maximise F1 on a held-out split."""

import numpy as np

from kerasmlic.errors import UsageError
from kerasmlic.metrics.multilabel import as_labels, as_scores, ranked_columns


def calibrate_thresholds(y_true, scores, *, default=0.5, min_support=1):
    """Choose, per class, the threshold that maximises F1 on calibration data.

    A threshold t predicts ``scores >= t``, so the reachable predicted sets of
    a class are its top-ranked images down to the end of a tie group. For each
    class the scores are sorted once, cumulative TP counts give
    F1 = 2·TP / (predicted + positives) at every group end, and the best end
    wins (the first, i.e. the highest threshold, when several tie). The
    threshold returned is the midpoint between the lowest score taken and the
    next lower distinct score, so it separates the two sets with margin on
    both sides; when every image is taken it is the lowest score itself.

    The midpoint is computed in the scores' precision (float32 scores give a
    float32-representable threshold), and if rounding would put it on the
    excluded score the lowest included score is used instead, so applying the
    threshold reproduces the chosen set in float32 or float64. On the
    calibration data the F1 reached is therefore >= the F1 of any other
    threshold, including ``default``.

    Args:
        y_true: (N, C) 0/1 ground truth of the held-out split.
        scores: (N, C) real scores on the same images.
        default: Threshold kept by classes with fewer than ``min_support``
            positives (including classes with none).
        min_support: Fewest positives a class needs to be calibrated, >= 1.

    Returns:
        Float64 array (C,) of thresholds.

    Raises:
        UsageError: on malformed input or ``min_support < 1``.
    """
    y = as_labels(y_true, "y_true")
    s = as_scores(scores, y.shape)
    if isinstance(min_support, bool) or not isinstance(min_support, (int, np.integer)):
        raise UsageError(f"min_support must be an integer >= 1, got {min_support!r}")
    if min_support < 1:
        raise UsageError(f"min_support must be >= 1, got {min_support}")
    default = float(default)
    if np.isnan(default):
        raise UsageError("default threshold is NaN")
    work = np.float32 if np.asarray(scores).dtype == np.float32 else np.float64

    sorted_scores, _, tp_cum, group_end = ranked_columns(y, s)
    n = y.shape[0]
    npos = tp_cum[:, -1]
    predicted = np.arange(1, n + 1)
    f1 = 2.0 * tp_cum / (predicted + npos[:, None])
    f1[~group_end] = -1.0
    best = np.argmax(f1, axis=1)

    rows = np.arange(y.shape[1])
    lowest_in = sorted_scores[rows, best].astype(work)
    is_last = best == n - 1
    highest_out = sorted_scores[rows, np.minimum(best + 1, n - 1)].astype(work)
    mid = (lowest_in / work(2) + highest_out / work(2)).astype(work)
    # Rounding can land the midpoint on the excluded score; fall back to the
    # included one, which still separates the sets because t is inclusive.
    threshold = np.where(is_last | (mid <= highest_out), lowest_in, mid)
    threshold = threshold.astype(np.float64)
    return np.where(npos >= min_support, threshold, default)
