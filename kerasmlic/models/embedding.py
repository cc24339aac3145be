"""Image/label joint-embedding models: ``joint_embedding`` and ``joint_embedding_attention``.

``joint_embedding`` (the study's model): the pooled image feature is projected
into a learned label-embedding space; a label's logit is the similarity
(scaled cosine, or dot product) of the image embedding with that label's
embedding. Trained with a ranking loss: WARP (default) or the pairwise hinge
(option ``loss``); ``bce`` is also accepted.

``joint_embedding_attention`` (the study's future work): each label embedding
is a query attending over the projected feature-map regions (scaled
dot-product attention, keys and values are separate projections of the
regions); the label's logit is the similarity of its embedding with what it
attended to. The attention weights are an output, ``attention`` (B, C, N) over
the N = H'·W' regions, for visualisation.

Scores are ``sigmoid(logits)`` (the [0, 1] contract; monotone, so rankings
are the similarities'), and the default threshold 0.5 is similarity 0, the
midpoint of the margin-1 ranking. Cosine similarities are multiplied by
``scale`` (default 5) so the ranking margin of 1 is reachable.
"""

import keras
from keras import layers, ops

from kerasmlic.errors import UsageError
from kerasmlic.models import losses
from kerasmlic.models.base import MultiLabelModel, Thresholds, split_targets
from kerasmlic.models.encoders import build_encoder, encoder_normalization
from kerasmlic.models.registry import register_model

RANKING_LOSSES = ("warp", "hinge", "bce")
SIMILARITIES = ("cosine", "dot")


def _check_choice(option, value, valid):
    if value not in valid:
        raise UsageError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")


def _similarity(a, b, similarity, scale):
    """Similarity along the last axis of broadcastable ``a`` and ``b``."""
    if similarity == "cosine":
        a = a / ops.sqrt(ops.maximum(ops.sum(a * a, axis=-1, keepdims=True), 1e-12))
        b = b / ops.sqrt(ops.maximum(ops.sum(b * b, axis=-1, keepdims=True), 1e-12))
        return scale * ops.sum(a * b, axis=-1)
    return ops.sum(a * b, axis=-1)


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelEmbeddingSimilarity(layers.Layer):
    """Learned label embeddings ``(C, E)``; maps image embeddings ``(B, E)`` to logits ``(B, C)``.

    Args:
        num_classes: Number of classes C.
        embed_dim: Embedding size E.
        similarity: ``cosine`` (scaled by ``scale``) or ``dot``.
        scale: Multiplier of cosine similarities.
        **kwargs: Layer arguments.
    """

    def __init__(self, num_classes, embed_dim, similarity="cosine", scale=5.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.similarity = similarity
        self.scale = scale
        self.label_embeddings = self.add_weight(
            shape=(num_classes, embed_dim),
            initializer=keras.initializers.RandomNormal(stddev=embed_dim**-0.5),
            name="label_embeddings",
        )

    def call(self, image_embedding):
        """Return ``(B, C)`` similarity logits."""
        labels = ops.cast(self.label_embeddings, image_embedding.dtype)
        return _similarity(image_embedding[:, None, :], labels[None], self.similarity, self.scale)

    def compute_output_shape(self, input_shape):
        """Return ``(B, C)``."""
        return (input_shape[0], self.num_classes)

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "similarity": self.similarity,
            "scale": self.scale,
        }


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelAttentionSimilarity(layers.Layer):
    """Label embeddings attend over regions, then score against what they attended to.

    For label c with embedding q_c: ``a_c = softmax(q_c · K^T / sqrt(E))`` over
    the N regions, ``v_c = a_c V``, ``logit_c = sim(q_c, v_c)``.

    Args:
        num_classes: Number of classes C.
        embed_dim: Embedding size E (of keys, values and label embeddings).
        similarity: ``cosine`` (scaled by ``scale``) or ``dot``.
        scale: Multiplier of cosine similarities.
        **kwargs: Layer arguments.

    Call args:
        keys: ``(B, N, E)`` projected regions.
        values: ``(B, N, E)`` projected regions.

    Returns:
        ``(logits (B, C), attention (B, C, N))``.
    """

    def __init__(self, num_classes, embed_dim, similarity="cosine", scale=5.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.similarity = similarity
        self.scale = scale
        self.label_embeddings = self.add_weight(
            shape=(num_classes, embed_dim),
            initializer=keras.initializers.RandomNormal(stddev=embed_dim**-0.5),
            name="label_embeddings",
        )

    def call(self, keys, values):
        """Return ``(logits, attention)``."""
        queries = ops.cast(self.label_embeddings, keys.dtype)  # (C, E)
        energies = ops.matmul(keys, ops.transpose(queries))  # (B, N, C)
        energies = ops.transpose(energies, (0, 2, 1)) * (self.embed_dim**-0.5)
        attention = ops.softmax(energies, axis=-1)  # (B, C, N)
        attended = ops.matmul(attention, values)  # (B, C, E)
        logits = _similarity(queries[None], attended, self.similarity, self.scale)
        return logits, attention

    def compute_output_spec(self, keys, values):
        """Return the output specs."""
        batch, regions = keys.shape[0], keys.shape[1]
        return (
            keras.KerasTensor((batch, self.num_classes), dtype=self.compute_dtype),
            keras.KerasTensor((batch, self.num_classes, regions), dtype=self.compute_dtype),
        )

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "similarity": self.similarity,
            "scale": self.scale,
        }


