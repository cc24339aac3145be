"""Image encoders with one output contract: ``images -> (feature_map, pooled)``.

Every encoder is a ``keras.Model`` named ``"encoder"`` mapping pixels
``(B, S, S, 3)`` on 0-255 (uint8 or float) to the spatial feature map
``(B, H', W', C)`` and a pooled vector ``(B, C)`` (global average of the map),
so every head and decoder plugs into every encoder (the timm convention). Its
first layer is a :class:`~kerasmlic.models.pixel_normalization.PixelNormalization`
applying the backbone's input normalisation, so the model, not the data
pipeline, normalises (on the accelerator, and inside the exported graph).

Encoders:

- ``tiny``: four strided conv-BN-ReLU layers, no pooling (feature map 8x8 at
  64 px, 4x4 at 32 px); the cheapest, for tests.
- ``small``: a stride-2 stem, then three stages of (conv-BN-ReLU) x 2 with
  32/64/128 channels and 2x2 max-pools between them (8x8 at 64 px, 4x4 at
  32 px): seven convolutions where ``tiny`` has four; the default for the
  built-in synthetic data.
- keras.applications backbones (``include_top=False``): ``resnet50``,
  ``resnet101``, ``mobilenet_v3_small``, ``mobilenet_v3_large``,
  ``efficientnet_v2_b0``, ``convnext_tiny``.
- ``savedmodel:PATH``: a feature extractor the user has on disk (e.g. a TF-Hub
  image feature-vector model) loaded with ``keras.layers.TFSMLayer``. When it
  returns only a vector ``(B, C)``, the feature map is that vector as a single
  region ``(B, 1, 1, C)``; attention models then attend over one region. It
  takes images in [0, 1] (the TF-Hub image convention), so its normalisation is
  ``"unit"`` (applied by the encoder's first layer).
- ``hub:<preset>``: any keras-hub backbone (a ``kaggle://`` or ``hf://`` handle,
  a built-in preset name, or a local folder written by
  ``Backbone.save_to_preset``); CNN feature maps and ViT-style tokens (patches
  reshaped to their grid) both become regions. The preset's own pixel
  normalisation (its scale and offset) is the encoder's first layer; by name
  its normalisation is ``"raw"``. See :mod:`kerasmlic.models.hub_encoder`.

The input normalisation an encoder applies is named by
:func:`encoder_normalization` and runs in the encoder's
``pixel_normalization`` layer (``preset_normalization`` for ``hub:``).

The encoder object: :class:`Encoder` wraps the network :func:`build_encoder`
builds with its name, architecture spec, normalisation, output size and
trainable state; ``Encoder.from_name(name, image_size)`` builds one, and a
model takes it in place of a name
(``BCEModel(num_classes=80, image_size=224, encoder=Encoder.from_name("hub:..."))``).
Inside a model the network is the layer named ``"encoder"``
(:func:`get_encoder`); ``model.encoder`` is the :class:`Encoder`.

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
from kerasmlic.models import hub_encoder
from kerasmlic.models.pixel_normalization import PixelNormalization, find_pixel_normalization

ENCODER_LAYER_NAME = "encoder"

PIXEL_NORMALIZATION_LAYER_NAME = "pixel_normalization"
"""Name of the encoder's first layer, its input normalisation (not ``hub:``)."""

SAVEDMODEL_PREFIX = "savedmodel:"
HUB_PREFIX = hub_encoder.HUB_PREFIX

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

# Widths of the small CNN's stages: a stride-2 stem, then (conv-BN-ReLU) x 2 per
# stage with a 2x2 max-pool between stages: an 8x8 map at 64 px, as the tiny CNN.
# Full-resolution stages cost about 4x more per step; a stride-1 stem followed by a
# max-pool cost more and gave no gain (bce, 12 epochs: 57.4 against 57.8 mAP).
_SMALL_STAGES = (32, 64, 128)


def encoder_names():
    """Return the built-in encoder names (``savedmodel:PATH`` and ``hub:<preset>`` too).

    Returns:
        A tuple of names.
    """
    return ("tiny", "small", *_APPLICATIONS)


def _valid_list():
    return ", ".join(encoder_names()) + f", {SAVEDMODEL_PREFIX}PATH, {HUB_PREFIX}<preset>"


def _check_name(name):
    if not isinstance(name, str) or not (
        name in encoder_names()
        or name.startswith(SAVEDMODEL_PREFIX)
        or hub_encoder.is_hub_name(name)
    ):
        raise UsageError(f"unknown encoder {name!r}; valid encoders: {_valid_list()}")


