"""Class-weighted binary cross-entropy for the ``bce`` model (``train.class_weighting``).

COCO's labels are long-tailed (person on half the images, hair drier on a few
dozen), so plain BCE is dominated by negatives of rare classes. Two standard
re-weightings:

- ``pos_weight``: each positive term of class c is weighted by
  ``min(negatives_c / positives_c, max_pos_weight)`` (PyTorch's
  ``BCEWithLogitsLoss(pos_weight=...)``); a class on more than half of the
  images gets a weight below 1, as in PyTorch (no floor).

The loss works on the model's logits (``from_logits=True``, what the models'
``compute_loss`` passes a loss that declares it), so its gradient is
``sigmoid(z) - y``, weighted, for any logit: it does not vanish on a
confidently wrong label as a loss on clipped probabilities does.
- ``class_balanced``: both terms of class c are weighted by the inverse
  effective number of samples ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al.,
  CVPR 2019), normalised to mean 1 over the classes.
"""

import keras
import numpy as np
from keras import ops

from kerasmlic.errors import UsageError
from kerasmlic.models.losses import weighted_binary_crossentropy

_EPS = 1e-7


def class_weights(label_counts, num_examples, weighting, *, max_pos_weight=10.0, beta=0.999):
    """Return ``(pos_weight, class_weight)`` arrays for a weighting scheme.

    Args:
        label_counts: Images per class in the training split (C,).
        num_examples: Images in the training split.
        weighting: ``"none"``, ``"pos_weight"`` or ``"class_balanced"``.
        max_pos_weight: Cap of the positive weight (``pos_weight``).
        beta: Effective-number parameter (``class_balanced``).

    Returns:
        Two float32 arrays (C,): the weight of each class's positive term and
        of both its terms.

    Raises:
        UsageError: Unknown weighting.
    """
    counts = np.asarray(label_counts, np.float64)
    ones = np.ones_like(counts)
    if weighting == "none":
        return ones.astype(np.float32), ones.astype(np.float32)
    if weighting == "pos_weight":
        positives = np.maximum(counts, 1.0)
        pos = np.minimum((num_examples - counts) / positives, max_pos_weight)
        return pos.astype(np.float32), ones.astype(np.float32)
    if weighting == "class_balanced":
        effective = (1.0 - beta ** np.maximum(counts, 1.0)) / (1.0 - beta)
        weight = 1.0 / effective
        weight = weight / weight.mean()
        return ones.astype(np.float32), weight.astype(np.float32)
    raise UsageError(f"unknown class weighting {weighting!r}")


@keras.saving.register_keras_serializable(package="kerasmlic")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with per-class positive and class weights, from logits.

    Per example: ``sum_c class_weight_c * (pos_weight_c * y_c * softplus(-z_c)
    + (1 - y_c) * softplus(z_c))`` (:func:`kerasmlic.models.losses.weighted_binary_crossentropy`).
    Models that output ``logits`` hand them to a compiled loss whose
    ``from_logits`` is true (:meth:`kerasmlic.models.base.MultiLabelModel.compute_loss`).

    Args:
        pos_weight: Per-class weight of the positive term (list of C floats).
        class_weight: Per-class weight of both terms (list of C floats).
        from_logits: ``y_pred`` holds logits (default). With False it holds
            probabilities, clipped to ``[1e-7, 1 - 1e-7]`` and turned into
            logits, so the gradient of a label beyond the clip is 0.
        name: Loss name.
        **kwargs: Passed to ``keras.losses.Loss``.
    """

    def __init__(self, pos_weight, class_weight, from_logits=True, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(v) for v in pos_weight]
        self.class_weight = [float(v) for v in class_weight]
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        """Return the per-example loss, summed over classes.

        Args:
            y_true: (B, C) multi-hot targets.
            y_pred: (B, C) logits (or probabilities with ``from_logits=False``).

        Returns:
            (B,) losses.
        """
        logits = ops.cast(y_pred, "float32")
        if not self.from_logits:
            p = ops.clip(logits, _EPS, 1.0 - _EPS)
            logits = ops.log(p) - ops.log1p(-p)
        return weighted_binary_crossentropy(
            y_true,
            logits,
            ops.convert_to_tensor(self.pos_weight, "float32"),
            ops.convert_to_tensor(self.class_weight, "float32"),
        )

    def get_config(self):
        """Return the loss config."""
        return {
            **super().get_config(),
            "pos_weight": self.pos_weight,
            "class_weight": self.class_weight,
            "from_logits": self.from_logits,
        }