class _RankingLossMixin:
    """The ``loss`` option shared by the embedding models."""

    def multilabel_loss(self, y, y_pred, sample_weight=None):
        """Return the ranking (or BCE) loss on the similarity logits."""
        multi_hot, _ = split_targets(y)
        logits = y_pred["logits"]
        if self.loss_name == "warp":
            per_example = losses.warp_loss(multi_hot, logits, self.margin, seed=self.sampling_seed)
        elif self.loss_name == "hinge":
            per_example = losses.pairwise_hinge_loss(multi_hot, logits, self.margin)
        else:
            per_example = losses.binary_crossentropy(multi_hot, logits)
        return losses.reduce_mean(per_example, sample_weight)


@register_model("joint_embedding")
class JointEmbeddingModel(_RankingLossMixin, MultiLabelModel):
    """Image projected into a label-embedding space; score = similarity (the study's model).

    Outputs: ``scores``, ``predicted``, ``logits`` (similarities), all (B, C) float32.

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name.
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        embed_dim: Joint embedding size.
        similarity: ``cosine`` or ``dot``.
        scale: Multiplier of cosine similarities.
        loss: ``warp`` (default), ``hinge`` (pairwise) or ``bce``.
        margin: Ranking margin.
        dropout: Dropout rate on the pooled feature.
        threshold: Initial per-class threshold on the scores.
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        embed_dim=128,
        similarity="cosine",
        scale=5.0,
        loss="warp",
        margin=1.0,
        dropout=0.0,
        threshold=0.5,
        name=None,
        **kwargs,
    ):
        _check_choice("loss", loss, RANKING_LOSSES)
        _check_choice("similarity", similarity, SIMILARITIES)
        enc = build_encoder(
            encoder, image_size, weights=encoder_weights, trainable=not freeze_encoder
        )
        images = keras.Input((image_size, image_size, 3), name="images")
        _, pooled = enc(images)
        x = layers.Dropout(dropout, name="dropout")(pooled) if dropout else pooled
        image_embedding = layers.Dense(embed_dim, dtype="float32", name="image_embedding")(x)
        logits = LabelEmbeddingSimilarity(
            num_classes, embed_dim, similarity, scale, dtype="float32", name="label_embedding"
        )(image_embedding)
        scores = layers.Activation("sigmoid", dtype="float32", name="scores")(logits)
        predicted = Thresholds(num_classes, threshold, dtype="float32", name="predicted")(scores)
        super().__init__(
            inputs=images,
            outputs={"scores": scores, "predicted": predicted, "logits": logits},
            name=name or "joint_embedding",
            **kwargs,
        )
        self.loss_name, self.margin = loss, margin
        self.sampling_seed = keras.random.SeedGenerator(0, name="warp_sampling_seed")
        self._normalization = encoder_normalization(encoder)
        self._set_config(
            num_classes=num_classes,
            image_size=image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            embed_dim=embed_dim,
            similarity=similarity,
            scale=scale,
            loss=loss,
            margin=margin,
            dropout=dropout,
            threshold=threshold,
        )


@register_model("joint_embedding_attention")
class JointEmbeddingAttentionModel(_RankingLossMixin, MultiLabelModel):
    """Each label embedding attends over the feature map, then scores what it attended to.

    Outputs: ``scores``, ``predicted``, ``logits`` (B, C) and ``attention``
    (B, C, N) float32, N = H'·W' feature-map regions (row-major).

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: Encoder name.
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None.
        freeze_encoder: Freeze the encoder.
        embed_dim: Joint embedding size (label embeddings, keys, values).
        similarity: ``cosine`` or ``dot``.
        scale: Multiplier of cosine similarities.
        loss: ``warp`` (default), ``hinge`` (pairwise) or ``bce``.
        margin: Ranking margin.
        dropout: Dropout rate on the projected regions.
        threshold: Initial per-class threshold on the scores.
        name: Model name.
        **kwargs: Passed to ``keras.Model``.
    """

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        embed_dim=128,
        similarity="cosine",
        scale=5.0,
        loss="warp",
        margin=1.0,
        dropout=0.0,
        threshold=0.5,
        name=None,
        **kwargs,
    ):
        _check_choice("loss", loss, RANKING_LOSSES)
        _check_choice("similarity", similarity, SIMILARITIES)
        enc = build_encoder(
            encoder, image_size, weights=encoder_weights, trainable=not freeze_encoder
        )
        images = keras.Input((image_size, image_size, 3), name="images")
        feature_map, _ = enc(images)
        height, width, channels = feature_map.shape[1:]
        regions = layers.Reshape((height * width, channels), name="regions")(feature_map)
        if dropout:
            regions = layers.Dropout(dropout, name="dropout")(regions)
        keys = layers.Dense(embed_dim, dtype="float32", name="keys")(regions)
        values = layers.Dense(embed_dim, dtype="float32", name="values")(regions)
        logits, attention = LabelAttentionSimilarity(
            num_classes, embed_dim, similarity, scale, dtype="float32", name="label_attention"
        )(keys, values)
        scores = layers.Activation("sigmoid", dtype="float32", name="scores")(logits)
        predicted = Thresholds(num_classes, threshold, dtype="float32", name="predicted")(scores)
        super().__init__(
            inputs=images,
            outputs={
                "scores": scores,
                "predicted": predicted,
                "logits": logits,
                "attention": attention,
            },
            name=name or "joint_embedding_attention",
            **kwargs,
        )
        self.loss_name, self.margin = loss, margin
        self.sampling_seed = keras.random.SeedGenerator(0, name="warp_sampling_seed")
        self._normalization = encoder_normalization(encoder)
        self._set_config(
            num_classes=num_classes,
            image_size=image_size,
            encoder=encoder,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            embed_dim=embed_dim,
            similarity=similarity,
            scale=scale,
            loss=loss,
            margin=margin,
            dropout=dropout,
            threshold=threshold,
        )
