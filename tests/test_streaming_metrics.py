import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.metrics import evaluate_predictions
from kerasmlic.metrics.streaming import (
    OverallF1,
    OverallPrecision,
    OverallRecall,
    auc_pr,
    default_fit_metrics,
)

C = 10


def _data(seed=0, n=200, levels=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, C)) < 0.25).astype("float32")
    s = np.clip(0.3 * y + 0.7 * rng.random((n, C)), 0, 1)
    if levels:
        s = np.round(s * levels) / levels  # ties, also across the top-3 boundary
    return y, s.astype("float32")


def _stream(metric, y, s, batch=32, weights=None):
    for i in range(0, len(y), batch):
        w = None if weights is None else weights[i : i + batch]
        metric.update_state(y[i : i + batch], s[i : i + batch], sample_weight=w)
    return float(metric.result())


@pytest.mark.parametrize("levels", [None, 5])
def test_overall_metrics_match_numpy(levels):
    y, s = _data(levels=levels)
    r = evaluate_predictions(y, s)
    assert _stream(OverallF1(), y, s) == pytest.approx(r["OF1"], rel=1e-6)
    assert _stream(OverallPrecision(), y, s) == pytest.approx(r["OP"], rel=1e-6)
    assert _stream(OverallRecall(), y, s) == pytest.approx(r["OR"], rel=1e-6)
    assert _stream(OverallF1(top_k=3), y, s) == pytest.approx(r["OF1_top3"], rel=1e-6)
    assert _stream(OverallPrecision(top_k=3), y, s) == pytest.approx(r["OP_top3"], rel=1e-6)
    assert _stream(OverallRecall(top_k=3), y, s) == pytest.approx(r["OR_top3"], rel=1e-6)
    # The accumulated counts themselves are exact.
    metric = OverallF1()
    _stream(metric, y, s, batch=7)
    predicted, actual = s >= 0.5, y > 0
    counts = [metric.true_positives, metric.false_positives, metric.false_negatives]
    assert [float(v.numpy()) for v in counts] == [
        (predicted & actual).sum(),
        (predicted & ~actual).sum(),
        (~predicted & actual).sum(),
    ]


def test_top3_tie_break_matches_numpy_on_a_hand_case():
    # Class 0 and 3 tie at 0.4 for the third slot: the lower index (0) wins, which
    # is a true positive -> TP 3, FP 0, FN 0. Taking class 3 would give F1 = 2/3.
    y = np.array([[1, 1, 1, 0]], dtype="float32")
    s = np.array([[0.4, 0.45, 0.6, 0.4]], dtype="float32")
    assert float(OverallF1(top_k=3)(y, s)) == 1.0
    # Threshold is inclusive (>=): 0.5 exactly is predicted.
    assert float(OverallRecall()(np.array([[1.0, 0.0]]), np.array([[0.5, 0.2]]))) == 1.0


def test_sample_weight_zero_drops_examples_and_reset():
    y, s = _data(1)
    weights = np.ones(len(y), dtype="float32")
    weights[::3] = 0.0
    keep = weights > 0
    metric = OverallF1(top_k=3)
    got = _stream(metric, y, s, weights=weights)
    assert got == pytest.approx(evaluate_predictions(y[keep], s[keep])["OF1_top3"], rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    # Empty state: no prediction and no positive -> 0, not NaN.
    assert float(OverallPrecision().result()) == 0.0


def test_auc_pr_approximates_map():
    rng = np.random.default_rng(2)
    y = (rng.random((512, C)) < 0.25).astype("float32")
    # Overlapping but well-separated: positives in [0.3, 1], negatives in [0, 0.7].
    s = np.where(y > 0, rng.uniform(0.3, 1.0, y.shape), rng.uniform(0.0, 0.7, y.shape))
    s = s.astype("float32")
    m_ap = evaluate_predictions(y, s)["mAP"]
    assert 0.6 < m_ap < 0.85  # the data is not trivially separable
    assert _stream(auc_pr(C), y, s, batch=64) == pytest.approx(m_ap, abs=0.01)
    separated = np.where(y > 0, 0.6 + 0.4 * s, 0.4 * s).astype("float32")
    assert _stream(auc_pr(C), y, separated) == pytest.approx(1.0, abs=1e-3)


def test_metrics_trace_in_tf_function():
    y, s = _data(3, n=64)
    metric = OverallF1(top_k=3)
    step = tf.function(metric.update_state, autograph=False)
    step(tf.constant(y[:32]), tf.constant(s[:32]))
    step(tf.constant(y[32:]), tf.constant(s[32:]))
    assert float(metric.result()) == pytest.approx(evaluate_predictions(y, s)["OF1_top3"], 1e-6)


def test_config_round_trip():
    metric = OverallF1(threshold=0.3, top_k=4, name="f1_top4")
    config = metric.get_config()
    assert config["threshold"] == 0.3 and config["top_k"] == 4 and config["name"] == "f1_top4"
    clone = OverallF1.from_config(config)
    assert (clone.threshold, clone.top_k, clone.name) == (0.3, 4, "f1_top4")
    serialized = keras.saving.serialize_keras_object(metric)
    assert serialized["registered_name"] == "kerasmlic>OverallF1"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, OverallF1) and restored.get_config() == config
    y, s = _data(4, n=64)
    assert float(restored(y, s)) == float(metric(y, s))
    with pytest.raises(ValueError, match="top_k"):
        OverallF1(top_k=0)


def test_default_fit_metrics_in_fit_save_and_load(tmp_path):
    y, s = _data(5, n=64)
    x = np.random.default_rng(5).random((64, 6)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    metrics = default_fit_metrics(C)
    assert [m.name for m in metrics] == ["auc_pr", "f1", "f1_top3"]
    assert default_fit_metrics(C)[1] is not metrics[1]

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(C, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=metrics)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert {"auc_pr", "f1", "f1_top3"} <= set(history.history)

    logs = model.evaluate(ds, verbose=0, return_dict=True)
    scores = model.predict(x, verbose=0)
    r = evaluate_predictions(y, scores)
    assert logs["f1"] == pytest.approx(r["OF1"], rel=1e-5, abs=1e-6)
    assert logs["f1_top3"] == pytest.approx(r["OF1_top3"], rel=1e-5, abs=1e-6)

    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.evaluate(ds, verbose=0, return_dict=True)
    for key in ("auc_pr", "f1", "f1_top3"):
        assert again[key] == pytest.approx(logs[key], rel=1e-6), key
