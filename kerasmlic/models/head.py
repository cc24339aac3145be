"""Heads: what a model computes from its encoder's outputs.

A head maps the encoder's symbolic ``(feature_map (B, H', W', C), pooled (B, C))``
to the model's output dict (``scores``, ``predicted``, and ``logits``,
``attention``, ``sequence``... as the head has them; see
:mod:`kerasmlic.models.base`). A model class is an encoder, a head and a loss
(:class:`~kerasmlic.models.base.MultiLabelModel`).

A head is a plain object, not a Keras layer: it builds named Keras layers
into the model's functional graph when it is called, so each layer is tracked
once, by the model, under the same weight paths as a model written in one
piece (and ``model.get_layer("logits")`` finds them). Its options are the
keyword-only arguments of its constructor, each kept as an attribute of the
same name (the model's config reads them there).

The heads: :class:`~kerasmlic.models.baselines.LinearHead` (and
``SoftmaxHead``), :class:`~kerasmlic.models.embedding.JointEmbeddingHead`,
:class:`~kerasmlic.models.embedding.LabelAttentionHead`,
:class:`~kerasmlic.models.label_query.LabelQueryHead`,
:class:`~kerasmlic.models.recurrent.RecurrentHead`.
"""

from keras import layers

from kerasmlic.models.base import Thresholds


class Head:
    """Base class of the heads.

    Subclasses take ``(num_classes, *, option=default, ...)``, check their
    options (raising ``UsageError``) and keep each as an attribute of the same
    name; :meth:`__call__` creates the head's layers on the encoder's outputs.

    Args:
        num_classes: Number of classes C.
    """

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def __call__(self, feature_map, pooled):
        """Build the head on the encoder's outputs.

        Args:
            feature_map: ``(B, H', W', C)`` symbolic tensor.
            pooled: ``(B, C)`` symbolic tensor (the map's global average, or
                a ViT's class token).

        Returns:
            The output dict (symbolic tensors), at least ``scores`` and
            ``predicted``, both ``(B, C)`` float32.
        """
        raise NotImplementedError

    def scored_outputs(self, logits, threshold, activation="sigmoid", **extra):
        """Return ``{"scores", "predicted", "logits", **extra}`` from per-class logits.

        Layers ``scores`` (the activation) and ``predicted``
        (:class:`~kerasmlic.models.base.Thresholds`), both float32.

        Args:
            logits: ``(B, C)`` float32 logits.
            threshold: Initial per-class threshold on the scores.
            activation: ``"sigmoid"`` or ``"softmax"``.
            **extra: Further outputs (``attention``...).

        Returns:
            The output dict.
        """
        scores = layers.Activation(activation, dtype="float32", name="scores")(logits)
        predicted = Thresholds(self.num_classes, threshold, dtype="float32", name="predicted")(
            scores
        )
        return {"scores": scores, "predicted": predicted, "logits": logits, **extra}
