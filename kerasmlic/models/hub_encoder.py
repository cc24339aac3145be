"""keras-hub backbones as encoders: ``hub:<preset>`` -> ``(feature_map, pooled)``.

A preset is a keras-hub handle (``kaggle://keras/resnetv2/keras/resnet_50_imagenet``,
``hf://user/model``, a built-in preset name such as ``resnet_50_imagenet``) or a
local folder written by ``Backbone.save_to_preset``. The backbone is loaded with
its weights and wrapped into the package's encoder contract (see
``models.encoders``):

- a CNN's feature map ``(B, H', W', C)`` is the feature map; the pooled vector is
  its global average;
- a ViT-style token sequence ``(B, T, D)`` is cut into ``T - g*g`` leading tokens
  (class token, register tokens) and the ``g*g`` patch tokens, ``g = isqrt(T)``;
  the patches, reshaped to the ``g x g`` grid, are the feature map, and the
  pooled vector is the class token (the first leading token, as keras-hub's
  ``ImageClassifier(pooling="token")``), or the patch mean when there is none;
- a backbone that pools its tokens with a ``head`` layer and returns only the
  pooled vector (SigLIP's attention pooling) gives the tokens the head reads as
  the map and its pooled vector as ``pooled``;
- any other backbone that returns only a vector ``(B, D)`` gives one region
  ``(B, 1, 1, D)``;
- a two-tower preset (CLIP, SigLIP) contributes its ``vision_encoder``.

Normalisation: the encoder takes 0-255 pixels (uint8 or float; its named
normalisation is ``"raw"``) and applies the preset's own ``x * scale + offset``
inside the graph, in its first layer (a ``PixelNormalization`` in ``"affine"``
mode named ``preset_normalization``), read from the preset's
``image_converter.json`` (keras-hub ``ImageConverter``: scale and offset,
global or per channel, or mean/std). A preset without an image converter
(``Backbone.save_to_preset`` alone writes none) gets :data:`DEFAULT_SCALE`
(pixels in [0, 1]), the package's default normalisation.

A backbone with a fixed input shape (ViT: its position embeddings fix the patch
grid) fixes the image size: :func:`preset_image_size` returns it, and building at
another size raises a one-line :class:`~kerasmlic.errors.UsageError`.

Saving: the encoder's layers are registered and keep their config, and
:func:`encoder_spec` returns everything needed to rebuild the architecture
(backbone config, scale, offset) without the preset; :func:`spec_scope` makes
the encoder built inside it use a spec. A model whose config stores only the
``hub:<preset>`` name rebuilds from the preset when a ``.keras`` file is loaded,
so the preset (a local folder, or a handle keras-hub caches) must still be
there (its weights are read too, then replaced by the ``.keras`` file's);
loading inside ``spec_scope(name, spec)`` needs neither.
"""

import contextlib
import copy
import math
import os
import threading
import weakref

import keras
import keras_hub
from keras import layers, ops

from kerasmlic.errors import UsageError
from kerasmlic.models.pixel_normalization import AFFINE, PixelNormalization, as_channel_values

HUB_PREFIX = "hub:"

DEFAULT_SCALE = 1.0 / 255.0
"""Scale of a preset without an image converter (pixels in [0, 1], no offset)."""

_HANDLE_SCHEMES = ("kaggle://", "hf://", "modelscope://", "gs://")

# encoder model -> its spec, recorded at build time. Not an attribute of the
# model: Keras would track the backbone in it as a second sub-layer.
_SPECS = weakref.WeakKeyDictionary()

# Specs that spec_scope makes build_hub_encoder use instead of reading a preset.
_SCOPE = threading.local()


@contextlib.contextmanager
def spec_scope(name, spec):
    """Within the block, build encoder ``name`` from ``spec`` instead of its preset.

    For rebuilding a saved model whose config holds only the encoder name
    (``from_config`` calls the constructor, which builds the encoder): with
    the spec the model recorded (:func:`encoder_spec`), loading needs neither
    the preset folder nor a network. Nested scopes stack; a None ``spec`` or
    a name that is not ``hub:`` changes nothing.

    Args:
        name: The encoder name the spec belongs to.
        spec: A dict from :func:`encoder_spec`, or None.

    Yields:
        None.
    """
    scoped = getattr(_SCOPE, "specs", {})
    if spec is not None and is_hub_name(name):
        _SCOPE.specs = {**scoped, name: spec}
    try:
        yield
    finally:
        _SCOPE.specs = scoped


