"""kerasmlic: multi-label image classification with Keras 3.

Label embeddings, recurrent label decoders and attention next to the classic
WARP / softmax / binary cross-entropy baselines, on COCO-format data.
"""

__version__ = "0.1.0"
