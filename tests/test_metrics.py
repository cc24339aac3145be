import itertools
import json

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from kerasmlic.errors import UsageError
from kerasmlic.metrics import (
    HEADLINE_KEYS,
    RESULT_KEYS,
    average_precision_per_class,
    evaluate_predictions,
    format_metrics_table,
    format_per_class,
    precision_recall_curves,
    top_k_predictions,
)

# Hand-worked example: 3 images x 4 classes.
#
#            class:   0     1     2     3
# y_true  img0:       1     0     1     0
#         img1:       0     1     0     0
#         img2:       1     0     1     0        (class 3 has no positive)
# scores  img0:     0.9   0.2   0.6   0.6
#         img1:     0.4   0.45  0.6   0.4
#         img2:     0.3   0.1   0.2   0.2
#
# AP (ranking each column by score, tied scores form one point):
#   class 0: 0.9(+) 0.4(-) 0.3(+) -> P@1 = 1, P@3 = 2/3, AP = (1 + 2/3)/2 = 5/6
#   class 1: 0.45(+) first -> AP = 1
#   class 2: {0.6(+), 0.6(-)} tie -> P = 1/2 at recall 1/2; 0.2(+) -> P = 2/3 at recall 1
#            AP = 1/2*1/2 + 1/2*2/3 = 7/12 (5/6 if the tie were broken positive-first)
#   class 3: no positive -> None, left out of mAP
#   mAP = (5/6 + 1 + 7/12) / 3 = 29/36
#
# Threshold 0.5 (scores >= 0.5): img0 {0, 2, 3}, img1 {2}, img2 {} (no prediction)
#   class 0: TP1 FP0 FN1 -> P 1,   R 1/2, F1 2/3
#   class 1: TP0 FP0 FN1 -> P 0 (never predicted), R 0, F1 0
#   class 2: TP1 FP1 FN1 -> P 1/2, R 1/2, F1 1/2
#   class 3: TP0 FP1 FN0 -> P 0,   R 0 (no positive), F1 0
#   CP = (1 + 0 + 1/2 + 0)/4 = 3/8, CR = (1/2 + 0 + 1/2 + 0)/4 = 1/4
#   CF1 = 2*3/8*1/4 / (3/8 + 1/4) = 3/10   (mean per-class F1 would be 7/24)
#   OP = 2/(2+2) = 1/2, OR = 2/(2+3) = 2/5, OF1 = 2*2/(4+2+3) = 4/9
# Per image: img0 P 2/3 R 1 F1 4/5; img1 P 0 R 0 F1 0; img2 (no prediction) P 0 R 0 F1 0
#   EP = 2/9, ER = 1/3, EF1 = 4/15
# Top-3: img0 {0, 2, 3}; img1 {2, 1, 0} (0 and 3 tie at 0.4, lower index 0 wins);
#        img2 {0, 2, 3}
#   class 0: TP2 FP1 FN0 -> P 2/3 R 1;  class 1: TP1 -> P 1 R 1
#   class 2: TP2 FP1 FN0 -> P 2/3 R 1;  class 3: TP0 FP2 -> P 0 R 0
#   CP = (2/3 + 1 + 2/3 + 0)/4 = 7/12, CR = 3/4, CF1 = 2*7/12*3/4 / (7/12 + 3/4) = 21/32
#   OP = 5/9, OR = 5/5 = 1, OF1 = 10/14 = 5/7
Y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0]])
S = np.array([[0.9, 0.2, 0.6, 0.6], [0.4, 0.45, 0.6, 0.4], [0.3, 0.1, 0.2, 0.2]])
NAMES = ["person", "bicycle", "car", "motorcycle"]

