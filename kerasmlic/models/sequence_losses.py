"""Training-side pieces of the recurrent decoders: masked sequence loss, orderless alignment.

Teacher forcing feeds the target sequence ``[START, t1, ..., tk, END, PAD...]``
shifted by one and scores every step with the same token rules as decoding
(:func:`kerasmlic.models.decoding.allowed_tokens`): PAD and START masked,
labels of earlier steps masked, only END at the last step. The loss is the
softmax cross-entropy of the masked logits over the ``C + 3`` tokens, PAD
targets ignored.

Orderless training (``label_order: pla``, Yazici et al., CVPR 2020, "Orderless
Recurrent Models for Multi-label Classification", predicted label alignment)
replaces the fixed target order by one aligned to what the model predicts:
:func:`align_to_predictions`.

:class:`SequenceLoss` is the recurrent models' loss part.
"""

import tensorflow as tf

from kerasmlic.data.sequences import END, NUM_SPECIAL, PAD, START
from kerasmlic.models import losses
from kerasmlic.models.decoding import (
    NEG_INF,
    allowed_tokens,
    log_miss,
    multi_hot_from_tokens,
    noisy_or_scores,
)


def teacher_forcing_mask(targets, num_classes):
    """Return the tokens allowed at each teacher-forced step, as at inference.

    Args:
        targets: ``(B, T)`` int target tokens (the sequence without START);
            ``T - 1`` is the label capacity ``max_labels``.
        num_classes: C.

    Returns:
        ``(B, T, V)`` bool. The target token itself is always allowed, so a
        malformed target (a repeated label) costs a finite loss.
    """
    vocab = num_classes + NUM_SPECIAL
    steps = targets.shape[1]
    target_hot = tf.one_hot(targets, vocab, on_value=True, off_value=False)
    is_label = tf.range(vocab) >= NUM_SPECIAL
    # Labels emitted strictly before each step.
    counts = tf.cumsum(tf.cast(target_hot, tf.int32), axis=1, exclusive=True)
    emitted = tf.logical_and(counts > 0, is_label)
    allowed = allowed_tokens(emitted, tf.range(steps)[:, None], steps - 1)
    return tf.logical_or(allowed, target_hot)


def masked_logits(logits, allowed):
    """Return float32 logits with disallowed tokens set to a large negative value.

    Args:
        logits: ``(..., V)`` logits.
        allowed: Bool tensor of the same shape.

    Returns:
        float32 tensor.
    """
    return tf.where(allowed, tf.cast(logits, tf.float32), NEG_INF)


def sequence_loss(logits, targets, allowed, sample_weight=None):
    """Masked softmax cross-entropy over tokens, averaged over non-PAD steps.

    Each example's loss is the mean over its non-PAD target steps (its labels
    plus END); the batch loss is the (weighted) mean over examples.

    Args:
        logits: ``(B, T, V)`` teacher-forced logits.
        targets: ``(B, T)`` int target tokens.
        allowed: ``(B, T, V)`` bool from :func:`teacher_forcing_mask`.
        sample_weight: Optional ``(B,)`` per-example weights.

    Returns:
        Scalar float32 loss.
    """
    targets = tf.cast(targets, tf.int32)
    per_step = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=masked_logits(logits, allowed)
    )
    valid = tf.cast(tf.not_equal(targets, PAD), tf.float32)
    per_example = tf.reduce_sum(per_step * valid, axis=1) / tf.maximum(
        tf.reduce_sum(valid, axis=1), 1.0
    )
    if sample_weight is None:
        return tf.reduce_mean(per_example)
    weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(per_example * weight), tf.reduce_sum(weight))


def teacher_forced_scores(logits, targets, allowed, class_score="inclusion"):
    """Per-class scores of a teacher-forced pass, as decoding scores its sequence.

    The :data:`kerasmlic.models.decoding.CLASS_SCORES` formula over the
    non-PAD target steps (``inclusion``:
    ``sum_t p_t(c) * prod_{s<t} (1 - p_s(c) - p_s(END))``).

    Args:
        logits: ``(B, T, V)`` logits.
        targets: ``(B, T)`` target tokens (PAD steps are ignored).
        allowed: ``(B, T, V)`` bool mask.
        class_score: ``"inclusion"``, ``"noisy_or"`` or ``"max"``.

    Returns:
        ``(B, C)`` float32 in [0, 1].
    """
    step_probs = tf.nn.softmax(masked_logits(logits, allowed), axis=-1)
    probs = step_probs[..., NUM_SPECIAL:]
    valid = tf.not_equal(targets, PAD)[..., None]
    if class_score == "max":
        return tf.reduce_max(tf.where(valid, probs, 0.0), axis=1)
    if class_score == "noisy_or":
        return noisy_or_scores(tf.reduce_sum(tf.where(valid, log_miss(probs), 0.0), axis=1))
    # The chance of going on past each step without emitting c or END.
    go_on = tf.where(valid, tf.maximum(1.0 - probs - step_probs[..., END : END + 1], 0.0), 1.0)
    alive = tf.math.cumprod(go_on, axis=1, exclusive=True)
    return tf.minimum(tf.reduce_sum(tf.where(valid, alive * probs, 0.0), axis=1), 1.0)


