"""Losses on hand-worked cases and against direct numpy formulas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.models import losses
from kerasmlic.models.registry import build_model
from kerasmlic.training.losses import WeightedBinaryCrossentropy, class_weights


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_binary_crossentropy_hand_worked():
    # -log(sigmoid(0)) - log(1 - sigmoid(2)) = log 2 + log(1 + e^2)
    got = _np(losses.binary_crossentropy(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])))
    np.testing.assert_allclose(got, [np.log(2.0) + np.log1p(np.exp(2.0))], rtol=1e-6)


def test_binary_crossentropy_extreme_logits_finite():
    got = _np(losses.binary_crossentropy(np.array([[1.0, 0.0]]), np.array([[-1e4, 1e4]])))
    np.testing.assert_allclose(got, [2e4], rtol=1e-6)


# Logits at 0 and saturated on both sides, each with a right and a wrong label.
Z = np.array([[0.0, 0.0, 30.0, -30.0, 100.0, -100.0, 30.0, -30.0, 100.0, -100.0]], np.float32)
Y = np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]], np.float32)


def _loss_and_grad(fn, y=Y, z=Z):
    z = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fn(tf.constant(y), z))
    return float(loss.numpy()), tape.gradient(loss, z).numpy()[0]


def test_binary_crossentropy_gradient_hand_worked():
    # d/dz = sigmoid(z) - y: 0.5 - y at 0 (not -y, the relu/abs form's value),
    # +-1 on a saturated wrong label, 0 on a saturated right one.
    loss, grad = _loss_and_grad(losses.binary_crossentropy)
    np.testing.assert_allclose(
        grad, [-0.5, 0.5, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6
    )
    # 2 log 2 at 0, 30 + 30 + 100 + 100 for the wrong labels, ~0 for the right ones.
    np.testing.assert_allclose(loss, 2 * np.log(2.0) + 260.0, rtol=1e-6)


def test_weighted_binary_crossentropy_gradient_hand_worked():
    # class_weight * ((1 - y + pos_weight * y) * sigmoid(z) - pos_weight * y), pos 2, class 3.
    loss, grad = _loss_and_grad(lambda y, z: losses.weighted_binary_crossentropy(y, z, 2.0, 3.0))
    sig = _sigmoid(Z[0].astype(np.float64))
    expected = 3.0 * ((1 - Y[0] + 2 * Y[0]) * sig - 2 * Y[0])
    np.testing.assert_allclose(grad, expected, atol=1e-5)
    np.testing.assert_allclose(grad[:2], [-3.0, 1.5], atol=1e-6)  # at logit 0
    np.testing.assert_allclose(grad[[3, 5]], [-6.0, -6.0], atol=1e-6)  # wrong positives
    np.testing.assert_allclose(
        loss, 3 * (2 * np.log(2) + np.log(2) + 30 + 60 + 200 + 100), rtol=1e-5
    )
    # Per-class weights broadcast over the batch.
    per_class = losses.weighted_binary_crossentropy(
        np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32), [1.0, 4.0], [2.0, 1.0]
    )
    np.testing.assert_allclose(_np(per_class), [(2 + 4) * np.log(2)] * 2, rtol=1e-6)


def test_tf_weighted_cross_entropy_gradient_is_wrong_at_zero():
    # Why the weighted loss is written with softplus: TensorFlow's op gets 0,
    # not -pos_weight / 2, for a positive at logit 0 (relu/abs with sign(0) = 0).
    y, z = tf.constant([1.0]), tf.Variable([0.0])
    with tf.GradientTape() as tape:
        loss = tf.nn.weighted_cross_entropy_with_logits(labels=y, logits=z, pos_weight=2.0)
    assert tape.gradient(loss, z).numpy()[0] == pytest.approx(0.0)
    with tf.GradientTape() as tape:
        loss = losses.weighted_binary_crossentropy(y[None], z[None], 2.0)
    assert tape.gradient(loss, z).numpy()[0] == pytest.approx(-1.0)


def test_weighted_bce_loss_object_on_logits_and_probabilities():
    loss = WeightedBinaryCrossentropy([2.0] * 10, [3.0] * 10)
    assert loss.from_logits
    got = _np(loss.call(Y, Z))
    np.testing.assert_allclose(got, _np(losses.weighted_binary_crossentropy(Y, Z, 2.0, 3.0)))
    restored = WeightedBinaryCrossentropy.from_config(loss.get_config())
    assert restored.from_logits and restored.pos_weight == [2.0] * 10
    # On probabilities (clipped to 1e-7): a wrong label costs at most -log(1e-7).
    probs = WeightedBinaryCrossentropy([1.0], [1.0], from_logits=False)
    y, p = np.array([[1.0], [0.0], [1.0]], np.float32), np.array([[0.8], [0.3], [0.0]], np.float32)
    np.testing.assert_allclose(
        _np(probs.call(y, p)), [-np.log(0.8), -np.log(0.7), -np.log(1e-7)], rtol=1e-4
    )


def test_model_hands_logits_to_a_from_logits_compiled_loss():
    # A confidently wrong label: 100 on the logits, at most 16.1 on clipped
    # probabilities, whose gradient would be 0.
    model = build_model("bce", num_classes=2, image_size=32)
    model.compile(optimizer="sgd", loss=WeightedBinaryCrossentropy([1.0, 1.0], [1.0, 1.0]))
    y = tf.constant([[1.0, 0.0]])
    z = tf.Variable([[-100.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = model.compute_loss(y=y, y_pred={"scores": tf.sigmoid(z), "logits": z})
    np.testing.assert_allclose(float(loss), 100.0 + np.log(2.0), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), [[-1.0, 0.5]], atol=1e-6)
    # A probability loss still gets the scores.
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    loss = model.compute_loss(y=y, y_pred={"scores": tf.sigmoid(z), "logits": z})
    assert float(loss) < 10.0


def test_pos_weight_is_negatives_over_positives_below_one_too():
    # 80 of 100 images positive: 20 / 80 = 0.25 (as documented, no floor at 1);
    # the cap still applies above.
    pos, _ = class_weights([80, 10, 0], 100, "pos_weight", max_pos_weight=5.0)
    np.testing.assert_allclose(pos, [0.25, 5.0, 5.0])


def test_softmax_crossentropy_gradient_hand_worked():
    # d/dz = softmax(z) - y / sum(y): uniform over 4 against (1/2, 1/2, 0, 0).
    y = np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)
    _, grad = _loss_and_grad(losses.softmax_crossentropy, y, np.zeros((1, 4), np.float32))
    np.testing.assert_allclose(grad, [-0.25, -0.25, 0.25, 0.25], atol=1e-6)


def test_asl_gradient_on_saturated_wrong_labels():
    # gamma 0, clip 0: exactly BCE, so 0.5 - y at 0 and +-1 when saturated wrong.
    _, grad = _loss_and_grad(lambda y, z: losses.asymmetric_loss(y, z, 0.0, 0.0, 0.0))
    np.testing.assert_allclose(
        grad, [-0.5, 0.5, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6
    )
    # Paper defaults: a positive at -30 or -100 keeps gradient -1 (no log clamp);
    # the hard negative at 30 has p_m = 0.95, whose gradient through
    # sigmoid'(30) ~ 1e-13 is ~0 by design of the probability margin.
    _, grad = _loss_and_grad(losses.asymmetric_loss)
    np.testing.assert_allclose(grad[[3, 5]], [-1.0, -1.0], atol=1e-6)
    assert grad[0] == pytest.approx(-0.5, abs=1e-6)  # positive at 0: sigmoid(0) - 1


def test_softmax_crossentropy_normalised_target():
    y = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    z = np.zeros((2, 3))
    got = _np(losses.softmax_crossentropy(y, z))
    # Target (1/2, 1/2, 0) against a uniform softmax: log 3; no label: 0.
    np.testing.assert_allclose(got, [np.log(3.0), 0.0], atol=1e-6)


def _asl_numpy(y, z, gamma_neg, gamma_pos, clip):
    p = _sigmoid(z)
    p_m = np.maximum(p - clip, 0.0)
    pos = y * np.log(p) * (1 - p) ** gamma_pos
    neg = (1 - y) * np.log(1 - p_m) * p_m**gamma_neg
    return -(pos + neg).sum(-1)


def test_asl_matches_numpy_formula():
    rng = np.random.default_rng(0)
    y = (rng.random((6, 7)) < 0.4).astype(np.float32)
    z = rng.normal(0, 3, (6, 7)).astype(np.float32)
    for gamma_neg, gamma_pos, clip in ((4.0, 0.0, 0.05), (2.0, 1.0, 0.1), (0.0, 0.0, 0.0)):
        got = _np(losses.asymmetric_loss(y, z, gamma_neg, gamma_pos, clip))
        np.testing.assert_allclose(got, _asl_numpy(y, z, gamma_neg, gamma_pos, clip), rtol=1e-4)


def test_asl_without_focusing_is_bce():
    rng = np.random.default_rng(1)
    y = (rng.random((4, 5)) < 0.5).astype(np.float32)
    z = rng.normal(0, 2, (4, 5)).astype(np.float32)
    np.testing.assert_allclose(
        _np(losses.asymmetric_loss(y, z, 0.0, 0.0, 0.0)),
        _np(losses.binary_crossentropy(y, z)),
        rtol=1e-5,
    )


def test_asl_clip_zeroes_easy_negatives():
    # p = sigmoid(-5) = 0.0067 < clip: the negative costs exactly 0.
    got = _np(losses.asymmetric_loss(np.array([[0.0]]), np.array([[-5.0]])))
    assert got[0] == 0.0


@pytest.mark.parametrize(
    "dtype,gammas", [("float32", (4.0, 0.0)), ("float16", (4.0, 0.0)), ("float32", (0.5, 0.5))]
)
def test_asl_extreme_logits_no_nan_and_finite_gradients(dtype, gammas):
    y = tf.constant([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    big = 6e4 if dtype == "float16" else 1e30
    z = tf.Variable(tf.constant([[-big, big, big, -big, 0.0, 0.0]], dtype=dtype))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.asymmetric_loss(y, z, *gammas))
    grad = tape.gradient(loss, z)
    assert loss.dtype == tf.float32
    assert np.isfinite(loss.numpy())
    # The positive at -big costs about big: no clamp stops its gradient.
    assert loss.numpy() >= 0.99 * big
    assert np.all(np.isfinite(grad.numpy().astype(np.float32)))


def test_warp_rank_weights():
    np.testing.assert_allclose(
        _np(losses.warp_rank_weights(5)), [0.0, 1.0, 1.5, 11 / 6, 25 / 12], rtol=1e-6
    )


def test_warp_every_negative_violates_first_draw():
    # Every negative violates: N = 1, rank = floor(4 / 1) = 4, L(4) = 25/12,
    # hinge = 1 - 0 + 1 = 2.
    y = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    s = np.array([[0.0, 1.0, 1.0, 1.0, 1.0]])
    got = _np(losses.warp_loss(y, s, seed=0))
    np.testing.assert_allclose(got, [25 / 12 * 2.0], rtol=1e-6)


def test_warp_no_violator_costs_nothing():
    y = np.array([[1.0, 1.0, 0.0, 0.0]])
    s = np.array([[3.0, 2.5, 0.0, -1.0]])
    assert _np(losses.warp_loss(y, s, seed=0))[0] == 0.0


def test_warp_rank_estimate_from_sampled_draws():
    # One violating negative among 4: it is drawn at position N ~ U{1..4}, so
    # the rank estimate floor(4 / N) is 4, 2, 1, 1 -> L = 25/12, 3/2, 1, 1, and
    # the loss is L * (1 - 0 + 2) with mean 3 * (25/12 + 3/2 + 1 + 1) / 4.
    y = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]] * 4000, np.float32)
    s = np.array([[0.0, 2.0, -5.0, -5.0, -5.0]] * 4000, np.float32)
    got = _np(losses.warp_loss(y, s, seed=3))
    allowed = 3.0 * np.array([25 / 12, 1.5, 1.0])
    assert np.all(np.min(np.abs(got[:, None] - allowed[None]), axis=1) < 1e-5)
    frac_first = np.mean(np.abs(got - allowed[0]) < 1e-5)
    assert abs(frac_first - 0.25) < 0.03
    assert abs(got.mean() - 3.0 * (25 / 12 + 1.5 + 2.0) / 4) < 0.05


def test_warp_gradient_pushes_positive_up_and_violator_down():
    y = tf.constant([[1.0, 0.0, 0.0]])
    s = tf.Variable([[0.0, 0.5, -3.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.warp_loss(y, s, seed=0))
    grad = tape.gradient(loss, s).numpy()[0]
    # C = 3: the violator (index 1) is the first or second of two draws:
    # rank floor(2/1) = 2 (L = 1.5) or floor(2/2) = 1 (L = 1).
    assert grad[0] in (pytest.approx(-1.5), pytest.approx(-1.0))
    assert grad[1] == pytest.approx(-grad[0])
    assert grad[2] == 0.0


def test_warp_under_xla():
    y = tf.constant([[1.0, 0.0, 0.0, 0.0, 0.0]])
    s = tf.constant([[0.0, 1.0, 1.0, 1.0, 1.0]])
    fn = tf.function(lambda a, b: losses.warp_loss(a, b, seed=0), jit_compile=True)
    np.testing.assert_allclose(fn(y, s).numpy(), [25 / 12 * 2.0], rtol=1e-6)


def test_pairwise_hinge_hand_worked():
    y = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    s = np.array([[1.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    # Pairs (0,1): [1 - 1 + 0.5]+ = 0.5, (0,2): [1 - 1 - 1]+ = 0 -> mean 0.25;
    # no negatives -> 0.
    np.testing.assert_allclose(_np(losses.pairwise_hinge_loss(y, s)), [0.25, 0.0], atol=1e-6)


def test_reduce_mean_with_sample_weight():
    assert float(_np(losses.reduce_mean(np.array([1.0, 3.0])))) == 2.0
    weighted = losses.reduce_mean(np.array([1.0, 3.0]), np.array([1.0, 0.0]))
    assert float(_np(weighted)) == 1.0
