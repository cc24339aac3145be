"""The base class every kerasmlic model derives from, and its output contract.

A model is a functional ``keras.Model`` built in ``__init__`` (keras-hub style:
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

Each model owns its loss (``multilabel_loss``), so ``model.compile(optimizer)``
then ``model.fit(dataset)`` trains it; targets are the pipeline's multi-hot
tensor or its ``{"multi_hot", "sequence"}`` dict.

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

import keras
from keras import ops

from kerasmlic.errors import UsageError
from kerasmlic.models.encoders import ENCODER_LAYER_NAME, encoder_spec, encoder_spec_scope
from kerasmlic.models.pixel_normalization import find_pixel_normalization

FORMAT_VERSION = 2
"""Saved-model contract: 2 takes 0-255 pixels and normalises inside; 1 (no
``format_version`` in the config) took images normalised by the pipeline."""

PIXELS = "raw"
"""``model.normalization`` of a model that normalises inside: the pipeline's
``make_dataset(normalization="raw")`` gives it uint8 pixels."""


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


def split_targets(y):
    """Return ``(multi_hot, sequence_or_None)`` from the pipeline's targets.

    Args:
        y: A multi-hot tensor ``(B, C)`` or a dict with ``multi_hot`` and
            optionally ``sequence``.
    """
    if isinstance(y, dict):
        return y["multi_hot"], y.get("sequence")
    return y, None


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
    """Base class: a functional model with the kerasmlic output contract.

    Subclasses build their graph in ``__init__``, call
    ``super().__init__(inputs=..., outputs=..., name=...)``, then
    ``self._set_config(...)`` with every constructor argument, and implement
    :meth:`multilabel_loss`.

    Class attributes:
        registry_name: Set by ``register_model``.
        uses_sequences: True when training needs the pipeline's label sequences
            (``make_dataset(label_order=...)``).
    """

    registry_name = None
    uses_sequences = False

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
        """Return the scalar training loss.

        Args:
            y: The pipeline's targets (tensor or dict, see :func:`split_targets`).
            y_pred: The model's output dict.
            sample_weight: Optional per-example weights.
        """
        raise NotImplementedError

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
