"""Bahdanau (additive) attention with learned query and key projections.

Used by the ``seq2seq_attention`` decoder (:class:`~kerasmlic.models.label_decoder.LabelDecoder`):
at every decoding step the decoder state attends over the region encoder's
states. The keys are projected once per image and reused at every step.
"""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="kerasmlic")
class AdditiveAttention(layers.Layer):
    """Bahdanau (additive) attention with learned query and key projections.

    ``score_r = v · tanh(W_q q + W_k m_r + b)``, ``alpha = softmax(score)``,
    ``context = sum_r alpha_r m_r``. ``keras.layers.AdditiveAttention`` has no
    query/key projections, hence this layer. The keys ``W_k m + b`` are
    computed once per image (:meth:`project_keys`) and reused at every step.

    Args:
        units: Size of the projected query/key space.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.query_dense = layers.Dense(units, use_bias=False, name="query")
        self.key_dense = layers.Dense(units, name="key")
        self.score_dense = layers.Dense(1, use_bias=False, name="score")

    def build(self, query_shape, memory_shape=None):
        """Create the projections for queries ``(B, Q)`` and memory ``(B, R, M)``."""
        if memory_shape is None:  # build_from_config passes one nested shape
            query_shape, memory_shape = query_shape
        self.query_dense.build(tuple(query_shape))
        self.key_dense.build(tuple(memory_shape))
        self.score_dense.build((None, None, self.units))
        self.built = True

    def project_keys(self, memory):
        """Return the keys ``(B, R, units)`` of memory ``(B, R, M)``."""
        return self.key_dense(memory)

    def attend(self, query, keys, memory):
        """Attend with ``query`` ``(B, Q)`` over precomputed ``keys``.

        Args:
            query: ``(B, Q)`` query (the decoder state).
            keys: ``(B, R, units)`` from :meth:`project_keys`.
            memory: ``(B, R, M)`` values.

        Returns:
            ``(context (B, M), weights (B, R))``.
        """
        query = ops.expand_dims(self.query_dense(query), 1)
        energy = ops.squeeze(self.score_dense(ops.tanh(keys + query)), -1)
        weights = ops.softmax(ops.cast(energy, "float32"), axis=-1)
        # (B, 1, R) @ (B, R, M): a batched matmul, not a (B, R, M) product then a sum.
        context = ops.squeeze(
            ops.matmul(ops.expand_dims(ops.cast(weights, memory.dtype), 1), memory), 1
        )
        return context, weights

    def call(self, query, memory):
        """Return ``(context, weights)`` of ``query`` over ``memory``."""
        return self.attend(query, self.project_keys(memory), memory)

    def get_config(self):
        """Return the layer config."""
        return {**super().get_config(), "units": self.units}
