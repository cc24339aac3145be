"""Sampling and planning one synthetic image: its scene, labels and objects.

:func:`plan_image` draws a scene, the distinct labels (in-scene categories,
``person`` often, an out-of-scene one now and then), and for each label one
or more :class:`~kerasmlic.data.synth.shapes.Instance` objects (or a crowd)
with sizes, positions and colours, in drawing order.
"""

import math

import numpy as np

from kerasmlic.data.synth.catalog import (
    CATEGORY_INDEX,
    CROWDABLE,
    LARGE,
    MANY,
    NAMES,
    SCENE_PROBABILITIES,
    SCENE_TABLES,
    SMALL,
    category_look,
)
from kerasmlic.data.synth.shapes import Instance

# Object sizes as a fraction of the image side (at 64 px: small 10-19 px,
# medium 12-26 px, large 19-30 px, tiny 5-8 px).
SIZE_RANGES = {
    "small": (0.16, 0.30),
    "medium": (0.19, 0.41),
    "large": (0.30, 0.47),
    "tiny": (0.078, 0.125),
}
TINY_PROBABILITY = 0.10
EMPTY_PROBABILITY = 0.01
CROWD_PROBABILITY = 0.04
OUT_OF_SCENE_PROBABILITY = 0.15
# Mean of the Poisson part of the number of in-scene labels (1 + Poisson);
# tuned so the mean number of visible distinct labels is about 2.9.
EXTRA_LABELS_MEAN = 1.35
MAX_INSTANCES = 12


def _sample_labels(rng):
    """Sample a scene and the distinct labels of one image.

    Returns:
        ``(scene index, sorted list of class indices)``.
    """
    si = int(rng.choice(len(SCENE_TABLES), p=SCENE_PROBABILITIES))
    scene = SCENE_TABLES[si]
    labels = set()
    if rng.random() < scene["person_p"]:
        labels.add(CATEGORY_INDEX["person"])
    k = min(1 + int(rng.poisson(EXTRA_LABELS_MEAN)), len(scene["categories"]))
    labels.update(
        int(c) for c in rng.choice(scene["categories"], size=k, replace=False, p=scene["p"])
    )
    if rng.random() < OUT_OF_SCENE_PROBABILITY:
        other = SCENE_TABLES[int(rng.choice(len(SCENE_TABLES), p=SCENE_PROBABILITIES))]
        labels.add(int(rng.choice(other["categories"], p=other["p"])))
    return si, sorted(labels)


def _size_class(cat):
    name = NAMES[cat]
    return "small" if name in SMALL else "large" if name in LARGE else "medium"


def plan_image(rng, image_size):
    """Plan one image: scene, instances in drawing order, and annotation groups.

    Args:
        rng: A ``numpy.random.Generator``.
        image_size: Image side in pixels.

    Returns:
        ``(scene index, instances, groups)`` where ``groups[g] = (class index,
        iscrowd)`` and each instance's ``group`` points into ``groups``.
    """
    s = image_size
    si, labels = _sample_labels(rng)
    if rng.random() < EMPTY_PROBABILITY:
        return si, [], []
    crowd_cat = None
    crowdable = [c for c in labels if NAMES[c] in CROWDABLE]
    if crowdable and rng.random() < CROWD_PROBABILITY:
        crowd_cat = crowdable[int(rng.integers(len(crowdable)))]
    jitter = (0.85, 1.1)
    min_px = 3.0
    outline_from = 10.0 * s / 64.0
    instances, groups = [], []
    for cat in labels:
        if cat == crowd_cat:
            g = len(groups)
            groups.append((cat, 1))
            lo, hi = SIZE_RANGES[_size_class(cat)]
            size = rng.uniform(lo, hi) * s * rng.uniform(0.45, 0.65)
            spread = rng.uniform(0.12, 0.22) * s
            mx, my = rng.uniform(0.25, 0.75, 2) * s
            for _ in range(int(rng.integers(4, 8))):
                col = np.clip(np.asarray(category_look(cat)[2]) * rng.uniform(*jitter), 0, 255)
                instances.append(
                    Instance(
                        cat,
                        np.clip(mx + rng.normal(0, spread), 0, s - 1),
                        np.clip(my + rng.normal(0, spread), 0, s - 1),
                        max(size * rng.uniform(0.85, 1.15), min_px),
                        rng.uniform(-0.26, 0.26),
                        rng.uniform(0.85, 1.18),
                        col,
                        size >= outline_from,
                        g,
                    )
                )
            continue
        if NAMES[cat] in MANY:
            n = int(rng.choice([1, 2, 3, 4], p=[0.55, 0.25, 0.12, 0.08]))
        else:
            n = int(rng.choice([1, 2, 3], p=[0.78, 0.16, 0.06]))
        placed = []
        for _ in range(n):
            g = len(groups)
            groups.append((cat, 0))
            tiny = rng.random() < TINY_PROBABILITY
            lo, hi = SIZE_RANGES["tiny" if tiny else _size_class(cat)]
            size = max(rng.uniform(lo, hi) * s, min_px)
            # Keep at least ~80 % of the object's width and height in frame.
            m = min(0.3 * size, s / 2 - 1)
            # Two same-coloured shapes on one spot would read as another shape
            # (a disc on a disc looks like a ring): keep their centres apart.
            for _ in range(4):
                cx, cy = rng.uniform(m, s - m, 2)
                if all(math.hypot(cx - x, cy - y) >= 0.6 * max(size, z) for x, y, z in placed):
                    break
            placed.append((cx, cy, size))
            col = np.clip(np.asarray(category_look(cat)[2]) * rng.uniform(*jitter), 0, 255)
            instances.append(
                Instance(
                    cat,
                    cx,
                    cy,
                    size,
                    rng.uniform(-0.26, 0.26),
                    rng.uniform(0.85, 1.18),
                    col,
                    size >= outline_from,
                    g,
                )
            )
    # Large things tend to be behind small ones, as in a photo; the jitter
    # still lets small objects be hidden now and then.
    keys = [inst.size * rng.uniform(0.7, 1.4) for inst in instances]
    order = sorted(range(len(instances)), key=lambda i: -keys[i])
    instances = [instances[i] for i in order][:MAX_INSTANCES]
    return si, instances, groups