def sequence_from_multi_hot(multi_hot, max_labels):
    """Build ``[START, labels ascending..., END, PAD...]`` sequences from a label set.

    Used when the targets carry no sequence (and as the starting order for
    orderless training, where the order does not matter).

    Args:
        multi_hot: ``(B, C)`` 0/1 targets.
        max_labels: Label capacity; extra labels (highest indices) are dropped.

    Returns:
        ``(B, max_labels + 2)`` int32.
    """
    num_classes = multi_hot.shape[-1]
    present = tf.greater(multi_hot, 0.5)
    index = tf.range(num_classes)
    # Present classes sort first, each group in ascending class order.
    order = tf.argsort(tf.where(present, index, index + num_classes), axis=-1, stable=True)
    order = order[:, :max_labels]
    keep = tf.gather(present, order, batch_dims=1)
    labels = tf.where(keep, order + NUM_SPECIAL, PAD)
    if num_classes < max_labels:
        labels = tf.pad(labels, [[0, 0], [0, max_labels - num_classes]])
    count = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    return _with_start_end(labels, count)


def _with_start_end(labels, count):
    """``(B, L)`` labels (PAD after ``count``) -> ``[START, labels, END at count, PAD]``."""
    batch = tf.shape(labels)[0]
    width = labels.shape[1] + 1
    body = tf.concat([labels, tf.fill([batch, 1], PAD)], axis=1)
    body = tf.where(tf.equal(tf.range(width), count[:, None]), END, body)
    return tf.concat([tf.fill([batch, 1], START), body], axis=1)


def align_to_predictions(predicted, class_probs, sequence):
    """Predicted label alignment (PLA): reorder target labels to match the predictions.

    The decoder, run on its own predictions for exactly ``k`` steps (``k`` =
    number of target labels), predicted ``predicted[:, t]`` with distribution
    ``class_probs[:, t]``. A predicted label that is in the target set keeps
    its step; the remaining target labels fill the remaining steps in step
    order, each step taking the remaining target label it gives the highest
    probability (a greedy stand-in for the Hungarian match on ``-log p``).

    Args:
        predicted: ``(B, T')`` int predicted tokens, ``T' >= L`` (labels at
            steps ``< k``, distinct).
        class_probs: ``(B, T', C)`` per-step class probabilities.
        sequence: ``(B, L + 2)`` int target sequences ``[START, ..., END, PAD...]``.

    Returns:
        ``(B, L + 2)`` int32 aligned sequences with the same label sets.
    """
    sequence = tf.cast(sequence, tf.int32)
    num_classes = class_probs.shape[-1]
    capacity = sequence.shape[1] - 2
    target = multi_hot_from_tokens(sequence, num_classes) > 0.5  # (B, C) bool
    count = tf.reduce_sum(tf.cast(target, tf.int32), axis=1)
    steps = tf.range(capacity)
    in_range = steps[None, :] < count[:, None]  # (B, L)
    pred_class = tf.cast(predicted[:, :capacity], tf.int32) - NUM_SPECIAL
    is_label = pred_class >= 0
    hit = tf.gather(target, tf.maximum(pred_class, 0), batch_dims=1)
    keep = in_range & is_label & hit  # (B, L)
    kept = tf.reduce_any(
        tf.one_hot(tf.where(keep, pred_class, -1), num_classes, on_value=True, off_value=False),
        axis=1,
    )
    remaining = target & ~kept
    probs = tf.transpose(tf.cast(class_probs[:, :capacity], tf.float32), [1, 0, 2])  # (L, B, C)
    keep_tm = tf.transpose(keep, [1, 0])
    fill_tm = tf.transpose(in_range & ~keep, [1, 0])
    pred_tm = tf.transpose(pred_class, [1, 0])

    def body(t, remaining, out):
        choice = tf.argmax(tf.where(remaining, probs[t], -1.0), axis=-1, output_type=tf.int32)
        choice = tf.where(fill_tm[t], choice, -1)
        label = tf.where(keep_tm[t], pred_tm[t], choice)
        taken = tf.one_hot(choice, num_classes, on_value=True, off_value=False)
        return t + 1, remaining & ~taken, out.write(t, label)

    out = tf.TensorArray(tf.int32, size=capacity, element_shape=[None])
    _, _, out = tf.while_loop(
        lambda t, *_: t < capacity,
        body,
        (tf.constant(0, tf.int32), remaining, out),
        maximum_iterations=capacity,
    )
    labels = tf.transpose(out.stack(), [1, 0])
    labels = tf.where(labels >= 0, labels + NUM_SPECIAL, PAD)
    return _with_start_end(labels, count)


class SequenceLoss(losses.Loss):
    """The recurrent decoders' loss: masked token cross-entropy of the teacher-forced pass.

    Plus, with ``aux_loss_weight > 0``, that weight times the binary
    cross-entropy (summed over classes) of the auxiliary head's logits
    (``aux_logits``; :class:`~kerasmlic.models.label_prior.LabelPrior`).

    Args:
        aux_loss_weight: Weight of the auxiliary head's loss (the head exists
            only when it is above 0; see ``RecurrentHead``).
    """

    def __init__(self, *, aux_loss_weight=0.03):
        self.aux_loss_weight = aux_loss_weight

    def __call__(self, y, y_pred, sample_weight=None):
        """Return the scalar loss of a teacher-forced pass.

        Args:
            y: Targets (for the auxiliary head's multi-hot; the token targets
                travel in ``y_pred``, possibly realigned).
            y_pred: The dict from ``RecurrentModel.teacher_forced``.
            sample_weight: Optional ``(B,)`` weights.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: ``y_pred`` is an inference output (no teacher-forced logits).
        """
        if "logits" not in y_pred:
            raise ValueError(
                "recurrent models compute their loss on teacher_forced() outputs, "
                "not on decoded predictions"
            )
        loss = sequence_loss(y_pred["logits"], y_pred["targets"], y_pred["allowed"], sample_weight)
        if self.aux_loss_weight and "aux_logits" in y_pred:
            multi_hot, _ = losses.split_targets(y)
            aux = losses.binary_crossentropy(multi_hot, y_pred["aux_logits"])
            loss = loss + self.aux_loss_weight * losses.reduce_mean(aux, sample_weight)
        return loss
