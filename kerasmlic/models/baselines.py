"""The linear-head baselines: ``warp``, ``softmax``, ``bce``, ``asl``.

Each is encoder -> pooled vector -> (dropout) -> one linear score per label;
they differ only in the loss and in how scores become a predicted set:

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

import keras
from keras import layers

from kerasmlic.models import losses
from kerasmlic.models.base import MultiLabelModel, Thresholds, split_targets
from kerasmlic.models.encoders import build_encoder, encoder_normalization
from kerasmlic.models.pooling import check_pooling, pool_feature_map
from kerasmlic.models.registry import register_model


class LinearHeadModel(MultiLabelModel):
    """Shared graph of the linear-head baselines (not registered itself).

    Outputs: ``scores`` (B, C) float32, ``predicted`` (B, C) float32 and
    ``logits`` (B, C) float32 (pre-activation, used by the loss).

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name (see ``encoders.encoder_names``).
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder (train the head only).
        dropout: Dropout rate on the pooled feature.
        pooling: How the feature map becomes one vector: ``"avg"`` (the
            encoder's global average), ``"max"`` or ``"avgmax"`` (their sum).
        threshold: Initial per-class threshold on the scores.
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    activation = "sigmoid"
    default_name = "linear"

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        dropout=0.0,
        threshold=0.5,
        pooling="avgmax",
        name=None,
        **kwargs,
    ):
        check_pooling(pooling)  # before the encoder is built
        enc = build_encoder(
            encoder, image_size, weights=encoder_weights, trainable=not freeze_encoder
        )
        images = keras.Input((image_size, image_size, 3), name="images")
        feature_map, average = enc(images)
        pooled = pool_feature_map(feature_map, average, pooling)
        x = layers.Dropout(dropout, name="dropout")(pooled) if dropout else pooled
        logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
        scores = layers.Activation(self.activation, dtype="float32", name="scores")(logits)
        predicted = Thresholds(num_classes, threshold, dtype="float32", name="predicted")(scores)
        super().__init__(
            inputs=images,
            outputs={"scores": scores, "predicted": predicted, "logits": logits},
            name=name or self.default_name,
            **kwargs,
        )
        self._normalization = encoder_normalization(encoder)
        self._set_config(
            num_classes=num_classes,
            image_size=image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            dropout=dropout,
            threshold=threshold,
            pooling=pooling,
        )

    def per_example_loss(self, multi_hot, logits):
        """Return the ``(B,)`` losses; subclasses define it."""
        raise NotImplementedError

    def multilabel_loss(self, y, y_pred, sample_weight=None):
        """Return the mean of :meth:`per_example_loss` (weighted)."""
        multi_hot, _ = split_targets(y)
        return losses.reduce_mean(self.per_example_loss(multi_hot, y_pred["logits"]), sample_weight)


@register_model("bce")
class BCEModel(LinearHeadModel):
    """Sigmoid per label trained with binary cross-entropy (the study's strongest baseline).

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name.
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        dropout: Dropout rate on the pooled feature.
        pooling: How the feature map becomes one vector: ``"avg"`` (the
            encoder's global average), ``"max"`` or ``"avgmax"`` (their sum).
        threshold: Initial per-class threshold.
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    default_name = "bce"

    def per_example_loss(self, multi_hot, logits):
        """Binary cross-entropy summed over classes."""
        return losses.binary_crossentropy(multi_hot, logits)


@register_model("asl")
class ASLModel(LinearHeadModel):
    """Sigmoid per label trained with the asymmetric loss (Ridnik et al., ICCV 2021).

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name.
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        dropout: Dropout rate on the pooled feature.
        pooling: How the feature map becomes one vector: ``"avg"`` (the
            encoder's global average), ``"max"`` or ``"avgmax"`` (their sum).
        threshold: Initial per-class threshold.
        gamma_neg: Focusing parameter for negatives (paper: 4).
        gamma_pos: Focusing parameter for positives (paper: 0).
        clip: Probability margin m shifting negatives (paper: 0.05).
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    default_name = "asl"

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        dropout=0.0,
        threshold=0.5,
        pooling="avgmax",
        gamma_neg=4.0,
        gamma_pos=0.0,
        clip=0.05,
        name=None,
        **kwargs,
    ):
        super().__init__(
            num_classes,
            image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            dropout=dropout,
            threshold=threshold,
            pooling=pooling,
            name=name,
            **kwargs,
        )
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self._set_config(
            **dict(self._kerasmlic_config), gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip
        )

    def per_example_loss(self, multi_hot, logits):
        """Asymmetric loss summed over classes."""
        return losses.asymmetric_loss(multi_hot, logits, self.gamma_neg, self.gamma_pos, self.clip)