def encoder_normalization(name):
    """Return the input normalisation an encoder applies to its 0-255 pixels.

    The encoder's first layer (``PixelNormalization``) applies it; the data
    pipeline hands every encoder uint8 pixels.

    Args:
        name: An encoder name.

    Returns:
        One of ``"unit"`` ([0, 1]), ``"caffe"`` (BGR, ImageNet mean subtracted,
        0-255) or ``"raw"`` (0-255 as they are: the backbone normalises inside,
        as keras.applications backbones with ``include_preprocessing`` and
        every ``hub:`` encoder, whose preset scale and offset run in its
        ``preset_normalization`` layer, do).

    Raises:
        UsageError: Unknown encoder.
    """
    _check_name(name)
    if name in _APPLICATIONS:
        return _APPLICATIONS[name][1]
    if hub_encoder.is_hub_name(name):
        return "raw"
    return "unit"


def default_image_size(name):
    """Return the image side an encoder requires, or None when any size works.

    Only ``hub:`` presets whose backbone has a fixed input shape (ViT-style
    position embeddings) require one; the config's ``data.image_size`` should
    default to it.

    Args:
        name: An encoder name.

    Returns:
        An int or None.

    Raises:
        UsageError: Unknown encoder, or a ``hub:`` preset that cannot be read.
    """
    _check_name(name)
    if hub_encoder.is_hub_name(name):
        return hub_encoder.preset_image_size(name)
    return None


def encoder_spec(encoder):
    """Return what rebuilds an encoder's architecture without its source, or None.

    For a ``hub:`` encoder: the serialised backbone and the preset's
    normalisation, so a model that stores it can be rebuilt without the preset
    (pass it back as ``build_encoder(..., spec=...)``). None for other encoders,
    which need nothing beyond their name.

    Args:
        encoder: An encoder model from :func:`build_encoder` (see :func:`get_encoder`).

    Returns:
        A JSON-serialisable dict or None.
    """
    return hub_encoder.encoder_spec(encoder)


def encoder_spec_scope(name, spec):
    """Return a context in which ``build_encoder(name, ...)`` rebuilds from ``spec``.

    ``MultiLabelModel.from_config`` can wrap the constructor in it with the spec
    its ``get_config`` saved, so a ``.keras`` file with a ``hub:`` encoder loads
    without the preset. A None ``spec`` or a non-``hub:`` name changes nothing.

    Args:
        name: The encoder name.
        spec: A dict from :func:`encoder_spec`, or None.

    Returns:
        A context manager.
    """
    return hub_encoder.spec_scope(name, spec)


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


def _small_backbone(image_size):
    inputs = keras.Input((image_size, image_size, 3), name="images")

    def conv_bn_relu(x, filters, name, strides=1):
        x = layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    x = conv_bn_relu(inputs, _SMALL_STAGES[0], "stem", strides=2)
    for stage, width in enumerate(_SMALL_STAGES):
        if stage:
            x = layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
        for i in range(2):
            x = conv_bn_relu(x, width, f"stage{stage}_{i}")
    return keras.Model(inputs, x, name="small")


# The CNNs defined here (no pretrained weights): name -> builder(image_size).
_OWN_CNNS = {"tiny": _tiny_backbone, "small": _small_backbone}


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
    pixels = PixelNormalization(
        encoder_normalization(SAVEDMODEL_PREFIX + path), name=PIXEL_NORMALIZATION_LAYER_NAME
    )(inputs)
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
    raw = _pick_savedmodel_output(tfsm(pixels))
    feature_map = VectorAsFeatureMap(name="as_feature_map")(raw)
    pooled = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(feature_map)
    return keras.Model(inputs, [feature_map, pooled], name=ENCODER_LAYER_NAME)


