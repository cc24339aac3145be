"""Hyperparameter search with keras-tuner: ``tune(config, ...)`` (``kerasmlic tune``).

- :mod:`~kerasmlic.tuning.space`: the search space declared in the YAML.
- :mod:`~kerasmlic.tuning.hypermodel`: the ``HyperModel`` (same factory,
  pipeline, optimiser and ``val_mAP`` as ``kerasmlic train``).
- :mod:`~kerasmlic.tuning.tuners`: Hyperband, RandomSearch, BayesianOptimization.
- :mod:`~kerasmlic.tuning.distributed`: keras-tuner's chief/worker mode.
- :mod:`~kerasmlic.tuning.results`: leaderboard, best config, best run directory.
"""

from kerasmlic.tuning.search import load_tune_config, tune

__all__ = ["load_tune_config", "tune"]
