"""In-graph decoding on hand-crafted step functions (kerasmlic.models.decoding)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data.sequences import END, PAD, START
from kerasmlic.models import decoding

EPS = 1e-6


def _logits(probs_by_token, vocab):
    """Log of a distribution given as {token: prob}; unlisted tokens get ~0."""
    row = np.full(vocab, EPS, np.float64)
    for token, p in probs_by_token.items():
        row[token] = p
    return np.log(row).astype(np.float32)


def markov_step(table):
    """Step function whose logits depend only on the previous token."""
    table = tf.constant(table, tf.float32)

    def step(tokens, state, context):
        return tf.gather(table, tokens), state, None

    return step


def timed_step(table):
    """Step function whose logits depend only on the step index (the state)."""
    table = tf.constant(table, tf.float32)

    def step(tokens, state, context):
        return tf.gather(table, state), state + 1, None

    return step


def _decode(step, batch, num_classes, max_labels, beam_width=1, state=None, **kwargs):
    if state is None:
        state = tf.zeros([batch], tf.int32)
    out = decoding.decode(
        step,
        state,
        num_classes=num_classes,
        max_labels=max_labels,
        beam_width=beam_width,
        **kwargs,
    )
    return {k: v.numpy() for k, v in out.items()}


# C = 3 classes: tokens PAD 0, START 1, END 2, c0 3, c1 4, c2 5.
C3 = 3
V3 = 6


def test_greedy_hand_worked_with_masking_and_scores():
    table = np.stack(
        [
            # step 0: c1 wins.
            _logits({3: 0.3, 4: 0.5, 5: 0.1, END: 0.1}, V3),
            # step 1: c1 (0.6) is masked; renormalised c0 0.5, c2 0.25, END 0.25.
            _logits({3: 0.2, 4: 0.6, 5: 0.1, END: 0.1}, V3),
            # step 2: c0, c1 masked; renormalised c2 0.2, END 0.8.
            _logits({3: 0.1, 4: 0.1, 5: 0.16, END: 0.64}, V3),
            _logits({END: 1.0}, V3),
        ]
    )
    out = _decode(timed_step(table), 1, C3, max_labels=3)
    np.testing.assert_array_equal(out["sequence"], [[4, 3, END, PAD]])
    # Inclusion sum_t p_t(c) prod_{s<t} (1 - p_s(c) - p_s(END)): c0 0.3 + 0.6 * 0.5,
    # c1 0.5, c2 0.1 + 0.8 * 0.25 + 0.8 * 0.5 * 0.2.
    np.testing.assert_allclose(out["scores"], [[0.6, 0.5, 0.38]], atol=1e-4)
    np.testing.assert_allclose(out["inclusion_scores"], out["scores"])
    # Noisy-OR 1 - prod_t (1 - p_t(c)): c0 1 - 0.7 * 0.5, c2 1 - 0.9 * 0.75 * 0.8.
    np.testing.assert_allclose(out["noisy_or_scores"], [[0.65, 0.5, 0.46]], atol=1e-4)
    np.testing.assert_allclose(out["max_scores"], [[0.5, 0.5, 0.25]], atol=1e-4)
    maxed = _decode(timed_step(table), 1, C3, max_labels=3, class_score="max")
    np.testing.assert_allclose(maxed["scores"], [[0.5, 0.5, 0.25]], atol=1e-4)
    with pytest.raises(ValueError, match="class_score"):
        _decode(timed_step(table), 1, C3, max_labels=3, class_score="mean")
    np.testing.assert_array_equal(out["multi_hot"], [[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(out["log_prob"], [np.log(0.5 * 0.5 * 0.8)], atol=1e-4)


# A Markov chain where greedy is myopic: START -> c0 (0.5) then END at most 0.4
# (total 0.2), while START -> c1 (0.4) -> END (0.9) scores 0.36.
BEAM_TABLE = np.stack(
    [
        _logits({END: 1.0}, V3),  # after PAD (unused)
        _logits({3: 0.5, 4: 0.4, END: 0.1}, V3),  # after START
        _logits({END: 1.0}, V3),  # after END (unused)
        _logits({4: 0.3, 5: 0.3, END: 0.4}, V3),  # after c0
        _logits({3: 0.05, 5: 0.05, END: 0.9}, V3),  # after c1
        _logits({END: 1.0}, V3),  # after c2
    ]
)


def test_beam_finds_better_sequence_than_greedy():
    greedy = _decode(markov_step(BEAM_TABLE), 1, C3, max_labels=3, beam_width=1)
    beam = _decode(markov_step(BEAM_TABLE), 1, C3, max_labels=3, beam_width=2)
    np.testing.assert_array_equal(greedy["sequence"], [[3, END, PAD, PAD]])
    np.testing.assert_allclose(np.exp(greedy["log_prob"]), [0.2], atol=1e-4)
    np.testing.assert_array_equal(beam["sequence"], [[4, END, PAD, PAD]])
    np.testing.assert_allclose(np.exp(beam["log_prob"]), [0.36], atol=1e-4)
    # Scores along the best beam: step 0 gives c0 0.5, c1 0.4, c2 0; step 1
    # (after c1) c0 and c2 0.05 each.
    # Inclusion: c0 0.5 + 0.4 * 0.05, c1 0.4, c2 0.9 * 0.05.
    np.testing.assert_allclose(beam["scores"], [[0.52, 0.4, 0.045]], atol=1e-4)
    np.testing.assert_allclose(beam["noisy_or_scores"], [[1 - 0.5 * 0.95, 0.4, 0.05]], atol=1e-4)
    np.testing.assert_allclose(beam["max_scores"], [[0.5, 0.4, 0.05]], atol=1e-4)
    np.testing.assert_array_equal(beam["multi_hot"], [[0.0, 1.0, 0.0]])
    # Greedy's scores: step 0, then step 1 after c0 (c0 masked): c1 0.3, c2 0.3.
    # Inclusion: c1 0.4 + 0.5 * 0.3, c2 0.9 * 0.3.
    np.testing.assert_allclose(greedy["scores"], [[0.5, 0.55, 0.27]], atol=1e-4)
    np.testing.assert_allclose(greedy["noisy_or_scores"], [[0.5, 1 - 0.6 * 0.7, 0.3]], atol=1e-4)
    np.testing.assert_allclose(greedy["max_scores"], [[0.5, 0.4, 0.3]], atol=1e-4)


# Greedy emits c0, c1 (total 0.5 * 0.45 * 0.9 = 0.2025), but END at once has 0.3:
# ranked by summed log probability, beam search returns the empty set.
EAGER_END_TABLE = np.stack(
    [
        _logits({3: 0.5, 4: 0.1, 5: 0.1, END: 0.3}, V3),
        _logits({4: 0.45, 5: 0.15, END: 0.4}, V3),
        _logits({5: 0.1, END: 0.9}, V3),
        _logits({END: 1.0}, V3),
    ]
)


def test_length_penalty_keeps_beam_from_returning_only_end():
    step = timed_step(EAGER_END_TABLE)
    greedy = _decode(step, 1, C3, max_labels=3)
    np.testing.assert_array_equal(greedy["sequence"], [[3, 4, END, PAD]])
    plain = _decode(step, 1, C3, max_labels=3, beam_width=4, length_penalty=0.0)
    np.testing.assert_array_equal(plain["sequence"], [[END, PAD, PAD, PAD]])
    # GNMT alpha 1: log(0.2025) / (8/6) = -1.198 beats log(0.3) / 1 = -1.204 and
    # c0, END: log(0.2) / (7/6) = -1.379.
    normalised = _decode(step, 1, C3, max_labels=3, beam_width=4, length_penalty=1.0)
    np.testing.assert_array_equal(normalised["sequence"], [[3, 4, END, PAD]])
    np.testing.assert_allclose(normalised["log_prob"], [np.log(0.2025)], atol=1e-4)
    # The mean log probability per token (offset 0): -0.532 against -1.204.
    mean = _decode(step, 1, C3, max_labels=3, beam_width=4, length_penalty=1.0, length_offset=0.0)
    np.testing.assert_array_equal(mean["sequence"], [[3, 4, END, PAD]])


def test_length_penalty_divisor_hand_worked():
    got = decoding.length_penalty_divisor(tf.constant([1.0, 2.0, 7.0]), 1.0).numpy()
    np.testing.assert_allclose(got, [1.0, 7 / 6, 2.0], rtol=1e-6)
    got = decoding.length_penalty_divisor(tf.constant([3.0]), 0.5, offset=0.0).numpy()
    np.testing.assert_allclose(got, [np.sqrt(3.0)], rtol=1e-6)
    np.testing.assert_array_equal(decoding.length_penalty_divisor(tf.constant([4.0]), 0), [1.0])


def test_length_penalty_lengthens_beam_sequences():
    # Random Markov chains over 5 classes: with the penalty, beam search's
    # sets are longer on average (summed log probability favours short ones).
    rng = np.random.default_rng(0)
    num_classes, batch = 5, 64
    vocab = num_classes + 3
    table = tf.constant(rng.normal(0, 1, (vocab, vocab)), tf.float32)
    noise = tf.constant(rng.normal(0, 1.5, (batch, vocab)), tf.float32)

    def step(tokens, state, context):
        return tf.gather(table, tokens) + context, state, None

    lengths = {}
    for alpha in (0.0, 1.0):
        out = _decode(step, batch, num_classes, 4, 4, context=noise, length_penalty=alpha)
        lengths[alpha] = out["multi_hot"].sum(1)
    assert np.all(lengths[1.0] >= lengths[0.0] - 1)
    assert lengths[1.0].mean() > lengths[0.0].mean() + 0.2, lengths


def _brute_force(table, num_classes, max_labels, length_penalty=0.0):
    """Best and greedy sequences of a Markov table by enumeration (numpy)."""
    vocab = num_classes + 3

    def step_logp(prev, emitted, t):
        allowed = np.ones(vocab, bool)
        allowed[[PAD, START]] = False
        allowed[list(emitted)] = False
        if t >= max_labels:
            allowed[:] = False
            allowed[END] = True
        z = np.where(allowed, table[prev].astype(np.float64), -1e9)
        return z - np.log(np.exp(z - z.max()).sum()) - z.max()

    best = (-np.inf, -np.inf, None)
    labels = range(3, vocab)
    for n in range(max_labels + 1):
        for seq in itertools.permutations(labels, n):
            prev, logp = START, 0.0
            for t, token in enumerate((*seq, END)):
                logp += step_logp(prev, seq[:t], t)[token]
                prev = token
            rank = logp / ((5.0 + n + 1) / 6.0) ** length_penalty
            best = max(best, (rank, logp, (*seq, END)))
    prev, emitted, greedy = START, [], []
    for t in range(max_labels + 1):
        token = int(np.argmax(step_logp(prev, emitted, t)))
        greedy.append(token)
        if token == END:
            break
        emitted.append(token)
        prev = token
    return best[1:], greedy


# Seeds 4, 31, 41 and 53: tables whose best sequence changes with the length penalty.
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 4, 31, 41, 53])
def test_exhaustive_beam_and_greedy_match_enumeration(seed, length_penalty):
    # With C = 2 and max_labels = 2 there are at most 5 partial sequences per
    # step, so a beam of 5 is exhaustive and must find the best sequence (by
    # the length-normalised rank; the early stop must not cut it short).
    rng = np.random.default_rng(seed)
    num_classes, max_labels = 2, 2
    table = rng.normal(0, 2, (5, 5)).astype(np.float32)
    (best_logp, best_seq), greedy_seq = _brute_force(table, num_classes, max_labels, length_penalty)
    beam = _decode(
        markov_step(table), 1, num_classes, max_labels, beam_width=5, length_penalty=length_penalty
    )
    greedy = _decode(markov_step(table), 1, num_classes, max_labels, beam_width=1)
    pad = lambda s: list(s) + [PAD] * (max_labels + 1 - len(s))  # noqa: E731
    np.testing.assert_array_equal(beam["sequence"][0], pad(best_seq))
    np.testing.assert_allclose(beam["log_prob"][0], best_logp, atol=1e-4)
    np.testing.assert_array_equal(greedy["sequence"][0], pad(greedy_seq))
    if not length_penalty:
        assert beam["log_prob"][0] >= greedy["log_prob"][0] - 1e-5


@pytest.mark.parametrize("beam_width", [1, 3])
def test_no_repeats_end_stops_and_max_length(beam_width):
    rng = np.random.default_rng(0)
    num_classes, max_labels, batch = 6, 4, 16
    vocab = num_classes + 3
    # Every label strongly prefers to repeat itself and END is unlikely.
    table = rng.normal(0, 1, (vocab, vocab)).astype(np.float32)
    table[np.arange(vocab), np.arange(vocab)] += 8.0
    table[:, END] -= 3.0
    state = tf.zeros([batch], tf.int32)
    step = markov_step(table)

    def noisy_step(tokens, state, context):
        # Per-example noise so the batch decodes different sequences.
        logits, state, _ = step(tokens, state, context)
        return logits + context, state, None

    noise = tf.constant(rng.normal(0, 2, (batch, vocab)), tf.float32)
    out = _decode(noisy_step, batch, num_classes, max_labels, beam_width, state, context=noise)
    seqs = out["sequence"]
    assert seqs.shape == (batch, max_labels + 1)
    for row, hot in zip(seqs, out["multi_hot"], strict=True):
        end = list(row).index(END)  # every sequence ends with END
        labels = row[:end]
        assert end <= max_labels
        assert np.all(labels >= 3) and len(set(labels)) == len(labels), row
        assert np.all(row[end + 1 :] == PAD), row
        np.testing.assert_array_equal(np.flatnonzero(hot), np.sort(labels - 3))
    # END is unlikely, so most sequences run to the maximum length.
    assert np.mean(seqs[:, max_labels] == END) > 0.5


def test_end_first_gives_empty_set_and_later_steps_do_not_count():
    table = np.stack(
        [_logits({END: 0.7, 3: 0.2, 4: 0.1}, V3), _logits({5: 0.99, END: 0.01}, V3)]
        + [_logits({5: 1.0}, V3)] * 2
    )
    out = _decode(timed_step(table), 2, C3, max_labels=3)
    np.testing.assert_array_equal(out["sequence"], [[END, PAD, PAD, PAD]] * 2)
    np.testing.assert_array_equal(out["multi_hot"], np.zeros((2, 3)))
    # c2 would score 0.99 at step 1, but the sequence had already ended.
    np.testing.assert_allclose(out["scores"], [[0.2, 0.1, 0.0]] * 2, atol=1e-4)
    np.testing.assert_allclose(out["max_scores"], [[0.2, 0.1, 0.0]] * 2, atol=1e-4)
    np.testing.assert_allclose(out["noisy_or_scores"], [[0.2, 0.1, 0.0]] * 2, atol=1e-4)


def test_lengths_force_exact_label_counts_and_step_probs():
    # END is by far the most likely token, but lengths force 2 and 0 labels.
    table = np.stack([_logits({END: 0.9, 3: 0.06, 4: 0.03, 5: 0.01}, V3)] * 4)
    out = _decode(
        timed_step(table),
        2,
        C3,
        max_labels=3,
        lengths=tf.constant([2, 0]),
        return_step_probs=True,
    )
    np.testing.assert_array_equal(out["sequence"], [[3, 4, END, PAD], [END, PAD, PAD, PAD]])
    probs = out["step_probs"]
    assert probs.shape == (2, 4, V3)
    # Step 0 of example 0: END masked, labels renormalised 0.6, 0.3, 0.1.
    np.testing.assert_allclose(probs[0, 0, 3:], [0.6, 0.3, 0.1], atol=1e-4)
    np.testing.assert_allclose(probs[0, 2], np.eye(V3)[END], atol=1e-5)
    np.testing.assert_allclose(probs[1, 0], np.eye(V3)[END], atol=1e-5)
    np.testing.assert_array_equal(probs[1, 1:], 0.0)


def _attention_step(tokens, state, context):
    # Attention over 3 regions: all mass on region (previous token mod 3).
    logits = tf.gather(tf.constant(BEAM_TABLE), tokens)
    return logits, state, tf.one_hot(tokens % 3, 3)


@pytest.mark.parametrize("beam_width", [1, 2])
def test_attention_history_follows_best_beam(beam_width):
    out = _decode(_attention_step, 1, C3, max_labels=3, beam_width=beam_width)
    att = out["attention"]
    assert att.shape == (1, 4, 3)
    prev = [START, *out["sequence"][0]]
    for t in range(4):
        if prev[t] in (END, PAD):
            np.testing.assert_array_equal(att[0, t], 0.0)
        else:
            np.testing.assert_array_equal(att[0, t], np.eye(3)[prev[t] % 3])


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("beam_width", [1, 2])
def test_traces_in_tf_function_without_autograph(jit_compile, beam_width):
    step = markov_step(BEAM_TABLE)

    @tf.function(autograph=False, jit_compile=jit_compile, reduce_retracing=True)
    def run(state):
        return decoding.decode(step, state, num_classes=C3, max_labels=3, beam_width=beam_width)

    expected = _decode(step, 3, C3, 3, beam_width)
    for batch in (3, 1, 0):
        out = run(tf.zeros([batch], tf.int32))
        assert out["sequence"].shape == (batch, 4)
        assert out["scores"].shape == (batch, 3)
        np.testing.assert_array_equal(out["sequence"].numpy(), expected["sequence"][:batch])
        np.testing.assert_allclose(out["scores"].numpy(), expected["scores"][:batch], atol=1e-5)


def test_run_steps_matches_python_unroll():
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    u = tf.constant(rng.normal(size=(3, 3)), tf.float32)

    def cell(x, state, context):
        h = tf.tanh(x @ w + state @ u)
        return h * 2.0, h, tf.nn.softmax(h)

    x = tf.constant(rng.normal(size=(2, 5, 4)), tf.float32)
    h0 = tf.zeros([2, 3])
    outputs, attention = decoding.run_steps(cell, h0, x)
    h, expected = h0, []
    for t in range(5):
        out, h, _ = cell(x[:, t], h, None)
        expected.append(out)
    np.testing.assert_allclose(outputs.numpy(), tf.stack(expected, 1).numpy(), atol=1e-5)
    assert attention.shape == (2, 5, 3)


def test_rejects_bad_beam_width():
    with pytest.raises(ValueError, match="beam_width"):
        _decode(markov_step(BEAM_TABLE), 1, C3, 3, beam_width=7)
