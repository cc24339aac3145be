import numpy as np
import pytest

from kerasmlic.errors import UsageError
from kerasmlic.metrics import calibrate_thresholds, evaluate_predictions

# Hand-worked example, 5 images x 5 classes (columns below are per class).
#
# class 0: scores .9 .8 .7 .3 .2, truth 1 0 1 1 0 (3 positives)
#   top-1: F1 = 2*1/(1+3) = .5   top-2: 2/(2+3) = .4   top-3: 4/(3+3) = .667
#   top-4: 6/(4+3) = .857 (best)  top-5: 6/(5+3) = .75
#   -> threshold between .3 and .2 = .25   (F1 at 0.5 = .667)
# class 1: scores .6 .6 .4 .4 .1, truth 1 1 0 0 0 (ties: only top-2, top-4, top-5 reachable)
#   top-2: 4/(2+2) = 1 (best) -> threshold between .6 and .4 = .5
# class 2: scores .5 .4 .3 .2 .1, all positive -> best takes all -> the lowest score .1
# class 3: one positive; min_support=2 -> keeps the default .45
#   (predicts .9(+) and .5(-): F1 = 2/(2+1) = 2/3)
# class 4: no positive -> keeps the default
Y = np.array(
    [
        [1, 1, 1, 0, 0],
        [0, 1, 1, 0, 0],
        [1, 0, 1, 1, 0],
        [1, 0, 1, 0, 0],
        [0, 0, 1, 0, 0],
    ]
)
S = np.array(
    [
        [0.9, 0.6, 0.5, 0.1, 0.3],
        [0.8, 0.6, 0.4, 0.2, 0.8],
        [0.7, 0.4, 0.3, 0.9, 0.2],
        [0.3, 0.4, 0.2, 0.4, 0.1],
        [0.2, 0.1, 0.1, 0.5, 0.9],
    ]
)


def _per_class_f1(y, s, thresholds):
    return np.array(
        [e["F1"] for e in evaluate_predictions(y, s, thresholds=thresholds)["per_class"]]
    )


def test_hand_worked_thresholds():
    t = calibrate_thresholds(Y, S, default=0.45, min_support=2)
    np.testing.assert_allclose(t, [0.25, 0.5, 0.1, 0.45, 0.45], atol=1e-15)
    np.testing.assert_allclose(_per_class_f1(Y, S, t), [6 / 7, 1.0, 1.0, 2 / 3, 0.0], atol=1e-12)
    # With min_support=1 class 3 is calibrated: its one positive is ranked first
    # (F1 = 2/(1+1) = 1), threshold between .9 and .5.
    t1 = calibrate_thresholds(Y, S, default=0.45, min_support=1)
    assert t1[3] == pytest.approx(0.7)
    assert t1[4] == 0.45


@pytest.mark.parametrize("levels", [None, 10])
def test_calibrated_f1_beats_half_and_every_other_threshold(levels):
    rng = np.random.default_rng(0)
    y = (rng.random((400, 15)) < 0.15).astype(int)
    y[:, 0] = 0
    s = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    if levels:
        s = np.round(s * levels) / levels
    t = calibrate_thresholds(y, s)
    assert t[0] == 0.5  # no positive -> default
    calibrated = _per_class_f1(y, s, t)
    assert (calibrated >= _per_class_f1(y, s, 0.5)).all()
    assert (calibrated > _per_class_f1(y, s, 0.5))[1:].mean() > 0.5  # it usually helps
    # Brute force: no distinct score of the column does better as a threshold.
    for c in range(1, y.shape[1]):
        candidates = np.unique(s[:, c])
        predicted = s[:, [c]] >= candidates  # (N, candidates)
        tp = (predicted & (y[:, [c]] > 0)).sum(axis=0)
        best = np.max(2 * tp / (predicted.sum(axis=0) + y[:, c].sum()))
        assert calibrated[c] == pytest.approx(best, abs=1e-12)


def test_float32_thresholds_reproduce_the_chosen_sets():
    # Adjacent float32 scores whose midpoint rounds (to even) onto the lower
    # score, so the threshold must fall back to the higher one.
    a = np.nextafter(np.float32(0.5), np.float32(0))
    b = np.nextafter(a, np.float32(0))
    assert np.float32((float(a) + float(b)) / 2) == b
    y = np.array([[1], [0], [0]])
    s = np.array([[a], [b], [np.float32(0.1)]], dtype=np.float32)
    t = calibrate_thresholds(y, s)
    assert t[0] == float(a)
    assert ((s >= t.astype(np.float32)).ravel() == [True, False, False]).all()
    rng = np.random.default_rng(1)
    y = (rng.random((300, 6)) < 0.3).astype(int)
    s = rng.random((300, 6)).astype(np.float32)
    t = calibrate_thresholds(y, s)
    np.testing.assert_array_equal(s >= t, s >= t.astype(np.float32))


def test_bad_arguments():
    with pytest.raises(UsageError, match="min_support"):
        calibrate_thresholds(Y, S, min_support=0)
    with pytest.raises(UsageError, match="shape"):
        calibrate_thresholds(Y, S[:, :3])
