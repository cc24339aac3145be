"""The base class every kerasmlic model derives from, and its output contract.

A model is a functional ``keras.Model`` built in ``__init__`` (keras-hub style:
layers, functional graph, config). It maps a normalised image batch
``(B, S, S, 3)`` to a dict with at least:

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
"""

import keras
from keras import ops

from kerasmlic.models.encoders import ENCODER_LAYER_NAME, encoder_spec, encoder_spec_scope


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

    def get_config(self):
        """Return the constructor arguments (round-trips through ``from_config``).

        A ``hub:`` encoder's architecture is stored too (``encoder_spec``), so a
        ``.keras`` file loads without the keras-hub preset it was built from.
        """
        config = {"name": self.name, "trainable": self.trainable, **self._kerasmlic_config}
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
        """
        if config.get("encoder_weights") is not None:
            config = {**config, "encoder_weights": None}
        config = dict(config)
        spec = config.pop("encoder_spec", None)
        with encoder_spec_scope(config.get("encoder"), spec):
            return cls(**config)

    @property
    def normalization(self):
        """The input normalisation name the encoder expects (see data.preprocessing)."""
        return self._kerasmlic_config.get("normalization") or getattr(
            self, "_normalization", "unit"
        )

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