def build_encoder(name, image_size, *, weights=None, trainable=True, spec=None):
    """Build an encoder ``pixels (0-255) -> (feature_map, pooled)``.

    The encoder's first layer normalises the pixels (``PixelNormalization``
    with :func:`encoder_normalization`), so it takes uint8 or float pixels on
    0-255, as the data pipeline and the serving graph give them.

    Args:
        name: ``tiny``, a keras.applications name (see :func:`encoder_names`),
            ``savedmodel:PATH`` or ``hub:<preset>``.
        image_size: Square input size in pixels.
        weights: ``"imagenet"`` (keras.applications only; downloads where a
            network is available), a local ``.weights.h5`` (or legacy ``.h5``)
            file of the backbone's weights, or None (random init; for a
            ``hub:`` encoder, the preset's weights).
        trainable: False freezes the encoder (BatchNorm in inference mode).
        spec: ``hub:`` encoders only: a dict from :func:`encoder_spec`; the
            architecture is rebuilt from it without reading the preset, with
            random weights (for loading saved weights into).

    Returns:
        A ``keras.Model`` named ``"encoder"`` with outputs
        ``[feature_map (B, H', W', C), pooled (B, C)]``.

    Raises:
        UsageError: Unknown encoder, an image size the backbone rejects,
            a missing weights file, or ``imagenet`` weights for an encoder that
            has none; for ``hub:``, a missing preset or an image size other
            than the one the preset fixes.
    """
    _check_name(name)
    if not isinstance(image_size, int) or image_size < 1:
        raise UsageError(f"image size must be a positive integer, got {image_size!r}")
    if hub_encoder.is_hub_name(name):
        return hub_encoder.build_hub_encoder(
            name,
            image_size,
            weights=weights,
            trainable=trainable,
            spec=spec,
            model_name=ENCODER_LAYER_NAME,
        )
    if spec is not None:
        raise UsageError(f"encoder {name!r} takes no spec (only hub: encoders do)")
    if name.startswith(SAVEDMODEL_PREFIX):
        if weights is not None:
            raise UsageError("a savedmodel: encoder carries its own weights; use weights=None")
        encoder = _savedmodel_encoder(name[len(SAVEDMODEL_PREFIX) :], image_size, trainable)
        encoder.trainable = trainable
        return encoder
    _check_weights(weights)
    if name in _OWN_CNNS:
        if weights == "imagenet":
            raise UsageError(f"encoder {name!r} has no imagenet weights; use a .weights.h5 path")
        backbone = _OWN_CNNS[name](image_size)
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
    pixels = PixelNormalization(encoder_normalization(name), name=PIXEL_NORMALIZATION_LAYER_NAME)(
        inputs
    )
    feature_map = backbone(pixels)
    pooled = layers.GlobalAveragePooling2D(name="pool")(feature_map)
    encoder = keras.Model(inputs, [feature_map, pooled], name=ENCODER_LAYER_NAME)
    encoder.trainable = trainable
    return encoder