EXPECTED = {
    "mAP": 29 / 36,
    "CP": 3 / 8,
    "CR": 1 / 4,
    "CF1": 3 / 10,
    "OP": 1 / 2,
    "OR": 2 / 5,
    "OF1": 4 / 9,
    "CP_top3": 7 / 12,
    "CR_top3": 3 / 4,
    "CF1_top3": 21 / 32,
    "OP_top3": 5 / 9,
    "OR_top3": 1.0,
    "OF1_top3": 5 / 7,
    "EP": 2 / 9,
    "ER": 1 / 3,
    "EF1": 4 / 15,
}
EXPECTED_PER_CLASS = [
    ("person", 5 / 6, 1.0, 1 / 2, 2 / 3, 2),
    ("bicycle", 1.0, 0.0, 0.0, 0.0, 1),
    ("car", 7 / 12, 1 / 2, 1 / 2, 1 / 2, 2),
    ("motorcycle", None, 0.0, 0.0, 0.0, 0),
]


def test_hand_worked_example():
    r = evaluate_predictions(Y, S, class_names=NAMES)
    assert tuple(r) == RESULT_KEYS
    for key, value in EXPECTED.items():
        assert r[key] == pytest.approx(value, abs=1e-12), key
    assert r["num_images"] == 3
    for entry, expected in zip(r["per_class"], EXPECTED_PER_CLASS, strict=True):
        name, ap, p, rec, f1, support = expected
        assert entry["name"] == name
        assert entry["AP"] == (None if ap is None else pytest.approx(ap, abs=1e-12))
        assert (entry["P"], entry["R"], entry["F1"]) == pytest.approx((p, rec, f1), abs=1e-12)
        assert entry["support"] == support


