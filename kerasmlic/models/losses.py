"""Multi-label losses: pure functions on tensors, and the models' loss parts.

Every loss function takes ``y_true`` multi-hot ``(B, C)`` and model logits or
scores ``(B, C)``, and returns per-example losses ``(B,)`` so callers can
apply sample weights; :func:`reduce_mean` averages them. Inputs are cast to
float32 first so the losses stay finite under ``mixed_float16``.

A model's own loss is a part (:class:`Loss`), named by its class
(``loss_cls``, :class:`~kerasmlic.models.base.MultiLabelModel`): its options
are its constructor's keyword-only arguments (``margin``, ``gamma_neg``...),
and it maps the pipeline's targets and the model's output dict to a scalar.
The recurrent decoders' part is
:class:`~kerasmlic.models.sequence_losses.SequenceLoss`.
"""

import keras
from keras import ops

from kerasmlic.errors import UsageError

_EPS = 1e-8


def split_targets(y):
    """Return ``(multi_hot, sequence_or_None)`` from the pipeline's targets.

    Args:
        y: A multi-hot tensor ``(B, C)`` or a dict with ``multi_hot`` and
            optionally ``sequence``.
    """
    if isinstance(y, dict):
        return y["multi_hot"], y.get("sequence")
    return y, None


def _f32(*tensors):
    return [ops.cast(t, "float32") for t in tensors]


def reduce_mean(per_example, sample_weight=None):
    """Average per-example losses, weighted when ``sample_weight`` is given.

    Args:
        per_example: ``(B,)`` losses.
        sample_weight: Optional ``(B,)`` weights.

    Returns:
        A float32 scalar.
    """
    per_example = ops.cast(per_example, "float32")
    if sample_weight is None:
        return ops.mean(per_example)
    w = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.sum(per_example * w) / ops.maximum(ops.sum(w), _EPS)


def binary_crossentropy(y_true, logits):
    """Sigmoid binary cross-entropy summed over classes, from logits.

    ``keras.ops.binary_crossentropy(from_logits=True)`` (on TensorFlow,
    ``tf.nn.sigmoid_cross_entropy_with_logits``): stable for any logit, and its
    gradient is ``sigmoid(z) - y`` everywhere, ``0.5 - y`` at ``z = 0`` too
    (a hand-written ``relu(z) - z*y + softplus(-|z|)`` gets ``-y`` there,
    since TensorFlow takes ``relu'(0) = sign(0) = 0``).

    Args:
        y_true: Multi-hot ``(B, C)``.
        logits: ``(B, C)``.

    Returns:
        ``(B,)`` losses (sum over classes; mean over classes would shrink the
        gradient by 1/C).
    """
    y, z = _f32(y_true, logits)
    return ops.sum(ops.binary_crossentropy(y, z, from_logits=True), axis=-1)


def weighted_binary_crossentropy(y_true, logits, pos_weight=1.0, class_weight=1.0):
    """Binary cross-entropy from logits with per-class positive and class weights.

    ``class_weight * (pos_weight * y * softplus(-z) + (1 - y) * softplus(z))``:
    ``-log sigmoid(z) = softplus(-z)``, stable for any logit, with gradient
    ``class_weight * ((1 - y + pos_weight * y) * sigmoid(z) - pos_weight * y)``
    (``-pos_weight / 2`` for a positive at ``z = 0``). Not
    ``tf.nn.weighted_cross_entropy_with_logits``: it is written with
    ``relu``/``abs`` and its gradient at ``z = 0`` is wrong (0 for a positive
    with ``pos_weight = 2``).

    Args:
        y_true: Multi-hot ``(B, C)``.
        logits: ``(B, C)``.
        pos_weight: Weight of the positive term, a scalar or ``(C,)``.
        class_weight: Weight of both terms, a scalar or ``(C,)``.

    Returns:
        ``(B,)`` losses summed over classes.
    """
    y, z = _f32(y_true, logits)
    pos = ops.cast(pos_weight, "float32")
    cls = ops.cast(class_weight, "float32")
    terms = pos * y * ops.softplus(-z) + (1.0 - y) * ops.softplus(z)
    return ops.sum(cls * terms, axis=-1)


