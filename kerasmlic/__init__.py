"""kerasmlic: multi-label image classification with Keras 3.

Label embeddings, recurrent label decoders and attention next to the classic
WARP / softmax / binary cross-entropy baselines, on COCO-format data.

This module is the public facade: it may re-export from any layer, and no
kerasmlic module imports it (docs/design.md → Layers).
"""

from kerasmlic.version import __version__

__all__ = ["__version__"]
