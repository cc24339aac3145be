"""In-graph label-sequence decoding (greedy and beam search) and teacher forcing.

Everything here is plain TensorFlow built from ``tf.while_loop`` and static
Python control flow only, so it traces inside Keras 3 endpoints (no AutoGraph),
under ``tf.function`` and with ``jit_compile=True``.

The loops are generic over a *step function* so every recurrent model shares
them::

    logits, new_state, attention = step_fn(tokens, state, context)

- ``tokens``: ``(N,)`` int32, the previous token of each running sequence;
- ``state``: a nest of ``(N, ...)`` tensors (the recurrent state);
- ``context``: a nest of ``(N, ...)`` tensors that do not change over steps
  (e.g. encoder memory), or None;
- ``logits``: ``(N, V)`` unnormalised scores over the ``V = C + 3`` tokens of
  :mod:`kerasmlic.data.sequences`;
- ``attention``: ``(N, R)`` weights over R regions, or None.

Decoding rules (the same at training time, see
:mod:`kerasmlic.models.sequence_losses`): PAD and START are never emitted, a
label already in the sequence is masked out of the softmax (so no label is
emitted twice), END stops a sequence, and at step ``max_labels`` (the
``max_labels + 1``-th) only END is allowed, so a decoded sequence has at most
``max_labels`` labels and always ends with END.

Per-class scores (for mAP and top-k) come from the step distributions
``p_t`` along the returned sequence ``y_0 .. y_T`` (steps up to and including
its END), one of :data:`CLASS_SCORES`:

- ``inclusion`` (default): ``score_c = sum_t p_t(c) * prod_{s<t} (1 -
  p_s(c) - p_s(END))``, the probability that ``c`` is emitted at some step
  if the decoder, at each step, emits ``c`` with ``p_t(c)``, stops with
  ``p_t(END)`` and otherwise goes on as along the decoded sequence: each
  step's mass conditional on not having stopped nor emitted ``c`` before.
  It is in [0, 1] (disjoint events: first emission at step t), defined for
  a class the decoder does not emit, and a step counts only as much as the
  decoder is likely to reach it;
- ``noisy_or``: ``1 - prod_t (1 - p_t(c))`` (every step counted as if
  reached, ignoring END);
- ``max``: ``max_t p_t(c)`` (the former score: a probability conditional on
  a prefix, not a bound of the inclusion probability).
"""

import tensorflow as tf

from kerasmlic.data.sequences import END, NUM_SPECIAL, PAD, START

NEG_INF = -1e9
"""Logit given to masked tokens (finite, so no inf - inf under XLA or float16)."""

CLASS_SCORES = ("inclusion", "noisy_or", "max")
"""Per-class score formulas of decoded sequences (see the module docstring)."""

_MAX_PROB = 1.0 - 1e-7
"""Step probabilities are capped here in ``log1p(-p)`` so the sum stays finite."""


def length_penalty_divisor(length, alpha, offset=5.0):
    """GNMT length penalty ``((offset + length) / (offset + 1)) ** alpha`` (Wu et al. 2016).

    A hypothesis is ranked by ``log P / length_penalty_divisor(length)``;
    ``alpha = 0`` is the plain summed log probability, ``offset = 0`` and
    ``alpha = 1`` the mean log probability per token.

    Args:
        length: Tokens in the hypothesis (labels plus END), a float tensor.
        alpha: Strength, >= 0.
        offset: The constant 5 of GNMT.

    Returns:
        A float32 tensor like ``length``.
    """
    length = tf.cast(length, tf.float32)
    if not alpha:
        return tf.ones_like(length)
    return tf.pow((offset + length) / (offset + 1.0), float(alpha))


def log_miss(probs):
    """Return ``log(1 - p)`` of class probabilities, finite for ``p = 1``.

    Args:
        probs: Float tensor in [0, 1].

    Returns:
        float32 tensor of the same shape, <= 0.
    """
    return tf.math.log1p(-tf.minimum(tf.cast(probs, tf.float32), _MAX_PROB))