@keras.saving.register_keras_serializable(package="kerasmlic")
class Encoder:
    """An image encoder: pixels (0-255) -> ``(feature_map, pooled)``, and what is known of it.

    Wraps the network :func:`build_encoder` builds (a functional
    ``keras.Model`` named ``"encoder"``: ``PixelNormalization``, the
    backbone, pooling) with its name, its architecture spec (``hub:``), its
    normalisation, output size and feature grid, and its trainable state.
    Calling it calls the network, so it plugs into a functional graph.

    Not a Keras layer itself: a model holds the network as its ``encoder``
    layer, and ``.keras`` files store a layer's weights under its class name
    (``layers/functional/...``), so a wrapping layer class would move every
    saved encoder weight and files saved before it could no longer load.

    Serialisable (``keras.saving.serialize_keras_object``): the config holds
    the name, image size, trainable state and ``hub:`` spec, not weights; as
    with models, ``from_config`` rebuilds the architecture (a ``hub:``
    encoder from its spec, without the preset) with fresh weights.

    Args:
        name: An encoder name (see :func:`build_encoder`).
        image_size: Square input size in pixels.
        weights: ``"imagenet"``, a local ``.weights.h5`` path, or None.
        trainable: False freezes the encoder (BatchNorm in inference mode).
        spec: ``hub:`` encoders only: a spec from :func:`encoder_spec`.

    Raises:
        UsageError: As :func:`build_encoder`.

    Example:
        >>> encoder = Encoder.from_name("tiny", 64)
        >>> encoder.output_dim, encoder.feature_grid, encoder.normalization
        (128, (8, 8), 'unit')
        >>> model = BCEModel(num_classes=80, image_size=64, encoder=encoder)
    """

    def __init__(self, name, image_size, *, weights=None, trainable=True, spec=None):
        self.network = build_encoder(
            name, image_size, weights=weights, trainable=trainable, spec=spec
        )
        self.name = name
        self.image_size = image_size

    @classmethod
    def from_name(cls, name, image_size, *, weights=None, trainable=True, spec=None):
        """Build an encoder by name (the constructor, keras-hub ``from_preset`` style)."""
        return cls(name, image_size, weights=weights, trainable=trainable, spec=spec)

    def __call__(self, images, training=None):
        """Return ``[feature_map (B, H', W', C), pooled (B, C)]`` of pixels on 0-255."""
        return self.network(images, training=training)

    @property
    def spec(self):
        """What rebuilds the architecture without its source (``hub:``), else None."""
        return encoder_spec(self.network)

    @property
    def normalization(self):
        """The named input normalisation it applies (:func:`encoder_normalization`)."""
        return encoder_normalization(self.name)

    @property
    def pixel_normalization(self):
        """The mode of its first layer, ``PixelNormalization`` (``"affine"`` for ``hub:``)."""
        return find_pixel_normalization(self.network).mode

    @property
    def output_dim(self):
        """Channels C of the feature map and the pooled vector."""
        return int(self.network.outputs[1].shape[-1])

    @property
    def feature_grid(self):
        """``(H', W')`` of the feature map: the regions attention heads see."""
        return tuple(int(d) for d in self.network.outputs[0].shape[1:3])

    @property
    def trainable(self):
        """Whether the encoder trains (False: frozen, BatchNorm in inference mode)."""
        return self.network.trainable

    @trainable.setter
    def trainable(self, value):
        self.network.trainable = bool(value)

    def get_config(self):
        """Return the name, image size, trainable state and ``hub:`` spec."""
        return {
            "name": self.name,
            "image_size": self.image_size,
            "trainable": self.trainable,
            "spec": self.spec,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild the architecture from :meth:`get_config` (fresh weights)."""
        return cls(**config)

    def __repr__(self):
        return (
            f"Encoder({self.name!r}, image_size={self.image_size}, output_dim={self.output_dim}, "
            f"feature_grid={self.feature_grid}, trainable={self.trainable})"
        )


def as_encoder(encoder, image_size, *, weights=None, trainable=True):
    """Return an :class:`Encoder` from a name or an ``Encoder`` (a model's ``encoder`` option).

    Args:
        encoder: An encoder name or an :class:`Encoder`.
        image_size: The model's square input size.
        weights: Encoder weights (names only; an ``Encoder`` carries its own).
        trainable: The encoder's trainable state (set on an ``Encoder`` too).

    Returns:
        An :class:`Encoder`.

    Raises:
        UsageError: As :func:`build_encoder`; weights given with an ``Encoder``,
            or an ``Encoder`` built at another image size.
    """
    if not isinstance(encoder, Encoder):
        return Encoder(encoder, image_size, weights=weights, trainable=trainable)
    if weights is not None:
        raise UsageError(
            "an Encoder object carries its own weights; leave encoder_weights unset "
            "(or give Encoder.from_name(..., weights=...))"
        )
    if encoder.image_size != image_size:
        raise UsageError(
            f"the encoder was built for {encoder.image_size} px images, the model for "
            f"{image_size}: build the encoder at image size {image_size}"
        )
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


def batchnorm_layers(model):
    """Return every BatchNormalization layer of a model, nested sub-models included.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of ``keras.layers.BatchNormalization`` layers.

    Example:
        >>> model = BCEModel(num_classes=80, image_size=64, encoder="small")
        >>> len(batchnorm_layers(model))
        7
    """
    found = []
    pending = [model]
    while pending:
        layer = pending.pop()
        if isinstance(layer, layers.BatchNormalization):
            found.append(layer)
        pending.extend(getattr(layer, "layers", ()))
    return found


def set_batchnorm_momentum(model, momentum):
    """Set the moving-statistics momentum of every BatchNormalization layer in a model.

    The moving mean and variance a model is evaluated and served with are an
    exponential average over training batches, ``momentum`` per step: at 0.9
    they rest on the last ~10 batches, at 0.99 (Keras' default) on the last
    ~100. Set before the model is compiled (the train step reads it when traced).
    ``benchmarks/bn_noise.py`` measures what that does to a finished run's score.

    Args:
        model: A Keras model; nested sub-models (the encoder) are searched too.
        momentum: A float in [0, 1).

    Returns:
        The number of BatchNormalization layers set.

    Example:
        >>> model = BCEModel(num_classes=80, image_size=64, encoder="small")
        >>> set_batchnorm_momentum(model, 0.99)
        7
    """
    found = batchnorm_layers(model)
    for layer in found:
        layer.momentum = float(momentum)
    return len(found)


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
