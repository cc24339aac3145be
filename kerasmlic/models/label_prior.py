"""The auxiliary multi-label head of the recurrent decoders (``aux_loss_weight``).

A linear multi-label head on the pooled feature (:class:`LabelPrior`), trained
with binary cross-entropy, whose logits times a learnt gate (starting at
:data:`~kerasmlic.models.decoder_inputs.AUX_GATE_INIT`) are added to the label
tokens' logits at every decoding step. The decoder then starts from a
per-image class ranking, and the encoder gets a direct multi-label gradient
from the first step instead of only through the recurrent loop (measured in
docs/design.md, "Decoders that learn from the first epochs").
"""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="kerasmlic")
class LabelPrior(layers.Layer):
    """Linear multi-label head on the pooled feature, gated into the decoder.

    Returns ``(logits, gate * logits)``: the head's logits (trained with
    binary cross-entropy) and the per-image label bias the decoder adds to
    its label logits. The scalar ``gate`` starts at ``gate_init`` and is
    learnt by the sequence loss, so the decoder takes as much of the head's
    ranking as helps it.

    Args:
        num_classes: Number of classes C.
        gate_init: Initial gate.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(self, num_classes, gate_init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.gate_init = gate_init
        self.dense = layers.Dense(num_classes, dtype="float32", name="logits")

    def build(self, input_shape):
        """Create the head and the gate."""
        self.dense.build(tuple(input_shape))
        self.gate = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.gate_init),
            name="gate",
            dtype="float32",
        )
        self.built = True

    def call(self, pooled):
        """Return ``(logits, gated logits)``, both ``(B, C)`` float32."""
        logits = ops.cast(self.dense(pooled), "float32")
        return logits, logits * self.gate

    def compute_output_spec(self, pooled):
        """Two ``(B, C)`` float32 tensors."""
        spec = keras.KerasTensor((pooled.shape[0], self.num_classes), "float32")
        return spec, keras.KerasTensor(spec.shape, "float32")

    def get_config(self):
        """Return the layer config."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "gate_init": self.gate_init,
        }