@register_model("warp")
class WARPModel(LinearHeadModel):
    """Linear label scores trained with the WARP ranking loss (Weston 2011, Gong 2013).

    Scores are ``sigmoid(logits)`` to meet the [0, 1] contract (monotone, so
    rankings and mAP are those of the raw scores); the margin-1 ranking puts
    positives above negatives around logit 0, hence the default threshold 0.5.

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name.
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        dropout: Dropout rate on the pooled feature.
        pooling: How the feature map becomes one vector: ``"avg"`` (the
            encoder's global average), ``"max"`` or ``"avgmax"`` (their sum).
        threshold: Initial per-class threshold on ``sigmoid(logits)``.
        margin: The ranking margin.
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    default_name = "warp"

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        dropout=0.0,
        threshold=0.5,
        pooling="avgmax",
        margin=1.0,
        name=None,
        **kwargs,
    ):
        super().__init__(
            num_classes,
            image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            dropout=dropout,
            threshold=threshold,
            pooling=pooling,
            name=name,
            **kwargs,
        )
        self.margin = margin
        # A model-owned seed state: the negative sampling order differs per step
        # and no global variable is created inside a traced function.
        self.sampling_seed = keras.random.SeedGenerator(0, name="warp_sampling_seed")
        self._set_config(**dict(self._kerasmlic_config), margin=margin)

    def per_example_loss(self, multi_hot, logits):
        """WARP loss with sampled negatives."""
        return losses.warp_loss(multi_hot, logits, self.margin, seed=self.sampling_seed)


@register_model("softmax")
class SoftmaxModel(LinearHeadModel):
    """Softmax over labels trained against the normalised multi-hot target (Mahajan 2018).

    The predicted set is ``score >= threshold`` with the default threshold
    ``1 / (2 * expected_labels)``: softmax scores share a unit of mass, so a
    label is predicted when it holds at least half of an even share among the
    expected number of labels per image (COCO: 2.9). Pass ``threshold`` to
    override it, or calibrate per-class thresholds.

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name.
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        dropout: Dropout rate on the pooled feature.
        pooling: How the feature map becomes one vector: ``"avg"`` (the
            encoder's global average), ``"max"`` or ``"avgmax"`` (their sum).
        threshold: Per-class threshold on the softmax scores (None: derived
            from ``expected_labels``).
        expected_labels: Mean number of labels per image, for the default threshold.
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    activation = "softmax"
    default_name = "softmax"

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        dropout=0.0,
        threshold=None,
        pooling="avgmax",
        expected_labels=2.9,
        name=None,
        **kwargs,
    ):
        if threshold is None:
            threshold = 1.0 / (2.0 * expected_labels)
        super().__init__(
            num_classes,
            image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            dropout=dropout,
            threshold=threshold,
            pooling=pooling,
            name=name,
            **kwargs,
        )
        self._set_config(**dict(self._kerasmlic_config), expected_labels=expected_labels)

    def per_example_loss(self, multi_hot, logits):
        """Softmax cross-entropy against the normalised multi-hot target."""
        return losses.softmax_crossentropy(multi_hot, logits)
