"""Export kerasmlic models for TF Serving (SavedModel) and explain their predictions.

- :func:`export_saved_model`: a Keras model → ``OUT/VERSION/`` SavedModel whose
  ``serving_default`` signature takes encoded image bytes (see
  :mod:`kerasmlic.export.serving`).
- :func:`export_run`: the same for a training run directory's ``best.keras``.
"""

from kerasmlic.export.run import export_run, load_run
from kerasmlic.export.saved_model import export_saved_model

__all__ = ["export_run", "export_saved_model", "load_run"]
