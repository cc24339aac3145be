"""Global pooling choices for heads that read one vector per image.

The encoders give a feature map and its global average. For multi-label data
the average dilutes a small object's response over the whole map; a global
max keeps the strongest location per channel (as weakly supervised
localisation work does), and ``avgmax`` sums both, so a channel's score
reflects both how much of the image responds and how strongly one place does.
On the built-in data the choice is measured in ``experiments/bce.yaml``.
"""

from keras import layers

from kerasmlic.errors import UsageError

POOLINGS = ("avg", "max", "avgmax")
"""The ``pooling`` options of the linear heads."""


def check_pooling(pooling):
    """Raise ``UsageError`` unless ``pooling`` is one of :data:`POOLINGS`.

    Args:
        pooling: The option value.
    """
    if pooling not in POOLINGS:
        raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def pool_feature_map(feature_map, average, pooling):
    """Return the pooled ``(B, C)`` vector of a ``(B, H, W, C)`` feature map.

    Args:
        feature_map: The encoder's feature map (symbolic tensor).
        average: The encoder's global average of it (reused, not recomputed).
        pooling: One of :data:`POOLINGS`.

    Returns:
        The pooled vector, float32.

    Example:
        >>> feature_map, average = encoder(images)
        >>> vector = pool_feature_map(feature_map, average, "avgmax")
    """
    check_pooling(pooling)
    if pooling == "avg":
        return average
    maximum = layers.GlobalMaxPooling2D(name="max_pool", dtype="float32")(feature_map)
    if pooling == "max":
        return maximum
    return layers.Add(name="avg_max_pool", dtype="float32")([average, maximum])