def _go_on(probs):
    """``1 - p(c) - p(END)`` per class from ``(..., V)`` step probabilities, >= 0."""
    return tf.maximum(1.0 - probs[..., NUM_SPECIAL:] - probs[..., END : END + 1], 0.0)


def noisy_or_scores(log_miss_sum):
    """Per-class scores ``1 - prod_t (1 - p_t(c))`` from the summed ``log(1 - p_t(c))``.

    Computed as ``-expm1(sum)`` so small scores keep their precision (their
    ranking across images is what mAP measures).

    Args:
        log_miss_sum: ``(..., C)`` sums of :func:`log_miss` over steps.

    Returns:
        float32 scores in [0, 1].
    """
    return -tf.math.expm1(log_miss_sum)


def _token_mask(vocab_size, tokens):
    """Return a ``(V,)`` bool vector true at ``tokens``."""
    return tf.reduce_any(tf.one_hot(tokens, vocab_size, on_value=True, off_value=False), axis=0)


def allowed_tokens(emitted, step, max_labels, lengths=None):
    """Return which tokens may be emitted at ``step``.

    Args:
        emitted: ``(..., V)`` bool, tokens already in each sequence.
        step: Scalar int step index (0 is the first token after START).
        max_labels: At ``step >= max_labels`` only END is allowed.
        lengths: Optional ``(...)`` int, an exact number of labels per sequence:
            END is masked before step ``lengths`` and forced at it (used by
            orderless training to decode exactly as many labels as the target).

    Returns:
        A bool tensor shaped like ``emitted``.
    """
    vocab_size = emitted.shape[-1]
    specials = _token_mask(vocab_size, [PAD, START])
    end_only = _token_mask(vocab_size, [END])
    allowed = tf.logical_and(tf.logical_not(emitted), tf.logical_not(specials))
    if lengths is not None:
        lengths = tf.cast(lengths, tf.int32)[..., None]
        step_i = tf.cast(step, tf.int32)
        allowed = tf.where(step_i >= lengths, end_only, tf.logical_and(allowed, ~end_only))
    return tf.where(tf.cast(step, tf.int32) >= max_labels, end_only, allowed)


def _masked_log_probs(logits, allowed):
    return tf.nn.log_softmax(tf.where(allowed, tf.cast(logits, tf.float32), NEG_INF), axis=-1)


def _split_beams(x, beam_width):
    """``(B*K, ...)`` -> ``(B, K, ...)``."""
    tail = x.shape[1:]
    if tail.is_fully_defined():
        return tf.reshape(x, [-1, beam_width, *tail.as_list()])
    return tf.reshape(x, tf.concat([[-1, beam_width], tf.shape(x)[1:]], axis=0))


def _merge_beams(x):
    """``(B, K, ...)`` -> ``(B*K, ...)``."""
    tail = x.shape[2:]
    if tail.is_fully_defined():
        return tf.reshape(x, [-1, *tail.as_list()])
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))


def _repeat_beams(x, beam_width):
    """``(B, ...)`` -> ``(B*K, ...)`` with each row repeated K times (beam-major)."""
    if beam_width == 1:
        return x
    return tf.repeat(x, beam_width, axis=0)


