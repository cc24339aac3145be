"""The base class every kerasmlic model derives from, and its output contract.

A model is composed of parts, in the spirit of keras-hub's
``ImageClassifier(backbone, ...)``: an encoder
(:class:`~kerasmlic.models.encoders.Encoder`, given by name or as an object),
a head (:class:`~kerasmlic.models.head.Head`: the layers from the encoder's
outputs to the output dict) and a loss (:class:`~kerasmlic.models.losses.Loss`).
A registered model class names its head and loss (``head_cls``,
``loss_cls``); :class:`MultiLabelModel` does the rest once: the encoder
options (``encoder``, ``encoder_weights``, ``freeze_encoder``), the
functional graph, the config. A model's options are the encoder options plus
the keyword-only arguments of its head's and its loss's constructors
(:meth:`MultiLabelModel.option_defaults`, ``registry.model_options``).

It is a functional ``keras.Model`` built in ``__init__`` (keras-hub style:
layers, functional graph, config). It maps a batch of pixels ``(B, S, S, 3)``
on 0-255 (uint8, as the data pipeline gives them, or float) to a dict with at
least:

- ``scores``: ``(B, C)`` float32 in [0, 1], the per-class scores used for mAP and
  top-k (for sequence models: by default the probability that the decoder
  emits the class before it stops, from the decoded sequence's step
  distributions, see :mod:`kerasmlic.models.decoding`);
- ``predicted``: ``(B, C)`` float32 0/1, the predicted label set (thresholded
  scores, or the decoded set for sequence models).

Sequence models add ``sequence`` (decoded tokens) and, with attention,
``attention`` (per-step weights over the feature-map regions).

Each model owns its loss (its loss part, through ``multilabel_loss``), so
``model.compile(optimizer)`` then ``model.fit(dataset)`` trains it; targets
are the pipeline's multi-hot tensor or its ``{"multi_hot", "sequence"}`` dict.
What a model needs from the input pipeline is stated once, on its class:
``uses_sequences`` (label sequences) and ``supports_class_weighting``.

Input contract and format version: the model normalises its pixels itself (its
encoder's first layer, ``PixelNormalization``), and its config carries
``format_version`` (:data:`FORMAT_VERSION`). Version 1, a ``.keras`` file
saved before (no ``format_version``), took images the pipeline had
normalised; its config holds only constructor arguments, so it is rebuilt
with the current architecture, and the normalisation layer has no weights:
its saved weights load unchanged and the model scores 0-255 pixels as the old
one scored their normalised version. A version above :data:`FORMAT_VERSION`
(a newer kerasmlic) is refused with a one-line ``UsageError``.
"""

import inspect

import keras
from keras import ops

from kerasmlic.errors import UsageError
from kerasmlic.models.encoders import (
    ENCODER_LAYER_NAME,
    as_encoder,
    encoder_spec,
    encoder_spec_scope,
)
from kerasmlic.models.losses import split_targets as split_targets
from kerasmlic.models.pixel_normalization import find_pixel_normalization

FORMAT_VERSION = 2
"""Saved-model contract: 2 takes 0-255 pixels and normalises inside; 1 (no
``format_version`` in the config) took images normalised by the pipeline."""

PIXELS = "raw"
"""``model.normalization`` of a model that normalises inside: the pipeline's
``make_dataset(normalization="raw")`` gives it uint8 pixels."""

ENCODER_OPTIONS = {"encoder": "tiny", "encoder_weights": None, "freeze_encoder": False}
"""The options every model takes for its encoder, with their defaults."""