def test_hand_worked_ap_and_top3():
    ap = average_precision_per_class(Y, S)
    np.testing.assert_allclose(ap[:3], [5 / 6, 1.0, 7 / 12], atol=1e-12)
    assert np.isnan(ap[3])
    expected_top3 = np.array([[1, 0, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(top_k_predictions(S, 3), expected_top3)


def test_ap_ignores_order_inside_ties():
    # Class 2's tie (0.6 positive, 0.6 negative) must give 7/12 whatever the image order.
    for perm in itertools.permutations(range(3)):
        ap = average_precision_per_class(Y[list(perm)], S[list(perm)])
        np.testing.assert_allclose(ap[:3], [5 / 6, 1.0, 7 / 12], atol=1e-12)


def test_result_is_plain_json():
    r = evaluate_predictions(Y, S)
    for key in HEADLINE_KEYS:
        assert type(r[key]) is (int if key == "num_images" else float), key
    for entry in r["per_class"]:
        assert type(entry["support"]) is int and type(entry["P"]) is float
    back = json.loads(json.dumps(r, allow_nan=False))
    assert back["per_class"][3]["AP"] is None
    assert back["per_class"][0]["name"] == "class_0"


def test_given_predicted_sets_and_per_class_thresholds():
    # A threshold of 0.25 for class 0 adds img1 and img2 to class 0; passing those
    # sets as `predicted` must give the same result.
    thresholds = np.array([0.25, 0.5, 0.5, 0.5])
    by_threshold = evaluate_predictions(Y, S, thresholds=thresholds)
    sets = S >= thresholds
    by_sets = evaluate_predictions(Y, S, predicted=sets.astype(int))
    assert by_threshold == by_sets
    # class 0 now: TP2 FP1 FN0 -> P 2/3, R 1.
    assert by_sets["per_class"][0]["P"] == pytest.approx(2 / 3)
    assert by_sets["per_class"][0]["R"] == 1.0
    # The predicted sets change only set figures, never mAP or top-3.
    base = evaluate_predictions(Y, S)
    assert by_sets["mAP"] == base["mAP"] and by_sets["OF1_top3"] == base["OF1_top3"]
    assert (base["OR"], by_sets["OR"]) == pytest.approx((2 / 5, 3 / 5))


def _random_case(seed, n=300, c=12, levels=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.2).astype(int)
    y[:, -1] = 0  # a class with no positive
    y[:5] = 0  # images with no label
    s = np.clip(0.35 * y + rng.random((n, c)) * 0.65, 0.0, 1.0)
    if levels:
        s = np.round(s * levels) / levels  # heavy ties
    s[5:10] = 0.1  # images with no prediction at 0.5, all scores tied
    return y, s


@pytest.mark.parametrize("levels", [None, 10])
def test_ap_matches_sklearn(levels):
    y, s = _random_case(1, levels=levels)
    ap = average_precision_per_class(y, s)
    expected = [average_precision_score(y[:, c], s[:, c]) for c in range(y.shape[1] - 1)]
    np.testing.assert_allclose(ap[:-1], expected, rtol=0, atol=1e-12)
    assert np.isnan(ap[-1])
    r = evaluate_predictions(y, s)
    assert r["mAP"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_ap_float32_ties_survive():
    # float32 scores that tie must still tie (and distinct ones stay distinct).
    y, s = _random_case(2, levels=7)
    s32 = s.astype(np.float32)
    expected = [average_precision_score(y[:, c], s32[:, c]) for c in range(y.shape[1] - 1)]
    np.testing.assert_allclose(average_precision_per_class(y, s32)[:-1], expected, atol=1e-12)


@pytest.mark.parametrize("levels", [None, 10])
def test_set_metrics_match_sklearn(levels):
    y, s = _random_case(3, levels=levels)
    pred = (s >= 0.5).astype(int)
    assert (pred.sum(axis=1) == 0).any() and (y.sum(axis=1) == 0).any()
    r = evaluate_predictions(y, s)

    p, rec, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose([e["P"] for e in r["per_class"]], p, atol=1e-12)
    np.testing.assert_allclose([e["R"] for e in r["per_class"]], rec, atol=1e-12)
    np.testing.assert_allclose([e["F1"] for e in r["per_class"]], f1, atol=1e-12)
    assert [e["support"] for e in r["per_class"]] == support.tolist()

    mp, mr, _, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (r["CP"], r["CR"]) == pytest.approx((mp, mr), abs=1e-12)
    assert r["CF1"] == pytest.approx(2 * mp * mr / (mp + mr), abs=1e-12)

    op, orr, of1, _ = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
    assert (r["OP"], r["OR"], r["OF1"]) == pytest.approx((op, orr, of1), abs=1e-12)

    ep, er, ef1, _ = precision_recall_fscore_support(y, pred, average="samples", zero_division=0)
    assert (r["EP"], r["ER"], r["EF1"]) == pytest.approx((ep, er, ef1), abs=1e-12)

    top3 = top_k_predictions(s, 3).astype(int)
    mp, mr, _, _ = precision_recall_fscore_support(y, top3, average="macro", zero_division=0)
    op, orr, of1, _ = precision_recall_fscore_support(y, top3, average="micro", zero_division=0)
    got = [r[k] for k in ("CP_top3", "CR_top3", "OP_top3", "OR_top3", "OF1_top3")]
    assert got == pytest.approx([mp, mr, op, orr, of1], abs=1e-12)


@pytest.mark.parametrize("k", [0, 1, 3, 5, 12, 20])
def test_top_k_matches_brute_force_with_ties(k):
    _, s = _random_case(4, n=60, levels=4)
    chosen = top_k_predictions(s, k)
    for row, got in zip(s, chosen, strict=True):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))[:k]
        expected = np.zeros(len(row), dtype=bool)
        expected[ranked] = True
        np.testing.assert_array_equal(got, expected)
    assert (chosen.sum(axis=1) == min(k, s.shape[1])).all()


def test_top3_with_fewer_than_three_classes_takes_all():
    y = np.array([[1, 0], [0, 1]])
    s = np.array([[0.9, 0.1], [0.2, 0.3]])
    r = evaluate_predictions(y, s)
    assert (r["OP_top3"], r["OR_top3"], r["CR_top3"]) == (0.5, 1.0, 1.0)


def test_precision_recall_curves_match_sklearn():
    y, s = _random_case(5, levels=20)
    curves = precision_recall_curves(y, s)
    assert curves["per_class"][-1] is None
    for c in range(y.shape[1] - 1):
        p, r, t = precision_recall_curve(y[:, c], s[:, c])
        got = curves["per_class"][c]
        np.testing.assert_allclose(got["precision"], p, atol=1e-12)
        np.testing.assert_allclose(got["recall"], r, atol=1e-12)
        np.testing.assert_array_equal(got["thresholds"], t)
    p, r, t = precision_recall_curve(y.ravel(), s.ravel())
    np.testing.assert_allclose(curves["micro"]["precision"], p, atol=1e-12)
    np.testing.assert_allclose(curves["micro"]["recall"], r, atol=1e-12)
    np.testing.assert_array_equal(curves["micro"]["thresholds"], t)


def test_no_positive_anywhere_gives_null_map():
    r = evaluate_predictions(np.zeros((2, 3)), np.full((2, 3), 0.7))
    assert r["mAP"] is None
    assert (r["OP"], r["OR"], r["EP"], r["EF1"]) == (0.0, 0.0, 0.0, 0.0)
    assert precision_recall_curves(np.zeros((2, 3)), np.ones((2, 3)))["micro"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"y_true": Y[:2]}, "shape"),
        ({"y_true": Y * 2}, "only 0 and 1"),
        ({"y_true": Y[0]}, r"\(N, C\)"),
        ({"scores": np.where(S > 0.5, np.nan, S)}, "NaN"),
        ({"predicted": S}, "only 0 and 1"),
        ({"thresholds": [0.5, 0.5]}, "thresholds"),
        ({"class_names": ["a", "b"]}, "class_names"),
    ],
)
def test_bad_input_raises_usage_error(kwargs, message):
    args = {"y_true": Y, "scores": S, **kwargs}
    with pytest.raises(UsageError, match=message):
        evaluate_predictions(**args)