@keras.saving.register_keras_serializable(package="kerasmlic")
class TokenRegions(layers.Layer):
    """Turns ViT-style tokens ``(B, T, D)`` into ``(feature_map, pooled)``.

    The last ``grid * grid`` tokens are the patches, in row-major order; the
    ``T - grid * grid`` tokens before them (class token, registers) are dropped
    from the map. ``pooled`` is the first of those, or the patch mean when there
    are none. ``T`` is read from the tokens at call time: some keras-hub layers
    state a wrong static token count (SigLIP's embedding adds a class token to
    its output shape that it does not produce).

    Args:
        grid: Side of the square patch grid.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        self.grid = int(grid)

    def call(self, tokens):
        """Return ``(feature_map (B, grid, grid, D), pooled (B, D))``."""
        patches_count = self.grid * self.grid
        count = tokens.shape[1]
        if count is None:  # unknown until run: no prefix can be told apart
            patches = tokens[:, -patches_count:, :]
            prefix = 0
        else:
            prefix = count - patches_count
            patches = tokens[:, prefix:, :]
        feature_map = ops.reshape(patches, (-1, self.grid, self.grid, tokens.shape[-1]))
        pooled = tokens[:, 0, :] if prefix > 0 else ops.mean(patches, axis=1)
        return feature_map, pooled

    def compute_output_spec(self, tokens):
        """Return the output specs (static shapes only)."""
        batch, _, dim = tokens.shape
        return (
            keras.KerasTensor((batch, self.grid, self.grid, dim), dtype=self.compute_dtype),
            keras.KerasTensor((batch, dim), dtype=self.compute_dtype),
        )

    def get_config(self):
        """Return the layer config."""
        return {**super().get_config(), "grid": self.grid}


def is_hub_name(name):
    """Return True for an encoder name of the form ``hub:<preset>``.

    Args:
        name: An encoder name.

    Returns:
        A bool.
    """
    return isinstance(name, str) and name.startswith(HUB_PREFIX) and len(name) > len(HUB_PREFIX)


def _preset(name):
    return name[len(HUB_PREFIX) :]


def _check_preset(preset):
    """Refuse a local preset folder that does not exist, before keras-hub does."""
    if preset.startswith(_HANDLE_SCHEMES) or preset in keras_hub.models.Backbone.presets:
        return
    if not os.path.isdir(preset):
        raise UsageError(
            f"keras-hub preset not found: {preset} (give a local folder written by "
            "Backbone.save_to_preset, a kaggle:// or hf:// handle, or a built-in preset name)"
        )
    if not os.path.isfile(os.path.join(preset, "config.json")):
        raise UsageError(f"{preset} is not a keras-hub preset folder (no config.json)")


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_backbone(preset, load_weights):
    _check_preset(preset)
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"cannot load keras-hub preset {preset}: {_first_line(err)}") from err
    return _vision_part(backbone)


def _vision_part(backbone):
    """The image tower of a two-tower backbone (CLIP, SigLIP), else the backbone."""
    vision = getattr(backbone, "vision_encoder", None)
    return vision if isinstance(vision, keras.layers.Layer) else backbone


def _load_converter_values(preset):
    """Return ``(scale, offset)`` from the preset's image converter, or the default."""
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError):
        # No image_converter.json (a bare Backbone.save_to_preset), or a backbone
        # class without a converter class: the documented default.
        return DEFAULT_SCALE, None
    return (
        as_channel_values(converter.scale, "scale"),
        as_channel_values(converter.offset, "offset"),
    )


def _fixed_size(backbone):
    """The square image side a backbone's input fixes, or None when it is free."""
    shape = backbone.input_shape
    if isinstance(shape, dict):
        shape = shape.get("images", next(iter(shape.values())))
    if isinstance(shape, list):
        shape = shape[0]
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return None
    if height != width:
        raise UsageError(
            f"the preset's backbone takes {height}x{width} images; kerasmlic uses square images"
        )
    return int(height)


def preset_image_size(name):
    """Return the image side a ``hub:`` preset fixes, or None when it is free.

    The backbone is built from the preset's ``config.json``; no weights are read.

    Args:
        name: ``hub:<preset>``.

    Returns:
        An int, or None for a backbone that takes any size (CNNs).

    Raises:
        UsageError: A missing folder, or a preset keras-hub cannot load.
    """
    return _fixed_size(_load_backbone(_preset(name), load_weights=False))


def _check_size(backbone, image_size, name):
    fixed = _fixed_size(backbone)
    if fixed is not None and fixed != image_size:
        raise UsageError(
            f"encoder {name} takes {fixed}x{fixed} images, not {image_size}: "
            f"use --image-size {fixed} (data.image_size: {fixed})"
        )


def _with_tokens(backbone):
    """Expose the tokens of a backbone that pools them with a ``head`` layer (SigLIP).

    SigLIP's vision encoder returns only its attention-pooled vector; the
    tokens its ``head`` reads are the regions. Returns a functional model with
    ``{"sequence_output", "pooled_output"}`` sharing the backbone's layers, or
    the backbone itself when there is nothing to expose.
    """
    head = getattr(backbone, "head", None)
    output = backbone.output
    if not isinstance(head, keras.layers.Layer) or not isinstance(output, keras.KerasTensor):
        return backbone
    if len(output.shape) != 2:
        return backbone
    try:
        tokens = head.input
    except (AttributeError, ValueError):
        return backbone
    if not isinstance(tokens, keras.KerasTensor) or len(tokens.shape) != 3:
        return backbone
    return keras.Model(
        backbone.input,
        {"sequence_output": tokens, "pooled_output": output},
        name=f"{backbone.name}_tokens",
    )