def part_options(part_cls):
    """Return the options a head or loss class takes: its keyword-only arguments.

    Args:
        part_cls: A :class:`~kerasmlic.models.head.Head` or
            :class:`~kerasmlic.models.losses.Loss` subclass (or None).

    Returns:
        A dict option -> default, in signature order.
    """
    if part_cls is None:
        return {}
    params = inspect.signature(part_cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def _part_config(part):
    """The values a built part holds for its options (same-named attributes)."""
    config = {}
    for option in part_options(type(part)):
        if not hasattr(part, option):
            raise TypeError(
                f"{type(part).__name__} must keep its option {option!r} as an attribute"
            )
        config[option] = getattr(part, option)
    return config


def check_format_version(version):
    """Refuse a saved model's format version this code cannot load.

    Args:
        version: The config's ``format_version`` (1 when absent).

    Returns:
        The version as an int.

    Raises:
        UsageError: Not a positive integer, or newer than :data:`FORMAT_VERSION`.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"saved model has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"saved model has format_version {version}, written by a newer kerasmlic; "
            f"this one reads up to {FORMAT_VERSION}: upgrade kerasmlic to load it"
        )
    return version


def _scale_for_replicas(loss):
    """Divide a per-replica loss by the replica count, as ``keras.losses.Loss`` does.

    Under ``tf.distribute`` the replicas' gradients are summed, so each
    replica's mean loss must be scaled by 1/N for the step to follow the
    global-batch mean (the Keras trainer unscales it again for the logs).
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * ops.cast(1.0 / replicas, loss.dtype)


@keras.saving.register_keras_serializable(package="kerasmlic")
class Thresholds(keras.layers.Layer):
    """Turns scores into a predicted label set with per-class thresholds.

    The thresholds are a non-trainable weight so calibrated values
    (``kerasmlic.metrics.calibration``) are saved with the model and exported
    inside the serving graph.

    Args:
        num_classes: Number of classes C.
        default: Initial threshold for every class.
    """

    def __init__(self, num_classes, default=0.5, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.default = default
        self.thresholds = self.add_weight(
            shape=(num_classes,),
            initializer=keras.initializers.Constant(default),
            trainable=False,
            name="thresholds",
        )

    def call(self, scores):
        """Return ``scores >= thresholds`` as float32 0/1."""
        return ops.cast(
            ops.greater_equal(scores, ops.cast(self.thresholds, scores.dtype)), "float32"
        )

    def get_config(self):
        """Return the layer config."""
        return {**super().get_config(), "num_classes": self.num_classes, "default": self.default}


class MultiLabelModel(keras.Model):
    """Base class: an encoder, a head and a loss, with the kerasmlic output contract.

    A registered model class declares its parts and what it needs from the
    input pipeline; its options are the encoder options plus the keyword-only
    arguments of ``head_cls`` and ``loss_cls`` (an option both name goes to
    both, with one default)::

        @register_model("bce")
        class BCEModel(MultiLabelModel):
            head_cls = LinearHead
            loss_cls = losses.BCELoss
            supports_class_weighting = True

    Args:
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        encoder: An encoder name (``tiny``, ``resnet50``, ``hub:<preset>``...,
            see ``encoders.encoder_names``) or an
            :class:`~kerasmlic.models.encoders.Encoder` built at
            ``image_size`` (its weights are kept; the config records its name,
            and a ``hub:`` encoder's architecture as ``encoder_spec``).
        encoder_weights: ``"imagenet"``, a ``.weights.h5`` path, or None (an
            encoder name only).
        freeze_encoder: Freeze the encoder (train the head only); sets an
            ``Encoder`` object's ``trainable`` too.
        name: Model name (default: the registry name).
        **options: The head's and the loss's options (see the model class),
            then ``keras.Model`` arguments.

    Class attributes:
        registry_name: Set by ``register_model``.
        head_cls: The :class:`~kerasmlic.models.head.Head` subclass.
        head_args: Fixed, non-option arguments of the head (e.g. a variant).
        loss_cls: The :class:`~kerasmlic.models.losses.Loss` subclass.
        uses_sequences: True when training needs the pipeline's label sequences
            (``make_dataset(label_order=...)``).
        supports_class_weighting: True when the loss is plain binary
            cross-entropy on per-class logits, so ``train.class_weighting``
            (a compiled class-weighted BCE) may replace it.
    """

    registry_name = None
    head_cls = None
    head_args = {}
    loss_cls = None
    uses_sequences = False
    supports_class_weighting = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.head_cls is None:
            return
        head, loss = part_options(cls.head_cls), part_options(cls.loss_cls)
        for option in set(head) & set(loss):
            if head[option] != loss[option]:
                raise TypeError(
                    f"{cls.__name__}: option {option!r} has default {head[option]!r} in "
                    f"{cls.head_cls.__name__} but {loss[option]!r} in {cls.loss_cls.__name__}"
                )
        # inspect.signature / help() show the model's options.
        param = inspect.Parameter
        options = cls.option_defaults().items()
        cls.__signature__ = inspect.Signature(
            [
                param("num_classes", param.POSITIONAL_OR_KEYWORD),
                param("image_size", param.POSITIONAL_OR_KEYWORD),
                *(param(k, param.KEYWORD_ONLY, default=v) for k, v in options),
                param("name", param.KEYWORD_ONLY, default=None),
                param("kwargs", param.VAR_KEYWORD),
            ]
        )

    @classmethod
    def option_defaults(cls):
        """Return the model's options with their defaults (``registry.model_options``).

        Returns:
            A dict: the encoder options, then the head's, then the loss's.
        """
        return {**ENCODER_OPTIONS, **part_options(cls.head_cls), **part_options(cls.loss_cls)}

    def __init__(
        self,
        num_classes,
        image_size,
        *,
        encoder="tiny",
        encoder_weights=None,
        freeze_encoder=False,
        name=None,
        **kwargs,
    ):
        head_names, loss_names = part_options(self.head_cls), part_options(self.loss_cls)
        head_options = {k: kwargs[k] for k in head_names if k in kwargs}
        loss_options = {k: kwargs[k] for k in loss_names if k in kwargs}
        for option in {**head_options, **loss_options}:
            del kwargs[option]
        # The parts check their options before the (costlier) encoder is built.
        head = self.head_cls(num_classes, **self.head_args, **head_options)
        loss = self.loss_cls(**loss_options)
        encoder = as_encoder(
            encoder, image_size, weights=encoder_weights, trainable=not freeze_encoder
        )
        images = keras.Input((image_size, image_size, 3), name="images")
        feature_map, pooled = encoder(images)
        outputs = head(feature_map, pooled)
        super().__init__(inputs=images, outputs=outputs, name=name or self.registry_name, **kwargs)
        # Plain attributes: the layers are tracked once, through the graph.
        self._encoder, self.head, self.loss_fn = encoder, head, loss
        if loss.seed is not None:  # a model-owned sampling state (WARP)
            self.sampling_seed = loss.seed
        self._normalization = encoder.normalization
        self._set_config(
            num_classes=num_classes,
            image_size=image_size,
            encoder=encoder.name,
            encoder_weights=encoder_weights,
            freeze_encoder=freeze_encoder,
            **{**_part_config(head), **_part_config(loss)},
        )

    @property
    def encoder(self):
        """The model's :class:`~kerasmlic.models.encoders.Encoder` (network: layer ``encoder``)."""
        return self._encoder

    def _set_config(self, **config):
        self._kerasmlic_config = dict(config)

    @property
    def options(self):
        """The model's constructor options, as :meth:`get_config` records them (a copy).

        The public way for other modules to read a model's settings
        (``num_classes``, ``image_size``, ``encoder``, ``max_labels``...).

        Example:
            >>> build_model("bce", num_classes=80, image_size=64).options["encoder"]
            'tiny'
        """
        return dict(getattr(self, "_kerasmlic_config", None) or {})

    def get_config(self):
        """Return the constructor arguments (round-trips through ``from_config``).

        A ``hub:`` encoder's architecture is stored too (``encoder_spec``), so a
        ``.keras`` file loads without the keras-hub preset it was built from;
        ``format_version`` is :data:`FORMAT_VERSION`.
        """
        config = {
            "name": self.name,
            "trainable": self.trainable,
            **self._kerasmlic_config,
            "format_version": FORMAT_VERSION,
        }
        try:
            spec = encoder_spec(self.get_layer(ENCODER_LAYER_NAME))
        except ValueError:  # a model without an encoder layer
            spec = None
        if spec is not None:
            config["encoder_spec"] = spec
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild the model from :meth:`get_config`'s dict.

        Pretrained encoder weights (``encoder_weights``: ``imagenet`` or a
        file) are not loaded again: as everywhere in Keras, ``from_config``
        builds the architecture, and ``.keras`` loading then restores the saved
        weights, so reloading a model needs neither a network nor the original
        weights file.

        ``format_version`` is checked (:func:`check_format_version`); a
        version-1 config (none stored) is rebuilt with the current
        architecture, which differs only by the weightless normalisation layer
        (module docstring).
        """
        if config.get("encoder_weights") is not None:
            config = {**config, "encoder_weights": None}
        config = dict(config)
        check_format_version(config.pop("format_version", 1))
        spec = config.pop("encoder_spec", None)
        with encoder_spec_scope(config.get("encoder"), spec):
            return cls(**config)

    @property
    def normalization(self):
        """What the input pipeline applies for this model (``make_dataset(normalization=...)``).

        ``"raw"`` (:data:`PIXELS`): the model normalises inside itself, so the
        pipeline gives it uint8 pixels on 0-255. Only a model without a
        ``PixelNormalization`` layer (none is built so any more) would name
        its encoder's scaling here, for the pipeline to apply.
        """
        if find_pixel_normalization(self) is not None:
            return PIXELS
        return self._kerasmlic_config.get("normalization") or getattr(
            self, "_normalization", "unit"
        )

    @property
    def pixel_normalization(self):
        """The scaling the model applies to its pixels (``PixelNormalization.mode``).

        ``"unit"``, ``"caffe"``, ``"raw"``... (``"affine"`` for a ``hub:``
        preset's scale and offset), or None for a model without the layer.
        """
        layer = find_pixel_normalization(self)
        return None if layer is None else layer.mode

    def multilabel_loss(self, y, y_pred, sample_weight=None):
        """Return the scalar training loss: the model's loss part on its outputs.

        Args:
            y: The pipeline's targets (tensor or dict, see :func:`split_targets`).
            y_pred: The model's output dict.
            sample_weight: Optional per-example weights.
        """
        return self.loss_fn(y, y_pred, sample_weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Use the model's own loss unless ``compile(loss=...)`` was given one.

        A compiled loss sees ``(multi_hot, scores)``, or ``(multi_hot, logits)``
        when it declares ``from_logits`` and the model outputs per-class
        ``logits`` shaped like the scores (the linear heads): a loss on
        logits keeps its gradient where the probabilities saturate.
        """
        if self._compile_loss is not None:
            multi_hot, _ = split_targets(y)
            prediction = y_pred["scores"]
            logits = y_pred.get("logits")
            if (
                getattr(self.loss, "from_logits", False)
                and logits is not None
                and len(logits.shape) == len(prediction.shape)
            ):
                prediction = logits
            return super().compute_loss(x, multi_hot, prediction, sample_weight, training)
        loss = self.multilabel_loss(y, y_pred, sample_weight)
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), loss.dtype)
        return _scale_for_replicas(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Compiled metrics see ``(multi_hot, scores)``, whatever the outputs."""
        multi_hot, _ = split_targets(y)
        return super().compute_metrics(x, multi_hot, y_pred["scores"], sample_weight)
