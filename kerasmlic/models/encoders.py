"""Image encoders with one output contract: ``images -> (feature_map, pooled)``.

Every encoder is a ``keras.Model`` named ``"encoder"`` mapping normalised
images ``(B, S, S, 3)`` to the spatial feature map ``(B, H', W', C)`` and a
pooled vector ``(B, C)`` (global average of the map), so every head and decoder
plugs into every encoder (the timm convention).

Encoders:

- ``tiny``: a small conv-BN-ReLU CNN (feature map 8x8 at 64 px, 4x4 at 32 px);
  the default for the built-in synthetic data and for tests.
- keras.applications backbones (``include_top=False``): ``resnet50``,
  ``resnet101``, ``mobilenet_v3_small``, ``mobilenet_v3_large``,
  ``efficientnet_v2_b0``, ``convnext_tiny``.
- ``savedmodel:PATH``: a feature extractor the user has on disk (e.g. a TF-Hub
  image feature-vector model) loaded with ``keras.layers.TFSMLayer``. When it
  returns only a vector ``(B, C)``, the feature map is that vector as a single
  region ``(B, 1, 1, C)``; attention models then attend over one region. It
  takes images in [0, 1] (the TF-Hub image convention), so its normalisation is
  ``"unit"``.

The input normalisation an encoder expects travels with it
(:func:`encoder_normalization`): the data pipeline applies it, the export graph
bakes it in.

Freezing: ``build_encoder(..., trainable=False)`` or
:func:`set_encoder_trainable` on a built model (train the head first, then
fine-tune: "CNN as initialisation"). A frozen encoder's BatchNormalization
layers run in inference mode (Keras 3 forces ``training=False`` in a BN layer
whose ``trainable`` is False), so their moving statistics stay as loaded.
"""

import os

import keras
from keras import layers, ops

from kerasmlic.errors import UsageError

ENCODER_LAYER_NAME = "encoder"

SAVEDMODEL_PREFIX = "savedmodel:"

# name -> (keras.applications constructor name, normalisation). Normalisations:
# ResNet's `preprocess_input` is "caffe" (BGR, ImageNet mean subtracted, 0-255);
# MobileNetV3, EfficientNetV2 and ConvNeXt include their preprocessing and
# take raw 0-255 pixels.
_APPLICATIONS = {
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "mobilenet_v3_small": ("MobileNetV3Small", "raw"),
    "mobilenet_v3_large": ("MobileNetV3Large", "raw"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "raw"),
    "convnext_tiny": ("ConvNeXtTiny", "raw"),
}

# Smallest input side the keras.applications constructors accept.
_MIN_IMAGE_SIZE = 32

# (filters, stride) of the tiny CNN's conv-BN-ReLU blocks: three stride-2
# stages give an 8x8 map at 64 px and a 4x4 map at 32 px.
_TINY_BLOCKS = ((32, 2), (64, 2), (128, 2), (128, 1))


def encoder_names():
    """Return the built-in encoder names (``savedmodel:PATH`` is accepted too).

    Returns:
        A tuple of names.
    """
    return ("tiny", *_APPLICATIONS)


def _valid_list():
    return ", ".join(encoder_names()) + f", {SAVEDMODEL_PREFIX}PATH"


def _check_name(name):
    if not isinstance(name, str) or not (
        name in encoder_names() or name.startswith(SAVEDMODEL_PREFIX)
    ):
        raise UsageError(f"unknown encoder {name!r}; valid encoders: {_valid_list()}")


def encoder_normalization(name):
    """Return the input normalisation an encoder expects.

    Args:
        name: An encoder name.

    Returns:
        One of ``"unit"`` ([0, 1]), ``"caffe"`` (BGR, ImageNet mean subtracted,
        0-255) or ``"raw"`` (0-255, the backbone normalises internally).

    Raises:
        UsageError: Unknown encoder.
    """
    _check_name(name)
    if name in _APPLICATIONS:
        return _APPLICATIONS[name][1]
    return "unit"


def _check_weights(weights):
    if weights is None or weights == "imagenet":
        return
    if not isinstance(weights, str) or not weights.endswith(".h5"):
        raise UsageError(
            f"encoder weights must be 'imagenet', a local .weights.h5 path or none, got {weights!r}"
        )
    if not os.path.isfile(weights):
        raise UsageError(f"encoder weights file not found: {weights}")


def _tiny_backbone(image_size):
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    for i, (filters, stride) in enumerate(_TINY_BLOCKS):
        x = layers.Conv2D(
            filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        # Momentum 0.9 so the moving statistics settle within the few
        # hundred steps a tiny run takes.
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name="tiny")


def _applications_backbone(name, image_size, weights):
    constructor = getattr(keras.applications, _APPLICATIONS[name][0])
    kwargs = {}
    if name.startswith(("mobilenet_v3", "efficientnet_v2", "convnext")):
        kwargs["include_preprocessing"] = True
    try:
        return constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(image_size, image_size, 3),
            **kwargs,
        )
    except ValueError as err:
        raise UsageError(
            f"encoder {name!r} rejects image size {image_size}: {err} "
            f"(keras.applications backbones need at least {_MIN_IMAGE_SIZE} px)"
        ) from err


