"""Teacher-forcing masks, the sequence loss and PLA alignment on hand-worked cases."""

import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data.sequences import END, PAD, START
from kerasmlic.models import sequence_losses as sl

# C = 3 classes: tokens PAD 0, START 1, END 2, c0 3, c1 4, c2 5; max_labels = 3.
TARGETS = np.array([[4, 3, END, PAD]], np.int32)


def test_teacher_forcing_mask_matches_decoding_rules():
    allowed = sl.teacher_forcing_mask(tf.constant(TARGETS), 3).numpy()[0].astype(int)
    expected = [
        [0, 0, 1, 1, 1, 1],  # step 0: END and every label
        [0, 0, 1, 1, 0, 1],  # step 1: c1 (token 4) already emitted
        [0, 0, 1, 0, 0, 1],  # step 2: c0 and c1 emitted
        [1, 0, 1, 0, 0, 0],  # step 3 (= max_labels): END only (+ the PAD target itself)
    ]
    np.testing.assert_array_equal(allowed, expected)


def test_sequence_loss_and_scores_hand_worked():
    # Uniform logits: each step is uniform over its allowed tokens (4, 3, 2 of them).
    logits = tf.zeros([2, 4, 6])
    targets = tf.constant(np.concatenate([TARGETS, [[END, PAD, PAD, PAD]]]))
    allowed = sl.teacher_forcing_mask(targets, 3)
    loss = sl.sequence_loss(logits, targets, allowed)
    first = (np.log(4) + np.log(3) + np.log(2)) / 3  # three non-PAD steps
    second = np.log(4)
    np.testing.assert_allclose(loss.numpy(), (first + second) / 2, rtol=1e-5)
    weighted = sl.sequence_loss(logits, targets, allowed, sample_weight=tf.constant([3.0, 1.0]))
    np.testing.assert_allclose(weighted.numpy(), (3 * first + second) / 4, rtol=1e-5)
    scores = sl.teacher_forced_scores(logits, targets, allowed).numpy()
    # Inclusion sum_t p_t(c) prod_{s<t} (1 - p_s(c) - p_s(END)) over the non-PAD
    # steps. Example 0: c0 1/4 + (1/2)(1/3), c1 1/4, c2 1/4 + (1/2)(1/3) +
    # (1/2)(1/3)(1/2); example 1: step 0 only.
    np.testing.assert_allclose(scores, [[5 / 12, 1 / 4, 1 / 2], [1 / 4] * 3], rtol=1e-5)
    noisy_or = sl.teacher_forced_scores(logits, targets, allowed, "noisy_or").numpy()
    # 1 - prod_t (1 - p_t(c)): c0 1 - (3/4)(2/3), c2 1 - (3/4)(2/3)(1/2).
    np.testing.assert_allclose(noisy_or, [[1 / 2, 1 / 4, 3 / 4], [1 / 4] * 3], rtol=1e-5)
    maxed = sl.teacher_forced_scores(logits, targets, allowed, "max").numpy()
    np.testing.assert_allclose(maxed, [[1 / 3, 1 / 4, 1 / 2], [1 / 4] * 3], rtol=1e-5)


def test_sequence_loss_is_finite_with_a_malformed_target():
    targets = tf.constant([[3, 3, END, PAD]])  # c0 twice
    loss = sl.sequence_loss(tf.zeros([1, 4, 6]), targets, sl.teacher_forcing_mask(targets, 3))
    assert np.isfinite(loss.numpy()) and loss.numpy() < 5


def test_sequence_from_multi_hot():
    multi_hot = tf.constant([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], tf.float32)
    seq = sl.sequence_from_multi_hot(multi_hot, max_labels=2).numpy()
    np.testing.assert_array_equal(
        seq, [[START, 4, 5, END], [START, END, PAD, PAD], [START, 3, END, PAD]]
    )
    # Fewer classes than the capacity.
    seq = sl.sequence_from_multi_hot(tf.constant([[1.0, 1.0]]), max_labels=4).numpy()
    np.testing.assert_array_equal(seq, [[START, 3, 4, END, PAD, PAD]])


def _align(predicted, probs, sequence, graph=False):
    fn = sl.align_to_predictions
    if graph:
        fn = tf.function(fn, autograph=False)
    return fn(
        tf.constant(predicted, tf.int32), tf.constant(probs, tf.float32), tf.constant(sequence)
    ).numpy()


@pytest.mark.parametrize("graph", [False, True])
def test_pla_alignment_hand_worked(graph):
    # Capacity 4 (sequence length 6), C = 5 classes (tokens 3..7).
    sequence = np.array(
        [
            [START, 3, 5, 6, END, PAD],  # {c0, c2, c3}
            [START, 3, 4, END, PAD, PAD],  # {c0, c1}
            [START, 3, 4, END, PAD, PAD],  # {c0, c1}
            [START, END, PAD, PAD, PAD, PAD],  # {}
        ],
        np.int32,
    )
    predicted = np.array(
        [
            [5, 4, 3, END, PAD],  # c2 hit at 0, c1 miss at 1, c0 hit at 2
            [5, 6, END, PAD, PAD],  # no hit
            [4, 3, END, PAD, PAD],  # all hit, another order
            [END, PAD, PAD, PAD, PAD],
        ],
        np.int32,
    )
    probs = np.full((4, 5, 5), 0.1, np.float32)
    # Example 1: step 0 prefers c1 (0.6 > 0.1), step 1 then gets c0.
    probs[1, 0, :2] = [0.1, 0.6]
    probs[1, 1, :2] = [0.5, 0.4]
    aligned = _align(predicted, probs, sequence, graph)
    expected = [
        [START, 5, 6, 3, END, PAD],  # c2 kept, c3 fills step 1, c0 kept
        [START, 4, 3, END, PAD, PAD],  # greedy fill by step: c1 then c0
        [START, 4, 3, END, PAD, PAD],  # the predicted order
        [START, END, PAD, PAD, PAD, PAD],
    ]
    np.testing.assert_array_equal(aligned, expected)


def test_pla_alignment_keeps_label_sets_on_random_cases():
    rng = np.random.default_rng(0)
    num_classes, capacity, batch = 6, 4, 32
    sequences, predicted = [], []
    for _ in range(batch):
        k = rng.integers(0, capacity + 1)
        labels = rng.permutation(num_classes)[:k] + 3
        sequences.append([START, *labels, END] + [PAD] * (capacity - k))
        guess = rng.permutation(num_classes)[:k] + 3  # k distinct predictions
        predicted.append([*guess, END] + [PAD] * (capacity - k))
    probs = rng.random((batch, capacity + 1, num_classes)).astype(np.float32)
    aligned = _align(predicted, probs, np.array(sequences, np.int32))
    for seq, out, guess in zip(sequences, aligned, predicted, strict=True):
        k = seq.index(END) - 1
        assert out[k + 1] == END and np.all(out[k + 2 :] == PAD)
        assert sorted(out[1 : k + 1]) == sorted(seq[1 : k + 1])
        for t in range(k):  # every prediction in the target set keeps its step
            if guess[t] in seq[1 : k + 1]:
                assert out[t + 1] == guess[t]