def decode(
    step_fn,
    initial_state,
    *,
    num_classes,
    max_labels,
    beam_width=1,
    context=None,
    lengths=None,
    return_step_probs=False,
    length_penalty=0.0,
    length_offset=5.0,
    class_score="inclusion",
):
    """Decode label sequences in the graph: greedy (``beam_width=1``) or beam search.

    Beam search keeps the ``beam_width`` best partial sequences ranked by
    ``log P / length_penalty_divisor(length)`` (:func:`length_penalty_divisor`;
    ``length_penalty=0`` ranks by summed log probability, which favours short
    sequences: every token costs a log probability < 0). Live beams of a step
    share one length, so the penalty only weighs finished beams against live
    ones. A finished beam carries on with PAD at no cost, and the loop stops
    at step ``max_labels`` or as soon as, for every example, the best beam
    has emitted END and no live beam can still overtake it (a live beam's
    score is at most ``log P / divisor(max_labels + 1)``: ``log P`` only
    falls, and the divisor grows at most to that). The first step runs once
    per example, outside the loop, and seeds the beams with its top tokens.

    Args:
        step_fn: ``(tokens, state, context) -> (logits, state, attention|None)``
            (see the module docstring).
        initial_state: Nest of ``(B, ...)`` tensors.
        num_classes: C; the vocabulary is ``C + 3`` tokens.
        max_labels: Maximum number of labels in a sequence.
        beam_width: 1 for greedy decoding, K > 1 for beam search.
        context: Nest of ``(B, ...)`` tensors passed to every step (repeated
            per beam), or None.
        lengths: Optional ``(B,)`` exact label counts (see :func:`allowed_tokens`).
        return_step_probs: Also return the per-step token distributions.
        length_penalty: GNMT alpha of the beam ranking (0: summed log probability).
        length_offset: GNMT offset of the penalty.
        class_score: Which of :data:`CLASS_SCORES` is ``scores``.

    Returns:
        A dict for the best beam:
        ``sequence`` ``(B, max_labels + 1)`` int32 tokens after START (END, then PAD);
        ``scores`` ``(B, C)`` float32, the ``class_score`` formula over the
        sequence's steps up to its END (steps after END do not count; see
        the module docstring), and each formula as ``inclusion_scores``,
        ``noisy_or_scores`` and ``max_scores``;
        ``multi_hot`` ``(B, C)`` float32, the decoded label set;
        ``log_prob`` ``(B,)`` float32, the sequence's summed log probability;
        ``attention`` ``(B, max_labels + 1, R)`` float32 (zeros after END), only
        when the step function returns attention;
        ``step_probs`` ``(B, max_labels + 1, V)`` float32 if asked (zeros after END).
    """
    beam_width = int(beam_width)
    if class_score not in CLASS_SCORES:
        raise ValueError(f"class_score must be one of {CLASS_SCORES}, got {class_score!r}")
    vocab = num_classes + NUM_SPECIAL
    steps = max_labels + 1
    if beam_width < 1 or beam_width > vocab:
        raise ValueError(f"beam_width must be in [1, {vocab}], got {beam_width}")

    batch = tf.shape(tf.nest.flatten(initial_state)[0])[0]
    start = tf.fill([batch], tf.constant(START, tf.int32))
    logits, state, attention = step_fn(start, initial_state, context)
    has_attention = attention is not None
    emitted = tf.zeros([batch, vocab], tf.bool)
    log_probs = _masked_log_probs(logits, allowed_tokens(emitted, 0, max_labels, lengths))
    probs = tf.exp(log_probs)
    beam_scores, tokens = tf.math.top_k(log_probs, k=beam_width)  # (B, K), sorted
    tokens = tf.cast(tokens, tf.int32)

    k = beam_width
    lengths_one = tf.ones_like(beam_scores)
    loop = {
        "tokens": tokens,
        "scores": beam_scores,
        "length": lengths_one,
        "finished": tf.equal(tokens, END),
        "emitted": tf.one_hot(tokens, vocab, on_value=True, off_value=False),
        "sequence": tf.pad(tokens[..., None], [[0, 0], [0, 0], [0, steps - 1]]),
        "class_max": tf.tile(probs[:, None, NUM_SPECIAL:], [1, k, 1]),
        "class_log_miss": tf.tile(log_miss(probs[:, None, NUM_SPECIAL:]), [1, k, 1]),
        "class_incl": tf.tile(probs[:, None, NUM_SPECIAL:], [1, k, 1]),
        "class_alive": tf.tile(_go_on(probs)[:, None], [1, k, 1]),
        "state": tf.nest.map_structure(lambda s: _repeat_beams(s, k), state),
    }
    if has_attention:
        attention = tf.cast(attention, tf.float32)
        loop["attention"] = tf.tile(
            tf.pad(attention[:, None, None, :], [[0, 0], [0, 0], [0, steps - 1], [0, 0]]),
            [1, k, 1, 1],
        )
    if return_step_probs:
        loop["step_probs"] = tf.tile(
            tf.pad(probs[:, None, None, :], [[0, 0], [0, 0], [0, steps - 1], [0, 0]]),
            [1, k, 1, 1],
        )
    if context is not None:
        context = tf.nest.map_structure(lambda c: _repeat_beams(c, k), context)
    beam_lengths = None if lengths is None else tf.repeat(lengths[:, None], k, axis=1)
    # A finished beam continues with PAD at log-probability 0, nothing else.
    pad_only = tf.where(_token_mask(vocab, [PAD]), 0.0, NEG_INF)

    def rank(log_prob, length):
        return log_prob / length_penalty_divisor(length, length_penalty, length_offset)

    longest = tf.constant(float(steps), tf.float32)

    def cond(t, v):
        # Beams stay sorted by rank. An example is done when its best beam has
        # ended and no live beam can reach its rank: a live beam's log P only
        # falls and its divisor grows at most to that of the longest sequence.
        best = rank(v["scores"][:, 0], v["length"][:, 0])
        reachable = tf.where(v["finished"], NEG_INF, rank(v["scores"], longest))
        done = tf.logical_and(
            v["finished"][:, 0], tf.greater_equal(best, tf.reduce_max(reachable, axis=1))
        )
        return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(done)))

    def body(t, v):
        logits, new_state, step_attention = step_fn(
            tf.reshape(v["tokens"], [-1]), v["state"], context
        )
        logits = _split_beams(logits, k)
        log_probs = _masked_log_probs(
            logits, allowed_tokens(v["emitted"], t, max_labels, beam_lengths)
        )
        probs = tf.exp(log_probs)
        finished = v["finished"][..., None]
        candidates = tf.where(finished, pad_only, log_probs)
        total = v["scores"][..., None] + candidates  # (B, K, V)
        new_length = v["length"][..., None] + tf.where(finished, 0.0, 1.0)  # (B, K, 1)
        ranked = tf.reshape(rank(total, new_length), [-1, k * vocab])
        _, index = tf.math.top_k(ranked, k=k)
        index = tf.cast(index, tf.int32)
        scores = tf.gather(tf.reshape(total, [-1, k * vocab]), index, batch_dims=1)
        token = index % vocab
        if k == 1:
            gather = lambda x: x  # noqa: E731 - the only beam is its own parent
        else:
            parent = index // vocab
            gather = lambda x: tf.gather(x, parent, batch_dims=1)  # noqa: E731
        was_finished = gather(v["finished"])
        at_t = tf.equal(tf.range(steps), t)  # (T,) one-hot of the current step
        live = tf.logical_not(was_finished)[..., None]
        step_probs = tf.where(live, gather(probs), 0.0)
        out = {
            "tokens": token,
            "scores": scores,
            "length": gather(v["length"]) + tf.where(was_finished, 0.0, 1.0),
            "finished": tf.logical_or(was_finished, tf.equal(token, END)),
            "emitted": tf.logical_or(
                gather(v["emitted"]), tf.one_hot(token, vocab, on_value=True, off_value=False)
            ),
            "sequence": tf.where(at_t, token[..., None], gather(v["sequence"])),
            "class_max": tf.maximum(gather(v["class_max"]), step_probs[..., NUM_SPECIAL:]),
            "class_log_miss": gather(v["class_log_miss"]) + log_miss(step_probs[..., NUM_SPECIAL:]),
            # A finished beam's step_probs are 0: both stay as they were.
            "class_incl": gather(v["class_incl"])
            + gather(v["class_alive"]) * step_probs[..., NUM_SPECIAL:],
            "class_alive": gather(v["class_alive"]) * _go_on(step_probs),
            "state": tf.nest.map_structure(
                lambda s: _merge_beams(gather(_split_beams(s, k))), new_state
            ),
        }
        if has_attention:
            step_attention = tf.where(
                live, gather(_split_beams(tf.cast(step_attention, tf.float32), k)), 0.0
            )
            out["attention"] = tf.where(
                at_t[:, None], step_attention[:, :, None, :], gather(v["attention"])
            )
        if return_step_probs:
            out["step_probs"] = tf.where(
                at_t[:, None], step_probs[:, :, None, :], gather(v["step_probs"])
            )
        return t + 1, out

    _, final = tf.while_loop(
        cond, body, (tf.constant(1, tf.int32), loop), maximum_iterations=steps - 1
    )
    # top_k keeps beams sorted by rank, so beam 0 is the best.
    sequence = final["sequence"][:, 0]
    result = {
        "sequence": sequence,
        "inclusion_scores": tf.minimum(final["class_incl"][:, 0], 1.0),
        "noisy_or_scores": noisy_or_scores(final["class_log_miss"][:, 0]),
        "max_scores": final["class_max"][:, 0],
        "multi_hot": multi_hot_from_tokens(sequence, num_classes),
        "log_prob": final["scores"][:, 0],
    }
    result["scores"] = result[f"{class_score}_scores"]
    if has_attention:
        result["attention"] = final["attention"][:, 0]
    if return_step_probs:
        result["step_probs"] = final["step_probs"][:, 0]
    return result