def softmax_crossentropy(y_true, logits):
    """Softmax cross-entropy against the normalised multi-hot target (Mahajan et al. 2018).

    The target is ``y / sum(y)``; an example with no label contributes 0.

    Args:
        y_true: Multi-hot ``(B, C)``.
        logits: ``(B, C)``.

    Returns:
        ``(B,)`` losses.
    """
    y, z = _f32(y_true, logits)
    target = y / ops.maximum(ops.sum(y, axis=-1, keepdims=True), _EPS)
    return -ops.sum(target * ops.log_softmax(z, axis=-1), axis=-1)


def asymmetric_loss(y_true, logits, gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
    """Asymmetric loss (Ridnik et al., ICCV 2021), numerically safe.

    ``L+ = (1 - p)^gamma_pos * log(p)`` for positives and
    ``L- = p_m^gamma_neg * log(1 - p_m)`` for negatives with the shifted
    probability ``p_m = max(p - clip, 0)``; the loss is ``-sum(L+ + L-)``.
    The logs come from the logits (``log p = -softplus(-z)``,
    ``log(1 - p) = -softplus(z)`` without the margin; with it ``1 - p_m >= m``),
    so they are finite for any logit without a clamp (the reference PyTorch
    code clamps at ``log(1e-8)``, which stops the gradient of a confidently
    wrong label), and everything runs in float32. Gradients flow through the
    focusing weights too (the reference code's default).

    Args:
        y_true: Multi-hot ``(B, C)``.
        logits: ``(B, C)``.
        gamma_neg: Focusing parameter for negatives.
        gamma_pos: Focusing parameter for positives.
        clip: Probability margin m for negatives (0 disables it).

    Returns:
        ``(B,)`` losses.
    """
    y, z = _f32(y_true, logits)
    p = ops.sigmoid(z)
    # log(p) = -softplus(-z) is finite with gradient sigmoid(-z) for any z, so
    # a confidently wrong positive keeps its full gradient (no clamp).
    log_p = -ops.softplus(-z)
    if clip and clip > 0:
        p_neg = ops.maximum(p - clip, 0.0)
        # 1 - p_neg >= clip: the log is finite and its gradient never vanishes.
        log_1m_pneg = ops.log(1.0 - p_neg)
    else:
        p_neg = p
        log_1m_pneg = -ops.softplus(z)
    loss_pos = y * log_p
    loss_neg = (1.0 - y) * log_1m_pneg
    if gamma_pos:
        # The floor keeps the gradient of a fractional power finite at 0.
        loss_pos = loss_pos * ops.power(ops.maximum(1.0 - p, _EPS), gamma_pos)
    if gamma_neg:
        loss_neg = loss_neg * ops.power(ops.maximum(p_neg, _EPS), gamma_neg)
    return -ops.sum(loss_pos + loss_neg, axis=-1)


def warp_rank_weights(num_classes):
    """Return the WARP weight table ``L(k) = sum_{j=1..k} 1/j`` for k = 0..C-1.

    Args:
        num_classes: Number of classes C.

    Returns:
        A float32 tensor ``(C,)`` with ``L(0) = 0``.
    """
    k = ops.arange(1, num_classes, dtype="float32")
    return ops.concatenate([ops.zeros((1,), "float32"), ops.cumsum(1.0 / k)])


def warp_loss(y_true, logits, margin=1.0, seed=None):
    """WARP ranking loss (Weston et al. 2011; Gong et al. 2013), vectorised.

    For every (example, positive label) pair, negatives are drawn in a random
    order until one violates the margin (``1 - s_pos + s_neg > 0``); with N the
    number of draws until then, the rank estimate is ``floor((C - 1) / N)``
    and the pair's loss is
    ``L(rank) * (margin - s_pos + s_neg)`` with ``L(k) = sum_{j<=k} 1/j``.
    Vectorised: a random permutation of the labels per (example, positive)
    pair (argsort of random keys, positives sorted last) gives the draw order,
    and the first violator is an ``argmax`` over the violation mask in that
    order; no Python loop. Draws are without replacement.
    A pair with no violator contributes 0.

    Args:
        y_true: Multi-hot ``(B, C)``.
        logits: Label scores ``(B, C)`` (unbounded).
        margin: The ranking margin.
        seed: Optional seed (int or ``keras.random.SeedGenerator``) for the
            negative sampling order.

    Returns:
        ``(B,)`` losses.
    """
    y, s = _f32(y_true, logits)
    num_classes = s.shape[-1]
    batch = ops.shape(s)[0]
    # One random draw order per (example, positive) pair: sort random keys,
    # with positives pushed last so only negatives are ever "drawn".
    keys = keras.random.uniform((batch, num_classes, num_classes), seed=seed)
    keys = keys + 2.0 * y[:, None, :]
    order = ops.argsort(keys, axis=-1)  # (B, C_pos, C_draw): label index of each draw
    s_drawn = ops.take_along_axis(ops.broadcast_to(s[:, None, :], ops.shape(keys)), order, -1)
    neg_drawn = 1.0 - ops.take_along_axis(
        ops.broadcast_to(y[:, None, :], ops.shape(keys)), order, -1
    )
    # hinge[b, i, j]: margin violation of the j-th draw against positive i.
    hinge = margin - s[:, :, None] + s_drawn
    violates = ops.cast(hinge > 0, "float32") * neg_drawn
    has_violator = ops.max(violates, axis=-1)  # (B, C)
    first = ops.argmax(violates, axis=-1)  # (B, C): draws until the first violator - 1
    trials = ops.cast(first, "float32") + 1.0
    rank = ops.clip(ops.floor((num_classes - 1) / trials), 0, num_classes - 1)
    weight = ops.take(warp_rank_weights(num_classes), ops.cast(rank, "int32"))
    first_hinge = ops.take_along_axis(hinge, ops.expand_dims(first, -1), axis=-1)[..., 0]
    weight = ops.stop_gradient(weight * has_violator * y)
    return ops.sum(weight * ops.relu(first_hinge), axis=-1)


def pairwise_hinge_loss(y_true, logits, margin=1.0):
    """Pairwise ranking hinge: mean over (positive, negative) pairs of ``[m - s+ + s-]_+``.

    Args:
        y_true: Multi-hot ``(B, C)``.
        logits: Label scores ``(B, C)``.
        margin: The ranking margin.

    Returns:
        ``(B,)`` losses (0 for an example without positives or negatives).
    """
    y, s = _f32(y_true, logits)
    pair = y[:, :, None] * (1.0 - y[:, None, :])  # (B, pos, neg)
    hinge = ops.relu(margin - s[:, :, None] + s[:, None, :])
    return ops.sum(pair * hinge, axis=(1, 2)) / ops.maximum(ops.sum(pair, axis=(1, 2)), 1.0)


# --------------------------------------------------------------------------- loss parts


def check_choice(option, value, valid):
    """Raise ``UsageError`` unless ``value`` is one of ``valid``.

    Args:
        option: The option's name, for the message.
        value: Its value.
        valid: The valid values.
    """
    if value not in valid:
        raise UsageError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")


def _sampling_seed():
    # A model-owned seed state (the model tracks it as ``sampling_seed``): the
    # negative sampling order differs per step and no global variable is
    # created inside a traced function.
    return keras.random.SeedGenerator(0, name="warp_sampling_seed")


class Loss:
    """Base class of a model's loss part.

    Subclasses take their options as keyword-only constructor arguments, kept
    as attributes of the same name, and define :meth:`per_example` (or
    override :meth:`__call__`).

    Attributes:
        seed: A ``keras.random.SeedGenerator`` the loss samples with, or None;
            the model tracks it (as ``sampling_seed``).
    """

    seed = None

    def per_example(self, multi_hot, y_pred):
        """Return the ``(B,)`` losses.

        Args:
            multi_hot: ``(B, C)`` targets.
            y_pred: The model's output dict.
        """
        raise NotImplementedError

    def __call__(self, y, y_pred, sample_weight=None):
        """Return the scalar loss: the (weighted) mean of :meth:`per_example`.

        Args:
            y: The pipeline's targets (multi-hot or ``{"multi_hot", "sequence"}``).
            y_pred: The model's output dict.
            sample_weight: Optional ``(B,)`` weights.
        """
        multi_hot, _ = split_targets(y)
        return reduce_mean(self.per_example(multi_hot, y_pred), sample_weight)


class BCELoss(Loss):
    """Binary cross-entropy on the ``logits`` output, summed over classes."""

    def per_example(self, multi_hot, y_pred):
        """See :func:`binary_crossentropy`."""
        return binary_crossentropy(multi_hot, y_pred["logits"])


class AsymmetricLoss(Loss):
    """The asymmetric loss (Ridnik et al., ICCV 2021) on the ``logits`` output.

    Args:
        gamma_neg: Focusing parameter for negatives (paper: 4).
        gamma_pos: Focusing parameter for positives (paper: 0).
        clip: Probability margin m shifting negatives (paper: 0.05).
    """

    def __init__(self, *, gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def per_example(self, multi_hot, y_pred):
        """See :func:`asymmetric_loss`."""
        return asymmetric_loss(
            multi_hot, y_pred["logits"], self.gamma_neg, self.gamma_pos, self.clip
        )


class WARPLoss(Loss):
    """The WARP ranking loss on the ``logits`` output, with sampled negatives.

    Args:
        margin: The ranking margin.
    """

    def __init__(self, *, margin=1.0):
        self.margin = margin
        self.seed = _sampling_seed()

    def per_example(self, multi_hot, y_pred):
        """See :func:`warp_loss`."""
        return warp_loss(multi_hot, y_pred["logits"], self.margin, seed=self.seed)


class SoftmaxLoss(Loss):
    """Softmax cross-entropy against the normalised multi-hot target."""

    def per_example(self, multi_hot, y_pred):
        """See :func:`softmax_crossentropy`."""
        return softmax_crossentropy(multi_hot, y_pred["logits"])


RANKING_LOSSES = ("warp", "hinge", "bce")


class RankingLoss(Loss):
    """A ranking loss on similarity logits, chosen by option (the embedding models).

    Args:
        loss: ``warp`` (default), ``hinge`` (pairwise) or ``bce``.
        margin: Ranking margin.
    """

    def __init__(self, *, loss="warp", margin=1.0):
        check_choice("loss", loss, RANKING_LOSSES)
        self.loss, self.margin = loss, margin
        self.seed = _sampling_seed()

    def per_example(self, multi_hot, y_pred):
        """WARP, pairwise hinge or binary cross-entropy on ``logits``."""
        logits = y_pred["logits"]
        if self.loss == "warp":
            return warp_loss(multi_hot, logits, self.margin, seed=self.seed)
        if self.loss == "hinge":
            return pairwise_hinge_loss(multi_hot, logits, self.margin)
        return binary_crossentropy(multi_hot, logits)


SIGMOID_LOSSES = ("bce", "asl")


class SigmoidLoss(Loss):
    """Binary cross-entropy or the asymmetric loss, chosen by option (``label_query``).

    Args:
        loss: ``bce`` or ``asl``.
        gamma_neg: ASL focusing parameter for negatives.
        gamma_pos: ASL focusing parameter for positives.
        clip: ASL probability margin.
    """

    def __init__(self, *, loss="bce", gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
        check_choice("loss", loss, SIGMOID_LOSSES)
        self.loss = loss
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def per_example(self, multi_hot, y_pred):
        """BCE or ASL on ``logits``."""
        logits = y_pred["logits"]
        if self.loss == "asl":
            return asymmetric_loss(multi_hot, logits, self.gamma_neg, self.gamma_pos, self.clip)
        return binary_crossentropy(multi_hot, logits)