def _regions(backbone_output, name):
    """Map a backbone's output to ``(feature_map, pooled)`` symbolic tensors."""
    out, pooled = backbone_output, None
    if isinstance(out, dict):
        # CLIP's vision encoder may return {"sequence_output", ...}; SigLIP's
        # tokens come with its attention-pooled vector (see _with_tokens).
        pooled = out.get("pooled_output")
        out = out.get("sequence_output", next(iter(out.values())))
    rank = len(out.shape)
    if rank == 4:
        feature_map = out
    elif rank == 3:
        tokens = out.shape[1]
        if tokens is None:
            raise UsageError(f"encoder {name}: the backbone's token count is not static")
        grid = math.isqrt(tokens)
        feature_map, token_pooled = TokenRegions(grid, name="regions")(out)
        return feature_map, token_pooled if pooled is None else pooled
    elif rank == 2:
        feature_map = layers.Reshape((1, 1, out.shape[-1]), name="as_feature_map")(out)
    else:
        raise UsageError(f"encoder {name}: unsupported backbone output shape {tuple(out.shape)}")
    pooled = layers.GlobalAveragePooling2D(name="pool")(feature_map)
    return feature_map, pooled


def build_hub_encoder(
    name, image_size, *, weights=None, trainable=True, spec=None, model_name="encoder"
):
    """Build an encoder ``pixels (0-255) -> (feature_map, pooled)`` from a keras-hub preset.

    Args:
        name: ``hub:<preset>``.
        image_size: Square input side in pixels.
        weights: None (the preset's weights) or a local ``.weights.h5`` file of
            the backbone's weights (loaded instead).
        trainable: False freezes the encoder (BatchNorm in inference mode).
        spec: A dict from :func:`encoder_spec`; when given, the architecture comes
            from it and the preset is not read (weights random, to be restored by
            the caller, e.g. ``.keras`` loading).
        model_name: Name of the returned model.

    Returns:
        A ``keras.Model`` with outputs ``[feature_map (B, H', W', C), pooled (B, C)]``.

    Raises:
        UsageError: A missing preset, an image size the preset does not allow,
            ``imagenet`` weights, or a weights file that does not fit.
    """
    if not is_hub_name(name):
        raise UsageError(f"not a keras-hub encoder name: {name!r} (expected hub:<preset>)")
    if weights is not None and (not isinstance(weights, str) or not weights.endswith(".h5")):
        raise UsageError(
            f"a hub: encoder's weights come from its preset; encoder weights must be "
            f"unset or a local .weights.h5 path, got {weights!r}"
        )
    if weights is not None and not os.path.isfile(weights):
        raise UsageError(f"encoder weights file not found: {weights}")
    if spec is None:
        spec = getattr(_SCOPE, "specs", {}).get(name)
    if spec is not None:
        backbone = _vision_part(keras.saving.deserialize_keras_object(spec["backbone"]))
        scale, offset = spec["scale"], spec["offset"]
    else:
        backbone = _load_backbone(_preset(name), load_weights=weights is None)
        scale, offset = _load_converter_values(_preset(name))
    _check_size(backbone, image_size, name)
    if weights is not None:
        try:
            backbone.load_weights(weights)
        except (ValueError, KeyError) as err:
            raise UsageError(f"cannot load encoder weights {weights}: {_first_line(err)}") from err
    inputs = keras.Input((image_size, image_size, 3), name="images")
    # float32 whatever the policy: 0-255 pixels lose precision in float16.
    x = PixelNormalization(AFFINE, scale, offset, dtype="float32", name="preset_normalization")(
        inputs
    )
    if isinstance(backbone.input, dict):
        x = {"images": x}
    feature_map, pooled = _regions(_with_tokens(backbone)(x), name)
    encoder = keras.Model(inputs, [feature_map, pooled], name=model_name)
    encoder.trainable = trainable
    _SPECS[encoder] = {
        "backbone": keras.saving.serialize_keras_object(backbone),
        "scale": scale,
        "offset": offset,
    }
    return encoder


def encoder_spec(encoder):
    """Return the spec that rebuilds a hub encoder without its preset, or None.

    Args:
        encoder: An encoder model built by :func:`build_hub_encoder` (or any
            other encoder, which gives None).

    Returns:
        A JSON-serialisable dict (``backbone``: the serialised keras-hub
        backbone, ``scale``, ``offset``), or None.
    """
    spec = _SPECS.get(encoder)
    return None if spec is None else copy.deepcopy(spec)
