"""Decoder inputs of the recurrent models: what each variant feeds the label decoder.

:class:`DecoderInputs` maps the encoder's ``(feature_map, pooled)`` to the
:class:`~kerasmlic.models.label_decoder.LabelDecoder` inputs dict: an initial
state (``rnn_hidden``), a first input (``rnn_input``), or the final state
(and, for attention, all states) of an RNN over the feature map's regions
(``seq2seq``, ``seq2seq_attention``), plus the auxiliary head's label bias
(:class:`~kerasmlic.models.label_prior.LabelPrior`) when it is on.
"""

import math

from keras import layers, ops

from kerasmlic.models.label_prior import LabelPrior
from kerasmlic.models.recurrent_options import num_states

AUX_GATE_INIT = 1.0
"""Initial gate of the auxiliary head's logits into the decoder (see :class:`LabelPrior`)."""


def region_pool_size(height, width, max_regions):
    """Return the average-pooling size that brings a feature map to at most ``max_regions``.

    The region encoder runs one step per region, so its cost and the length
    of the sequence it must remember grow with the map; a 448-px image on a
    stride-32 backbone gives 196 regions, pooled by 2 to 49.

    Args:
        height: Feature-map height H'.
        width: Feature-map width W'.
        max_regions: The cap.

    Returns:
        The smallest pool size p >= 1 with ``ceil(H'/p) * ceil(W'/p) <= max_regions``.
    """
    pool = 1
    while math.ceil(height / pool) * math.ceil(width / pool) > max_regions:
        pool += 1
    return pool


class DecoderInputs:
    """Maps the encoder outputs to the label decoder's inputs dict, per variant.

    A plain callable (not a Layer) holding the variant's layers; it builds the
    functional graph in ``__init__`` and is called again on tensors in the
    training steps, so both paths share the layers.

    Args:
        variant: ``"hidden"``, ``"input"``, ``"seq2seq"`` or ``"attention"``.
        cell: ``"gru"`` or ``"lstm"``.
        embedding_dim: Label-embedding size.
        hidden_dim: Recurrent state size.
        max_regions: Cap on the regions the region encoder reads (see
            :func:`region_pool_size`).
        num_classes: C for an auxiliary linear head on the pooled feature
            (its logits are the decoder's ``label_bias``), or None.
    """

    def __init__(self, variant, cell, embedding_dim, hidden_dim, max_regions, num_classes=None):
        self.variant = variant
        self.aux_head = (
            None
            if num_classes is None
            else LabelPrior(num_classes, AUX_GATE_INIT, dtype="float32", name="aux_logits")
        )
        self.max_regions = max_regions
        self.region_pool = None
        self.grid = None
        if variant == "hidden":
            names = ("init_h", "init_c")[: num_states(cell)]
            self.projections = [
                layers.Dense(hidden_dim, activation="tanh", name=name) for name in names
            ]
        elif variant == "input":
            self.image_embedding = layers.Dense(embedding_dim, name="image_embedding")
        else:
            self.region_projection = layers.Dense(
                hidden_dim, activation="relu", name="region_projection"
            )
            rnn = layers.GRU if cell == "gru" else layers.LSTM
            self.region_encoder = rnn(
                hidden_dim,
                return_sequences=variant == "attention",
                return_state=True,
                name="region_encoder",
            )

    def __call__(self, feature_map, pooled, training=None):
        """Return the decoder inputs dict for one batch."""
        inputs = self._variant_inputs(feature_map, pooled, training)
        if self.aux_head is not None:
            inputs["aux_logits"], inputs["label_bias"] = self.aux_head(pooled)
        return inputs

    def _variant_inputs(self, feature_map, pooled, training):
        if self.variant == "hidden":
            return {"states": [dense(pooled) for dense in self.projections]}
        if self.variant == "input":
            return {"first_input": self.image_embedding(pooled)}
        _, height, width, _ = feature_map.shape
        pool = region_pool_size(height, width, self.max_regions)
        if pool > 1:
            if self.region_pool is None:  # created on the functional build, reused after
                self.region_pool = layers.AveragePooling2D(pool, padding="same", name="region_pool")
            feature_map = self.region_pool(feature_map)
        _, height, width, channels = feature_map.shape
        self.grid = (height, width)
        regions = ops.reshape(feature_map, (-1, height * width, channels))
        encoded = self.region_encoder(self.region_projection(regions), training=training)
        inputs = {"states": list(encoded[1:])}
        if self.variant == "attention":
            inputs["memory"] = encoded[0]
        return inputs