def test_top_k_rejects_bad_k():
    with pytest.raises(UsageError, match="k must be"):
        top_k_predictions(S, -1)
    with pytest.raises(UsageError, match="k must be"):
        top_k_predictions(S, 2.5)


def test_format_metrics_table():
    r = evaluate_predictions(Y, S, class_names=NAMES)
    text = format_metrics_table(r)
    lines = text.splitlines()
    assert lines[0].split() == ["images", "3"]
    assert lines[1].split() == ["mAP", "80.6"]  # 29/36
    assert lines[3].split() == ["label", "set", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    assert lines[4].split() == ["threshold", "37.5", "25.0", "30.0", "50.0", "40.0", "44.4"]
    assert lines[5].split() == ["top-3", "58.3", "75.0", "65.6", "55.6", "100.0", "71.4"]
    assert lines[8].split() == ["threshold", "22.2", "33.3", "26.7"]
    # Columns line up: every row of the six-figure block has the same width.
    assert len({len(line) for line in lines[3:6]}) == 1
    assert "n/a" in format_metrics_table({**r, "mAP": None})
    with pytest.raises(UsageError, match="lacks keys: mAP"):
        format_metrics_table({k: v for k, v in r.items() if k != "mAP"})


def test_format_per_class():
    r = evaluate_predictions(Y, S, class_names=NAMES)
    rows = format_per_class(r).splitlines()
    assert rows[0].split() == ["#", "class", "support", "AP", "P", "R", "F1"]
    # Sorted by AP, descending; the class without AP last.
    assert [row.split()[1] for row in rows[1:]] == ["bicycle", "person", "car", "motorcycle"]
    assert rows[2].split() == ["0", "person", "2", "83.3", "100.0", "50.0", "66.7"]
    assert rows[4].split() == ["3", "motorcycle", "0", "n/a", "0.0", "0.0", "0.0"]
    top = format_per_class(r, top=2, sort_by="support").splitlines()
    assert [row.split()[1] for row in top[1:]] == ["person", "car"]
    by_index = format_per_class(r, sort_by="index").splitlines()
    assert [row.split()[0] for row in by_index[1:]] == ["0", "1", "2", "3"]
    with pytest.raises(UsageError, match="sort_by"):
        format_per_class(r, sort_by="name")