@keras.saving.register_keras_serializable(package="kerasmlic")
class VectorAsFeatureMap(layers.Layer):
    """Adapts an encoder output to a feature map ``(B, H, W, C)``.

    A rank-2 vector ``(B, C)`` becomes a single region ``(B, 1, 1, C)``; a
    rank-4 map passes through; a rank-3 ``(B, N, C)`` sequence of regions
    becomes ``(B, N, 1, C)``. The output is float32.
    """

    def call(self, x):
        """Return ``x`` as a rank-4 float32 feature map."""
        x = ops.cast(x, "float32")
        if len(x.shape) == 2:
            return x[:, None, None, :]
        if len(x.shape) == 3:
            return x[:, :, None, :]
        return x

    def compute_output_spec(self, x):
        """Return the output spec (static shapes only)."""
        shape = tuple(x.shape)
        if len(shape) == 2:
            shape = (shape[0], 1, 1, shape[1])
        elif len(shape) == 3:
            shape = (shape[0], shape[1], 1, shape[2])
        return keras.KerasTensor(shape, dtype="float32")


def _pick_savedmodel_output(outputs):
    """Return the one tensor to use from a TFSMLayer's output (tensor or dict)."""
    if not isinstance(outputs, dict):
        return outputs
    # Prefer a spatial map, then a vector, then the first output by key.
    by_rank = sorted(outputs.items(), key=lambda kv: (-len(kv[1].shape), kv[0]))
    return by_rank[0][1]


def _savedmodel_encoder(path, image_size, trainable):
    if not os.path.isdir(path):
        raise UsageError(f"SavedModel encoder not found: {path}")
    inputs = keras.Input((image_size, image_size, 3), name="images")
    try:
        tfsm = layers.TFSMLayer(
            path,
            call_endpoint="serving_default",
            trainable=trainable,
            dtype="float32",
            name="savedmodel",
        )
    except ValueError as err:
        raise UsageError(f"cannot load SavedModel encoder {path}: {err}") from err
    raw = _pick_savedmodel_output(tfsm(inputs))
    feature_map = VectorAsFeatureMap(name="as_feature_map")(raw)
    pooled = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(feature_map)
    return keras.Model(inputs, [feature_map, pooled], name=ENCODER_LAYER_NAME)


def build_encoder(name, image_size, *, weights=None, trainable=True):
    """Build an encoder ``images -> (feature_map, pooled)``.

    Args:
        name: ``tiny``, a keras.applications name (see :func:`encoder_names`),
            or ``savedmodel:PATH``.
        image_size: Square input size in pixels.
        weights: ``"imagenet"`` (keras.applications only; downloads where a
            network is available), a local ``.weights.h5`` (or legacy ``.h5``)
            file of the backbone's weights, or None (random init).
        trainable: False freezes the encoder (BatchNorm in inference mode).

    Returns:
        A ``keras.Model`` named ``"encoder"`` with outputs
        ``[feature_map (B, H', W', C), pooled (B, C)]``.

    Raises:
        UsageError: Unknown encoder, an image size the backbone rejects,
            a missing weights file, or ``imagenet`` weights for an encoder that
            has none.
    """
    _check_name(name)
    if not isinstance(image_size, int) or image_size < 1:
        raise UsageError(f"image size must be a positive integer, got {image_size!r}")
    if name.startswith(SAVEDMODEL_PREFIX):
        if weights is not None:
            raise UsageError("a savedmodel: encoder carries its own weights; use weights=None")
        encoder = _savedmodel_encoder(name[len(SAVEDMODEL_PREFIX) :], image_size, trainable)
        encoder.trainable = trainable
        return encoder
    _check_weights(weights)
    if name == "tiny":
        if weights == "imagenet":
            raise UsageError("encoder 'tiny' has no imagenet weights; use a .weights.h5 path")
        backbone = _tiny_backbone(image_size)
    else:
        if image_size < _MIN_IMAGE_SIZE:
            raise UsageError(
                f"encoder {name!r} rejects image size {image_size}: "
                f"keras.applications backbones need at least {_MIN_IMAGE_SIZE} px"
            )
        backbone = _applications_backbone(name, image_size, weights)
    if weights not in (None, "imagenet"):
        try:
            backbone.load_weights(weights)
        except (ValueError, KeyError) as err:
            raise UsageError(f"cannot load encoder weights {weights}: {err}") from err
    inputs = keras.Input((image_size, image_size, 3), name="images")
    feature_map = backbone(inputs)
    pooled = layers.GlobalAveragePooling2D(name="pool")(feature_map)
    encoder = keras.Model(inputs, [feature_map, pooled], name=ENCODER_LAYER_NAME)
    encoder.trainable = trainable
    return encoder


def get_encoder(model):
    """Return the encoder sub-model of a kerasmlic model.

    Args:
        model: A model built with :func:`build_encoder` inside (layer ``"encoder"``).

    Returns:
        The encoder ``keras.Model``.

    Raises:
        UsageError: The model has no encoder layer.
    """
    try:
        return model.get_layer(ENCODER_LAYER_NAME)
    except ValueError as err:
        raise UsageError(f"model {model.name!r} has no {ENCODER_LAYER_NAME!r} layer") from err


def set_encoder_trainable(model, trainable):
    """Freeze or unfreeze a model's encoder (train head first, then fine-tune).

    Compile the model again after calling this: Keras collects the trainable
    variables when the optimizer and train function are built. A frozen
    encoder's BatchNormalization layers run in inference mode. The model's
    ``freeze_encoder`` config entry follows, so a saved model reloads in the
    same state.

    Args:
        model: A kerasmlic model (has an ``"encoder"`` layer).
        trainable: True to fine-tune the encoder, False to freeze it.

    Returns:
        The encoder sub-model.
    """
    encoder = get_encoder(model)
    encoder.trainable = bool(trainable)
    # Keep the config in step, so a saved and reloaded model has the same state.
    config = getattr(model, "_kerasmlic_config", None)
    if config is not None and "freeze_encoder" in config:
        model._set_config(**{**dict(config), "freeze_encoder": not trainable})
    return encoder