def multi_hot_from_tokens(tokens, num_classes):
    """Return the ``(B, C)`` float32 label set of token sequences ``(B, T)``.

    Args:
        tokens: int tensor of tokens; special tokens are ignored.
        num_classes: C.

    Returns:
        float32 0/1 tensor.
    """
    # one_hot of a negative index (a special token) is all zeros.
    return tf.reduce_max(
        tf.one_hot(tf.cast(tokens, tf.int32) - NUM_SPECIAL, num_classes, dtype=tf.float32),
        axis=-2,
    )


def run_steps(cell_step, initial_state, inputs, context=None):
    """Run a recurrent step over given inputs (teacher forcing) with ``tf.while_loop``.

    Args:
        cell_step: ``(x_t, state, context) -> (output, state, attention|None)``
            with ``x_t`` ``(B, E)`` and ``output`` ``(B, O)``.
        initial_state: Nest of ``(B, ...)`` tensors.
        inputs: ``(B, T, E)`` with a static T >= 1.
        context: Nest passed to every step, or None.

    Returns:
        ``(outputs (B, T, O), attention (B, T, R) or None)``.
    """
    steps = inputs.shape[1]
    if steps is None:
        raise ValueError("run_steps needs a static number of steps")
    time_major = tf.transpose(inputs, [1, 0, 2])
    output, state, attention = cell_step(time_major[0], initial_state, context)
    outputs = tf.TensorArray(output.dtype, size=steps, element_shape=output.shape).write(0, output)
    attentions = ()
    if attention is not None:
        attentions = tf.TensorArray(
            attention.dtype, size=steps, element_shape=attention.shape
        ).write(0, attention)

    def body(t, state, outputs, attentions):
        output, state, attention = cell_step(time_major[t], state, context)
        outputs = outputs.write(t, output)
        if attention is not None:
            attentions = attentions.write(t, attention)
        return t + 1, state, outputs, attentions

    if steps > 1:
        _, _, outputs, attentions = tf.while_loop(
            lambda t, *_: t < steps,
            body,
            (tf.constant(1, tf.int32), state, outputs, attentions),
            maximum_iterations=steps - 1,
        )
    outputs = tf.transpose(outputs.stack(), [1, 0, 2])
    if attention is None:
        return outputs, None
    return outputs, tf.transpose(attentions.stack(), [1, 0, 2])
