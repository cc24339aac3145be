"""The linear head and its baselines: ``warp``, ``softmax``, ``bce``, ``asl``.

Each is encoder -> pooled vector -> (dropout) -> one linear score per label
(:class:`LinearHead`); they differ only in the loss and in how scores become
a predicted set:

- ``bce``: sigmoid per label, binary cross-entropy; predicted = score >= 0.5.
- ``asl``: as ``bce`` with the asymmetric loss (Ridnik et al. 2021).
- ``warp``: WARP ranking loss on the linear scores (Weston et al. 2011, Gong
  et al. 2013); scores = sigmoid(logits). The loss pushes positives above
  negatives by a margin of 1, so a trained model's positives sit around
  logit >= 0.5 and negatives below -0.5; threshold 0.5 (logit 0) is the
  midpoint. Calibrate per-class thresholds for better sets.
- ``softmax``: softmax over labels against the normalised multi-hot target
  (Mahajan et al. 2018); scores = softmax probabilities, which sum to 1, so a
  fixed 0.5 threshold would rarely fire for images with several labels. The
  default threshold is ``1 / (2 * expected_labels)`` (``expected_labels``
  option, default 2.9, COCO's mean labels per image): a label holding at least
  half of an even share of the probability mass is predicted.
"""

from keras import layers

from kerasmlic.models import losses
from kerasmlic.models.base import MultiLabelModel
from kerasmlic.models.head import Head
from kerasmlic.models.pooling import check_pooling, pool_feature_map
from kerasmlic.models.registry import register_model


class LinearHead(Head):
    """Pooled feature -> (dropout) -> one linear logit per label -> activation.

    Outputs: ``scores`` (B, C) float32, ``predicted`` (B, C) float32 and
    ``logits`` (B, C) float32 (pre-activation, what the loss reads).

    Args:
        num_classes: Number of classes C.
        dropout: Dropout rate on the pooled feature.
        threshold: Initial per-class threshold on the scores.
        pooling: How the feature map becomes one vector: ``"avg"`` (the
            encoder's global average), ``"max"`` or ``"avgmax"`` (their sum).
    """

    activation = "sigmoid"

    def __init__(self, num_classes, *, dropout=0.0, threshold=0.5, pooling="avgmax"):
        check_pooling(pooling)
        super().__init__(num_classes)
        self.dropout, self.threshold, self.pooling = dropout, threshold, pooling

    def __call__(self, feature_map, pooled):
        """Build the head: pooling, dropout, layers ``logits``, ``scores``, ``predicted``."""
        x = pool_feature_map(feature_map, pooled, self.pooling)
        if self.dropout:
            x = layers.Dropout(self.dropout, name="dropout")(x)
        logits = layers.Dense(self.num_classes, dtype="float32", name="logits")(x)
        return self.scored_outputs(logits, self.threshold, self.activation)


class SoftmaxHead(LinearHead):
    """The linear head with a softmax over labels, and a threshold for shared mass.

    Softmax scores share a unit of mass, so the default threshold is
    ``1 / (2 * expected_labels)``: a label holding at least half of an even
    share among the expected number of labels per image is predicted.

    Args:
        num_classes: Number of classes C.
        dropout: Dropout rate on the pooled feature.
        threshold: Per-class threshold on the softmax scores (None: derived
            from ``expected_labels``).
        pooling: ``"avg"``, ``"max"`` or ``"avgmax"`` (see :class:`LinearHead`).
        expected_labels: Mean number of labels per image, for the default threshold.
    """

    activation = "softmax"

    def __init__(
        self, num_classes, *, dropout=0.0, threshold=None, pooling="avgmax", expected_labels=2.9
    ):
        if threshold is None:
            threshold = 1.0 / (2.0 * expected_labels)
        super().__init__(num_classes, dropout=dropout, threshold=threshold, pooling=pooling)
        self.expected_labels = expected_labels


@register_model("bce")
class BCEModel(MultiLabelModel):
    """Sigmoid per label trained with binary cross-entropy (the study's strongest baseline).

    Options: the encoder's (:class:`~kerasmlic.models.base.MultiLabelModel`)
    and :class:`LinearHead`'s. The one model whose loss ``train.class_weighting``
    may replace with a class-weighted BCE.
    """

    head_cls = LinearHead
    loss_cls = losses.BCELoss
    supports_class_weighting = True


@register_model("asl")
class ASLModel(MultiLabelModel):
    """Sigmoid per label trained with the asymmetric loss (Ridnik et al., ICCV 2021).

    Options: the encoder's, :class:`LinearHead`'s and
    :class:`~kerasmlic.models.losses.AsymmetricLoss`'s (``gamma_neg``,
    ``gamma_pos``, ``clip``).
    """

    head_cls = LinearHead
    loss_cls = losses.AsymmetricLoss


@register_model("warp")
class WARPModel(MultiLabelModel):
    """Linear label scores trained with the WARP ranking loss (Weston 2011, Gong 2013).

    Scores are ``sigmoid(logits)`` to meet the [0, 1] contract (monotone, so
    rankings and mAP are those of the raw scores); the margin-1 ranking puts
    positives above negatives around logit 0, hence the default threshold 0.5.
    Options: the encoder's, :class:`LinearHead`'s and
    :class:`~kerasmlic.models.losses.WARPLoss`'s (``margin``).
    """

    head_cls = LinearHead
    loss_cls = losses.WARPLoss


@register_model("softmax")
class SoftmaxModel(MultiLabelModel):
    """Softmax over labels trained against the normalised multi-hot target (Mahajan 2018).

    Options: the encoder's and :class:`SoftmaxHead`'s (``threshold`` defaults
    to ``1 / (2 * expected_labels)``; pass it to override, or calibrate
    per-class thresholds).
    """

    head_cls = SoftmaxHead
    loss_cls = losses.SoftmaxLoss
