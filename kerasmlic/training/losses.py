"""Class-weighted binary cross-entropy for the ``bce`` model (``train.class_weighting``).

COCO's labels are long-tailed (person on half the images, hair drier on a few
dozen), so plain BCE is dominated by negatives of rare classes. Two standard
re-weightings:

- ``pos_weight``: each positive term of class c is weighted by
  ``min(negatives_c / positives_c, max_pos_weight)`` (PyTorch's
  ``BCEWithLogitsLoss(pos_weight=...)``).
- ``class_balanced``: both terms of class c are weighted by the inverse
  effective number of samples ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al.,
  CVPR 2019), normalised to mean 1 over the classes.
"""

import keras
import numpy as np
from keras import ops

from kerasmlic.errors import UsageError

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
        pos = np.clip((num_examples - counts) / positives, 1.0, max_pos_weight)
        return pos.astype(np.float32), ones.astype(np.float32)
    if weighting == "class_balanced":
        effective = (1.0 - beta ** np.maximum(counts, 1.0)) / (1.0 - beta)
        weight = 1.0 / effective
        weight = weight / weight.mean()
        return ones.astype(np.float32), weight.astype(np.float32)
    raise UsageError(f"unknown class weighting {weighting!r}")


@keras.saving.register_keras_serializable(package="kerasmlic")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy on probabilities with per-class positive and class weights.

    Args:
        pos_weight: Per-class weight of the positive term (list of C floats).
        class_weight: Per-class weight of both terms (list of C floats).
        name: Loss name.
        **kwargs: Passed to ``keras.losses.Loss``.
    """

    def __init__(self, pos_weight, class_weight, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(v) for v in pos_weight]
        self.class_weight = [float(v) for v in class_weight]

    def call(self, y_true, y_pred):
        """Return the per-example loss, summed over classes.

        Args:
            y_true: (B, C) multi-hot targets.
            y_pred: (B, C) probabilities (the model's ``scores``).

        Returns:
            (B,) losses.
        """
        y_true = ops.cast(y_true, "float32")
        p = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        pos = ops.convert_to_tensor(self.pos_weight, "float32")
        cls = ops.convert_to_tensor(self.class_weight, "float32")
        terms = -(pos * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        return ops.sum(cls * terms, axis=-1)

    def get_config(self):
        """Return the loss config."""
        return {
            **super().get_config(),
            "pos_weight": self.pos_weight,
            "class_weight": self.class_weight,
        }
