"""The model's own input normalisation: 0-255 pixels in, the encoder's scaling out.

Every kerasmlic encoder starts with a :class:`PixelNormalization` layer
(``kerasmlic.models.encoders.build_encoder``), so a model takes pixels on 0-255
(uint8 from the ``tf.data`` pipeline, or float) and normalises them itself: on
the accelerator, inside the compiled step, and inside an exported SavedModel
with no separate preprocessing to keep in step. The scalings are those of
``kerasmlic.data.preprocessing.normalize`` (computed from the same
``normalization_affine``, so they agree to the bit), plus ``"affine"``: a
keras-hub preset's own ``x * scale + offset``.

The layer holds no weights, so a model saved before it existed (format
version 1, see ``kerasmlic.models.base.FORMAT_VERSION``) loads its weights
into the current architecture unchanged.
"""

import keras
from keras import ops

from kerasmlic.data.preprocessing import NORMALIZATIONS, normalization_affine
from kerasmlic.errors import UsageError

AFFINE = "affine"
"""Mode for an explicit ``scale`` and ``offset`` (a keras-hub preset's converter)."""

MODES = (*NORMALIZATIONS, AFFINE)
"""Modes :class:`PixelNormalization` takes."""


def as_channel_values(value, what):
    """Return a float or a list of three floats (a scale or an offset), or None.

    Args:
        value: None, a number, or a sequence of 1 or 3 numbers.
        what: What the value is, for the error message.

    Returns:
        None, a float or a list of three floats.

    Raises:
        UsageError: A sequence of another length.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    values = [float(v) for v in value]
    if len(values) == 1:
        return values[0]
    if len(values) != 3:
        raise UsageError(f"the pixel normalisation's {what} must be 1 or 3 values, got {value}")
    return values


@keras.saving.register_keras_serializable(package="kerasmlic")
class PixelNormalization(keras.layers.Layer):
    """Normalises 0-255 RGB pixels (uint8 or float) as the encoder expects.

    Computes in float32 whatever the dtype policy (0-255 pixels lose precision
    in float16) and returns float32; under mixed precision the next layer
    casts to its compute dtype.

    Args:
        mode: One of ``kerasmlic.data.preprocessing.NORMALIZATIONS`` (``"unit"``,
            ``"symmetric"``, ``"imagenet"``, ``"caffe"``, ``"raw"``) or
            ``"affine"`` (``x * scale + offset``).
        scale: ``"affine"`` only: a float, three per-channel floats, or None.
        offset: ``"affine"`` only: a float, three per-channel floats, or None.
        **kwargs: Passed to ``keras.layers.Layer`` (``dtype`` defaults to
            ``"float32"``).

    Raises:
        UsageError: Unknown mode, or a scale / offset with a named mode.

    Example:
        >>> PixelNormalization("unit")(np.full((1, 2, 2, 3), 255, np.uint8))  # all 1.0
    """

    def __init__(self, mode="unit", scale=None, offset=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in MODES:
            raise UsageError(
                f"unknown pixel normalization {mode!r}; choose from {', '.join(MODES)}"
            )
        self.mode = mode
        self.scale = as_channel_values(scale, "scale")
        self.offset = as_channel_values(offset, "offset")
        if mode == AFFINE:
            self._affine = (False, self.scale, self.offset)
        else:
            if self.scale is not None or self.offset is not None:
                raise UsageError(f"pixel normalization {mode!r} takes no scale or offset")
            self._affine = normalization_affine(mode)

    def call(self, images):
        """Return the normalised images, float32."""
        reverse, scale, offset = self._affine
        x = ops.cast(images, "float32")
        if reverse:
            x = ops.flip(x, axis=-1)
        if scale is not None:
            x = x * ops.convert_to_tensor(scale, "float32")
        if offset is not None:
            x = x + ops.convert_to_tensor(offset, "float32")
        return x

    def compute_output_shape(self, input_shape):
        """Return ``input_shape`` (element-wise)."""
        return input_shape

    def get_config(self):
        """Return the layer config."""
        config = super().get_config()
        return {**config, "mode": self.mode, "scale": self.scale, "offset": self.offset}


def find_pixel_normalization(model):
    """Return the :class:`PixelNormalization` layer among a model's layers, or None.

    Looks at the model's own layers and one level of sub-models (the encoder).

    Args:
        model: A Keras model.

    Returns:
        The first such layer found, or None.
    """
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, PixelNormalization):
            return layer
        for inner in getattr(layer, "layers", ()):
            if isinstance(inner, PixelNormalization):
                return inner
    return None
