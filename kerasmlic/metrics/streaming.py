"""Keras 3 metrics that accumulate over batches, for ``model.fit`` progress logs.

They take ``y_true`` multi-hot (B, C) and ``y_pred`` scores (B, C) in [0, 1].
The overall (micro) precision/recall/F1 here count exactly what
:func:`kerasmlic.metrics.evaluate_predictions` counts for ``OP OR OF1`` (and
their ``_top3`` versions): a label is predicted when its score is ``>=`` the
threshold (``keras.metrics.F1Score`` uses ``>``), and top-k ties go to the
lower class index (``ops.top_k``, as ``tf.math.top_k``). Counts are float32,
exact up to 2**24 per epoch (COCO train: at most 82,081 × 80 ≈ 6.6M).

``auc_pr`` is Keras' interpolated area under the PR curve on a fixed grid of
thresholds, averaged over classes: an approximation of mAP, not mAP itself
(the grid quantises scores, the interpolation differs from sklearn's step
sum, and a class with no positive in the epoch scores 0 instead of being left
out). Use :func:`kerasmlic.metrics.evaluate_predictions` for reported figures.
"""

import keras
from keras import ops


class _OverallCounts(keras.metrics.Metric):
    """Summed TP/FP/FN over all classes of thresholded or top-k label sets.

    Args:
        threshold: A label is predicted when its score is >= threshold
            (ignored when ``top_k`` is set).
        top_k: If set, each example's ``top_k`` highest-scored labels are
            its predicted set (all labels if there are fewer).
        name: Metric name shown in logs.
        dtype: Dtype of the state and result.
    """

    def __init__(self, threshold=0.5, top_k=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        self.threshold = float(threshold)
        self.top_k = None if top_k is None else int(top_k)
        self.true_positives = self.add_variable((), "zeros", name="true_positives")
        self.false_positives = self.add_variable((), "zeros", name="false_positives")
        self.false_negatives = self.add_variable((), "zeros", name="false_negatives")

    def _predicted(self, y_pred):
        if self.top_k is None:
            return ops.greater_equal(y_pred, ops.cast(self.threshold, y_pred.dtype))
        num_classes = y_pred.shape[-1]
        if num_classes is None:
            raise ValueError("top_k metrics need a static number of classes (last axis)")
        k = min(self.top_k, num_classes)
        _, indices = ops.top_k(y_pred, k)
        return ops.greater(ops.sum(ops.one_hot(indices, num_classes), axis=-2), 0)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch's counts.

        Args:
            y_true: (B, C) multi-hot targets; entries >= 0.5 count as positive.
            y_pred: (B, C) scores.
            sample_weight: Optional (B,) or (B, 1) weights per example.
        """
        y_pred = ops.convert_to_tensor(y_pred, self.dtype)
        actual = ops.greater_equal(ops.convert_to_tensor(y_true, self.dtype), 0.5)
        predicted = self._predicted(y_pred)
        weight = ops.ones_like(y_pred)
        if sample_weight is not None:
            sample_weight = ops.convert_to_tensor(sample_weight, self.dtype)
            if len(sample_weight.shape) == 1:
                sample_weight = ops.expand_dims(sample_weight, -1)
            weight = ops.broadcast_to(sample_weight, ops.shape(y_pred))

        def count(mask):
            return ops.sum(ops.where(mask, weight, ops.zeros_like(weight)))

        not_actual = ops.logical_not(actual)
        self.true_positives.assign_add(count(ops.logical_and(actual, predicted)))
        self.false_positives.assign_add(count(ops.logical_and(not_actual, predicted)))
        self.false_negatives.assign_add(count(ops.logical_and(actual, ops.logical_not(predicted))))

    def _precision(self):
        return ops.divide_no_nan(self.true_positives, self.true_positives + self.false_positives)

    def _recall(self):
        return ops.divide_no_nan(self.true_positives, self.true_positives + self.false_negatives)

    def get_config(self):
        """Return the config that rebuilds this metric (name, dtype, threshold, top_k)."""
        config = super().get_config()
        config.update({"threshold": self.threshold, "top_k": self.top_k})
        return config


@keras.saving.register_keras_serializable(package="kerasmlic")
class OverallPrecision(_OverallCounts):
    """Overall (micro) precision: ΣTP / Σ(TP+FP) over all classes, 0 if nothing predicted.

    Args:
        threshold: A label is predicted when its score is >= threshold.
        top_k: If set, each example's top_k labels are predicted instead.
        name: Metric name (default ``"precision"``).
        dtype: Dtype of the state and result.
    """

    def __init__(self, threshold=0.5, top_k=None, name="precision", dtype=None):
        super().__init__(threshold=threshold, top_k=top_k, name=name, dtype=dtype)

    def result(self):
        """Return the overall precision so far."""
        return self._precision()


@keras.saving.register_keras_serializable(package="kerasmlic")
class OverallRecall(_OverallCounts):
    """Overall (micro) recall: ΣTP / Σ(TP+FN) over all classes, 0 if no positive.

    Args:
        threshold: A label is predicted when its score is >= threshold.
        top_k: If set, each example's top_k labels are predicted instead.
        name: Metric name (default ``"recall"``).
        dtype: Dtype of the state and result.
    """

    def __init__(self, threshold=0.5, top_k=None, name="recall", dtype=None):
        super().__init__(threshold=threshold, top_k=top_k, name=name, dtype=dtype)

    def result(self):
        """Return the overall recall so far."""
        return self._recall()


@keras.saving.register_keras_serializable(package="kerasmlic")
class OverallF1(_OverallCounts):
    """Overall (micro) F1: 2ΣTP / (2ΣTP + ΣFP + ΣFN), the ``OF1`` of the evaluation JSON.

    Args:
        threshold: A label is predicted when its score is >= threshold.
        top_k: If set, each example's top_k labels are predicted instead
            (``top_k=3`` gives ``OF1_top3``).
        name: Metric name (default ``"f1"``).
        dtype: Dtype of the state and result.
    """

    def __init__(self, threshold=0.5, top_k=None, name="f1", dtype=None):
        super().__init__(threshold=threshold, top_k=top_k, name=name, dtype=dtype)

    def result(self):
        """Return the overall F1 so far."""
        tp2 = 2.0 * self.true_positives
        return ops.divide_no_nan(tp2, tp2 + self.false_positives + self.false_negatives)


def auc_pr(num_classes, num_thresholds=200, name="auc_pr"):
    """Keras' multi-label area under the PR curve, averaged over classes.

    Args:
        num_classes: Number of classes C (builds the state up front).
        num_thresholds: Points of the threshold grid on [0, 1].
        name: Metric name shown in logs.

    Returns:
        A ``keras.metrics.AUC`` (an interpolated approximation of mAP; see the
        module docstring).
    """
    return keras.metrics.AUC(
        num_thresholds=num_thresholds,
        curve="PR",
        multi_label=True,
        num_labels=num_classes,
        name=name,
    )


def default_fit_metrics(num_classes, *, threshold=0.5, top_k=3, num_thresholds=200):
    """Fresh metric objects for ``model.compile(metrics=...)``.

    Args:
        num_classes: Number of classes C.
        threshold: Threshold of the ``f1`` metric.
        top_k: Labels per image of the ``f1_top3`` metric (named after it).
        num_thresholds: Threshold grid of ``auc_pr``.

    Returns:
        ``[auc_pr, f1, f1_top{k}]``: the mAP approximation, overall F1 at
        ``threshold`` and overall F1 of each image's top-k labels. New objects
        on every call, since a metric object must not be shared by two models.
    """
    return [
        auc_pr(num_classes, num_thresholds=num_thresholds),
        OverallF1(threshold=threshold, name="f1"),
        OverallF1(top_k=top_k, name=f"f1_top{top_k}"),
    ]
