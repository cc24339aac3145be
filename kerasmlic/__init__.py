"""kerasmlic: multi-label image classification with Keras 3.

Label embeddings, recurrent label decoders and attention next to the classic
WARP / softmax / binary cross-entropy baselines, on COCO-format data.

This module is the public facade: it may re-export from any layer, and no
kerasmlic module imports it (docs/design.md → Layers). The notebook API
(:mod:`kerasmlic.api`: ``kerasmlic.build_model``, ``kerasmlic.train`` ...)
is loaded on first use (PEP 562), not here: ``import kerasmlic.data.x`` runs
this file first, so importing the upper layers here would make cycles and
start TensorFlow before the CLI has quietened its start-up
(:mod:`kerasmlic.quiet_start`).
"""

from kerasmlic.version import __version__

_API = (
    "TrainingSetup",
    "build_model",
    "build_split",
    "callbacks",
    "compile_model",
    "default_config",
    "evaluate",
    "export_model",
    "format_results",
    "load_config",
    "load_model",
    "make_datasets",
    "model_names",
    "model_summary",
    "predict",
    "synthesize",
    "train",
    "tune",
    "validation",
)
"""The names :mod:`kerasmlic.api` exports (its ``__all__``; a test keeps them equal)."""

__all__ = ["__version__", *_API]


def __getattr__(name):
    """Load a notebook-API name from :mod:`kerasmlic.api` on first use."""
    if name in _API:
        import importlib

        value = getattr(importlib.import_module("kerasmlic.api"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    """List the module's names with the lazily loaded API's."""
    return sorted(set(globals()) | set(__all__))
