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
"""

import tensorflow as tf

from kerasmlic.data.sequences import END, NUM_SPECIAL, PAD, START

NEG_INF = -1e9
"""Logit given to masked tokens (finite, so no inf - inf under XLA or float16)."""


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
):
    """Decode label sequences in the graph: greedy (``beam_width=1``) or beam search.

    Beam search keeps the ``beam_width`` best partial sequences by summed log
    probability (no length normalisation); a finished beam carries on with PAD
    at no cost, and the loop stops as soon as the best beam of every example
    has emitted END (exact: the other beams' scores can only fall) or at step
    ``max_labels``. The first step runs once per
    example, outside the loop, and seeds the beams with its top tokens.

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

    Returns:
        A dict for the best beam:
        ``sequence`` ``(B, max_labels + 1)`` int32 tokens after START (END, then PAD);
        ``scores`` ``(B, C)`` float32, the highest probability each class gets at
        any step of the sequence (steps after END do not count);
        ``multi_hot`` ``(B, C)`` float32, the decoded label set;
        ``log_prob`` ``(B,)`` float32, the sequence's log probability;
        ``attention`` ``(B, max_labels + 1, R)`` float32 (zeros after END), only
        when the step function returns attention;
        ``step_probs`` ``(B, max_labels + 1, V)`` float32 if asked (zeros after END).
    """
    beam_width = int(beam_width)
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
    loop = {
        "tokens": tokens,
        "scores": beam_scores,
        "finished": tf.equal(tokens, END),
        "emitted": tf.one_hot(tokens, vocab, on_value=True, off_value=False),
        "sequence": tf.pad(tokens[..., None], [[0, 0], [0, 0], [0, steps - 1]]),
        "class_max": tf.tile(probs[:, None, NUM_SPECIAL:], [1, k, 1]),
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

    def cond(t, v):
        # Beams stay sorted by score and scores only fall, so once the best beam
        # of every example has ended no other beam can overtake it.
        return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(v["finished"][:, 0])))

    def body(t, v):
        logits, new_state, step_attention = step_fn(
            tf.reshape(v["tokens"], [-1]), v["state"], context
        )
        logits = _split_beams(logits, k)
        log_probs = _masked_log_probs(
            logits, allowed_tokens(v["emitted"], t, max_labels, beam_lengths)
        )
        probs = tf.exp(log_probs)
        candidates = tf.where(v["finished"][..., None], pad_only, log_probs)
        total = tf.reshape(v["scores"][..., None] + candidates, [-1, k * vocab])
        scores, index = tf.math.top_k(total, k=k)
        index = tf.cast(index, tf.int32)
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
            "finished": tf.logical_or(was_finished, tf.equal(token, END)),
            "emitted": tf.logical_or(
                gather(v["emitted"]), tf.one_hot(token, vocab, on_value=True, off_value=False)
            ),
            "sequence": tf.where(at_t, token[..., None], gather(v["sequence"])),
            "class_max": tf.maximum(gather(v["class_max"]), step_probs[..., NUM_SPECIAL:]),
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
    # top_k keeps beams sorted by score, so beam 0 is the best.
    sequence = final["sequence"][:, 0]
    result = {
        "sequence": sequence,
        "scores": final["class_max"][:, 0],
        "multi_hot": multi_hot_from_tokens(sequence, num_classes),
        "log_prob": final["scores"][:, 0],
    }
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
