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

from kerasmlic.models import losses
from kerasmlic.models.base import MultiLabelModel
from kerasmlic.models.head import Head
from kerasmlic.models.losses import RANKING_LOSSES as RANKING_LOSSES
from kerasmlic.models.registry import register_model

SIMILARITIES = ("cosine", "dot")


def _similarity(a, b, similarity, scale):
    """Similarity along the last axis of broadcastable ``a`` and ``b``."""
    if similarity == "cosine":
        a = a / ops.sqrt(ops.maximum(ops.sum(a * a, axis=-1, keepdims=True), 1e-12))
        b = b / ops.sqrt(ops.maximum(ops.sum(b * b, axis=-1, keepdims=True), 1e-12))
        return scale * ops.sum(a * b, axis=-1)
    return ops.sum(a * b, axis=-1)


class LabelEmbeddings(layers.Layer):
    """Learned label embeddings ``(C, E)`` and their similarity settings: the scoring layers' base.

    Subclasses define ``call``: :class:`LabelEmbeddingSimilarity` scores image
    embeddings against them, :class:`LabelAttentionSimilarity` lets them attend
    over regions first.

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
class LabelEmbeddingSimilarity(LabelEmbeddings):
    """Learned label embeddings ``(C, E)``; maps image embeddings ``(B, E)`` to logits ``(B, C)``.

    Args:
        num_classes: Number of classes C.
        embed_dim: Embedding size E.
        similarity: ``cosine`` (scaled by ``scale``) or ``dot``.
        scale: Multiplier of cosine similarities.
        **kwargs: Layer arguments.
    """

    def call(self, image_embedding):
        """Return ``(B, C)`` similarity logits."""
        labels = ops.cast(self.label_embeddings, image_embedding.dtype)
        return _similarity(image_embedding[:, None, :], labels[None], self.similarity, self.scale)

    def compute_output_shape(self, input_shape):
        """Return ``(B, C)``."""
        return (input_shape[0], self.num_classes)


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelAttentionSimilarity(LabelEmbeddings):
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


class JointEmbeddingHead(Head):
    """Pooled feature projected into the label-embedding space; logit = similarity.

    Outputs: ``scores``, ``predicted``, ``logits`` (similarities), all (B, C) float32.

    Args:
        num_classes: Number of classes C.
        embed_dim: Joint embedding size.
        similarity: ``cosine`` or ``dot``.
        scale: Multiplier of cosine similarities.
        dropout: Dropout rate on the pooled feature.
        threshold: Initial per-class threshold on the scores.
    """

    def __init__(
        self,
        num_classes,
        *,
        embed_dim=128,
        similarity="cosine",
        scale=5.0,
        dropout=0.0,
        threshold=0.5,
    ):
        losses.check_choice("similarity", similarity, SIMILARITIES)
        super().__init__(num_classes)
        self.embed_dim, self.similarity, self.scale = embed_dim, similarity, scale
        self.dropout, self.threshold = dropout, threshold

    def __call__(self, feature_map, pooled):
        """Build the head: layers ``image_embedding``, ``label_embedding``, ``scores``..."""
        x = layers.Dropout(self.dropout, name="dropout")(pooled) if self.dropout else pooled
        image_embedding = layers.Dense(self.embed_dim, dtype="float32", name="image_embedding")(x)
        logits = LabelEmbeddingSimilarity(
            self.num_classes,
            self.embed_dim,
            self.similarity,
            self.scale,
            dtype="float32",
            name="label_embedding",
        )(image_embedding)
        return self.scored_outputs(logits, self.threshold)


class LabelAttentionHead(JointEmbeddingHead):
    """Each label embedding attends over the feature-map regions, then scores what it saw.

    Outputs: ``scores``, ``predicted``, ``logits`` (B, C) and ``attention``
    (B, C, N) float32, N = H'·W' feature-map regions (row-major).

    Args:
        num_classes: Number of classes C.
        embed_dim: Joint embedding size (label embeddings, keys, values).
        similarity: ``cosine`` or ``dot``.
        scale: Multiplier of cosine similarities.
        dropout: Dropout rate on the projected regions.
        threshold: Initial per-class threshold on the scores.
    """

    def __call__(self, feature_map, pooled):
        """Build the head: layers ``regions``, ``keys``, ``values``, ``label_attention``..."""
        height, width, channels = feature_map.shape[1:]
        regions = layers.Reshape((height * width, channels), name="regions")(feature_map)
        if self.dropout:
            regions = layers.Dropout(self.dropout, name="dropout")(regions)
        keys = layers.Dense(self.embed_dim, dtype="float32", name="keys")(regions)
        values = layers.Dense(self.embed_dim, dtype="float32", name="values")(regions)
        logits, attention = LabelAttentionSimilarity(
            self.num_classes,
            self.embed_dim,
            self.similarity,
            self.scale,
            dtype="float32",
            name="label_attention",
        )(keys, values)
        return self.scored_outputs(logits, self.threshold, attention=attention)


@register_model("joint_embedding")
class JointEmbeddingModel(MultiLabelModel):
    """Image projected into a label-embedding space; score = similarity (the study's model).

    Options: the encoder's, :class:`JointEmbeddingHead`'s and
    :class:`~kerasmlic.models.losses.RankingLoss`'s (``loss``: ``warp``,
    ``hinge`` or ``bce``; ``margin``).
    """

    head_cls = JointEmbeddingHead
    loss_cls = losses.RankingLoss


@register_model("joint_embedding_attention")
class JointEmbeddingAttentionModel(MultiLabelModel):
    """Each label embedding attends over the feature map, then scores what it attended to.

    Options: the encoder's, :class:`LabelAttentionHead`'s and
    :class:`~kerasmlic.models.losses.RankingLoss`'s.
    """

    head_cls = LabelAttentionHead
    loss_cls = losses.RankingLoss
