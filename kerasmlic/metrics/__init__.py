"""Evaluation metrics, Keras fit metrics, threshold calibration and report tables.

The NumPy parts import eagerly; the Keras metrics (:mod:`.streaming`) load on
first use, so evaluating a saved score matrix does not import TensorFlow.
"""

from kerasmlic.metrics.calibration import calibrate_thresholds
from kerasmlic.metrics.multilabel import (
    HEADLINE_KEYS,
    PER_CLASS_KEYS,
    RESULT_KEYS,
    average_precision_per_class,
    evaluate_predictions,
    precision_recall_curves,
    top_k_predictions,
)
from kerasmlic.metrics.report import format_metrics_table, format_per_class

_STREAMING = (
    "OverallF1",
    "OverallPrecision",
    "OverallRecall",
    "auc_pr",
    "default_fit_metrics",
)

__all__ = [
    "HEADLINE_KEYS",
    "PER_CLASS_KEYS",
    "RESULT_KEYS",
    "average_precision_per_class",
    "calibrate_thresholds",
    "evaluate_predictions",
    "format_metrics_table",
    "format_per_class",
    "precision_recall_curves",
    "top_k_predictions",
    *_STREAMING,
]


def __getattr__(name):
    """Load the Keras metrics lazily (PEP 562)."""
    if name in _STREAMING:
        from kerasmlic.metrics import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
