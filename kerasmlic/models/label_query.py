"""``label_query``: a Query2Label-style transformer decoder (Liu et al. 2021).

The encoder's feature map is projected to ``hidden_dim`` (a 1x1 projection)
and gets a learned 2-D positional embedding (row + column embeddings). One
learned query per label goes through ``num_layers`` post-norm transformer
decoder layers: self-attention among the label queries, cross-attention
(``keras.layers.MultiHeadAttention``) to the regions (positions added to the
keys, as DETR/Query2Label), and a feed-forward block, each with residual and
layer norm. A per-class linear head gives one logit per label (label c's
output vector dotted with its own weight vector). Trained with ``bce`` or
``asl``.

Outputs: ``scores``, ``predicted``, ``logits`` (B, C) and ``attention``
(B, C, N): the last layer's cross-attention weights averaged over heads.
"""

import keras
from keras import layers, ops

from kerasmlic.errors import UsageError
from kerasmlic.models import losses
from kerasmlic.models.base import MultiLabelModel
from kerasmlic.models.head import Head
from kerasmlic.models.registry import register_model

LABEL_QUERY_LOSSES = losses.SIGMOID_LOSSES


@keras.saving.register_keras_serializable(package="kerasmlic")
class PositionalEmbedding2D(layers.Layer):
    """Adds a learned 2-D positional embedding to a feature map and flattens it.

    Position (i, j) gets ``row[i] + col[j]`` (factorised, so it stays small
    for big maps).

    Args:
        **kwargs: Layer arguments.

    Call args:
        feature_map: ``(B, H, W, D)``.

    Returns:
        ``(tokens (B, H*W, D), positions (1, H*W, D))``: the flattened map and
        the positional embeddings (broadcast over the batch).
    """

    def build(self, input_shape):
        """Create the row and column embeddings."""
        _, height, width, dim = input_shape
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.rows = self.add_weight(shape=(height, dim), initializer=init, name="rows")
        self.cols = self.add_weight(shape=(width, dim), initializer=init, name="cols")

    def call(self, feature_map):
        """Return ``(tokens, positions)``."""
        _, height, width, dim = feature_map.shape
        positions = self.rows[:, None, :] + self.cols[None, :, :]
        positions = ops.cast(ops.reshape(positions, (1, height * width, dim)), feature_map.dtype)
        tokens = ops.reshape(feature_map, (-1, height * width, dim))
        return tokens, positions

    def compute_output_spec(self, feature_map):
        """Return the output specs."""
        batch, height, width, dim = feature_map.shape
        return (
            keras.KerasTensor((batch, height * width, dim), dtype=self.compute_dtype),
            keras.KerasTensor((1, height * width, dim), dtype=self.compute_dtype),
        )


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelQueries(layers.Layer):
    """Learned label queries ``(C, D)``, tiled to the batch of its input.

    Args:
        num_classes: Number of classes C.
        hidden_dim: Query size D.
        **kwargs: Layer arguments.

    Call args:
        reference: Any tensor whose first axis is the batch.

    Returns:
        ``(B, C, D)`` queries.
    """

    def __init__(self, num_classes, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.queries = self.add_weight(
            shape=(num_classes, hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="queries",
        )

    def call(self, reference):
        """Return the queries tiled over the batch."""
        batch = ops.shape(reference)[0]
        queries = ops.cast(self.queries, self.compute_dtype)
        return ops.broadcast_to(queries[None], (batch, self.num_classes, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        """Return ``(B, C, D)``."""
        return (input_shape[0], self.num_classes, self.hidden_dim)

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "hidden_dim": self.hidden_dim,
        }


@keras.saving.register_keras_serializable(package="kerasmlic")
class TransformerDecoderLayer(layers.Layer):
    """Post-norm transformer decoder layer: self-attention, cross-attention, FFN.

    Args:
        hidden_dim: Model width D.
        num_heads: Attention heads.
        ffn_dim: Feed-forward inner width.
        dropout: Dropout rate (attention and residual branches).
        **kwargs: Layer arguments.

    Call args:
        queries: ``(B, C, D)``.
        memory: ``(B, N, D)`` region tokens (values).
        positions: ``(1, N, D)`` positional embeddings added to the keys.

    Returns:
        ``(queries (B, C, D), attention (B, heads, C, N))``.
    """

    def __init__(self, hidden_dim, num_heads, ffn_dim, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        key_dim = max(1, hidden_dim // num_heads)
        policy = self.dtype_policy
        self.self_attention = layers.MultiHeadAttention(
            num_heads, key_dim, dropout=dropout, dtype=policy, name="self_attention"
        )
        self.cross_attention = layers.MultiHeadAttention(
            num_heads, key_dim, dropout=dropout, dtype=policy, name="cross_attention"
        )
        self.ffn_in = layers.Dense(ffn_dim, activation="relu", dtype=policy, name="ffn_in")
        self.ffn_out = layers.Dense(hidden_dim, dtype=policy, name="ffn_out")
        self.norm1 = layers.LayerNormalization(epsilon=1e-5, dtype=policy, name="norm1")
        self.norm2 = layers.LayerNormalization(epsilon=1e-5, dtype=policy, name="norm2")
        self.norm3 = layers.LayerNormalization(epsilon=1e-5, dtype=policy, name="norm3")
        self.drop = layers.Dropout(dropout, dtype=policy)

    def build(self, queries_shape, memory_shape, positions_shape):
        """Build the sublayers."""
        self.self_attention.build(queries_shape, queries_shape, queries_shape)
        self.cross_attention.build(queries_shape, memory_shape, memory_shape)
        self.ffn_in.build(queries_shape)
        self.ffn_out.build((*queries_shape[:-1], self.ffn_dim))
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build(queries_shape)

    def call(self, queries, memory, positions, training=None):
        """Return the updated queries and the cross-attention weights."""
        x = queries
        attended = self.self_attention(x, x, x, training=training)
        x = self.norm1(x + self.drop(attended, training=training))
        attended, weights = self.cross_attention(
            x,
            memory,
            key=memory + positions,
            return_attention_scores=True,
            training=training,
        )
        x = self.norm2(x + self.drop(attended, training=training))
        hidden = self.ffn_out(self.drop(self.ffn_in(x), training=training))
        x = self.norm3(x + self.drop(hidden, training=training))
        return x, weights

    def compute_output_spec(self, queries, memory, positions, training=None):
        """Return the output specs."""
        batch, num_queries, dim = queries.shape
        return (
            keras.KerasTensor((batch, num_queries, dim), dtype=self.compute_dtype),
            keras.KerasTensor(
                (batch, self.num_heads, num_queries, memory.shape[1]), dtype=self.compute_dtype
            ),
        )

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="kerasmlic")
class PerClassLinear(layers.Layer):
    """One linear unit per class: ``logit_c = x_c · w_c + b_c`` for ``x`` of shape (B, C, D).

    Args:
        num_classes: Number of classes C.
        **kwargs: Layer arguments.
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build(self, input_shape):
        """Create the (C, D) weights and (C,) biases."""
        self.kernel = self.add_weight(
            shape=(self.num_classes, input_shape[-1]),
            initializer="glorot_uniform",
            name="kernel",
        )
        self.bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", name="bias")

    def call(self, x):
        """Return ``(B, C)`` logits."""
        kernel = ops.cast(self.kernel, x.dtype)
        return ops.sum(x * kernel[None], axis=-1) + ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        """Return ``(B, C)``."""
        return (input_shape[0], self.num_classes)

    def get_config(self):
        """Return the layer config."""
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="kerasmlic")
class MeanOverHeads(layers.Layer):
    """Averages attention weights ``(B, heads, C, N)`` over heads to ``(B, C, N)``."""

    def call(self, weights):
        """Return the head-averaged weights."""
        return ops.mean(weights, axis=1)

    def compute_output_shape(self, input_shape):
        """Return ``(B, C, N)``."""
        return (input_shape[0], input_shape[2], input_shape[3])


class LabelQueryHead(Head):
    """Label queries cross-attend to the projected feature map (Query2Label).

    Outputs: ``scores``, ``predicted``, ``logits`` (B, C) and ``attention``
    (B, C, N), the last layer's cross-attention averaged over heads.

    Args:
        num_classes: Number of classes C.
        hidden_dim: Decoder width.
        num_layers: Transformer decoder layers.
        num_heads: Attention heads (``hidden_dim`` is split between them).
        ffn_dim: Feed-forward inner width (None: ``4 * hidden_dim``).
        dropout: Dropout rate in the decoder.
        threshold: Initial per-class threshold on the scores.
    """

    def __init__(
        self,
        num_classes,
        *,
        hidden_dim=128,
        num_layers=2,
        num_heads=4,
        ffn_dim=None,
        dropout=0.1,
        threshold=0.5,
    ):
        if num_layers < 1 or num_heads < 1 or hidden_dim % num_heads:
            raise UsageError(
                "label_query needs num_layers >= 1, num_heads >= 1 and hidden_dim divisible "
                f"by num_heads (got {num_layers}, {num_heads}, {hidden_dim})"
            )
        super().__init__(num_classes)
        self.hidden_dim, self.num_layers, self.num_heads = hidden_dim, num_layers, num_heads
        self.ffn_dim, self.dropout, self.threshold = ffn_dim, dropout, threshold

    def __call__(self, feature_map, pooled):
        """Build the head: ``input_projection``, ``positions``, ``decoder_<i>``, ``logits``..."""
        projected = layers.Dense(self.hidden_dim, name="input_projection")(feature_map)
        memory, positions = PositionalEmbedding2D(name="positions")(projected)
        queries = LabelQueries(self.num_classes, self.hidden_dim, name="label_queries")(memory)
        weights = None
        for i in range(self.num_layers):
            queries, weights = TransformerDecoderLayer(
                self.hidden_dim,
                self.num_heads,
                self.ffn_dim or 4 * self.hidden_dim,
                self.dropout,
                name=f"decoder_{i}",
            )(queries, memory, positions)
        logits = PerClassLinear(self.num_classes, dtype="float32", name="logits")(queries)
        attention = MeanOverHeads(dtype="float32", name="attention")(weights)
        return self.scored_outputs(logits, self.threshold, attention=attention)


@register_model("label_query")
class LabelQueryModel(MultiLabelModel):
    """Query2Label-style model: label queries cross-attend to the feature map.

    Options: the encoder's, :class:`LabelQueryHead`'s and
    :class:`~kerasmlic.models.losses.SigmoidLoss`'s (``loss``: ``bce`` or
    ``asl``; ``gamma_neg``, ``gamma_pos``, ``clip``).
    """

    head_cls = LabelQueryHead
    loss_cls = losses.SigmoidLoss
