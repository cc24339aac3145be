"""Rendering synthetic images: compositing objects and working out what stays visible.

:func:`render` draws planned instances over a background, later ones on top,
and returns for each annotation group its visible pixels, box and outline;
an object left almost hidden loses its annotation, so the labels only name
what can be seen. :func:`generate_image` is one whole image from one random
stream; :func:`category_swatches` draws every category's look alone.
"""

import math

import numpy as np
from PIL import Image

from kerasmlic.data.synth.backgrounds import gaussian_noise, scene_background
from kerasmlic.data.synth.catalog import NAMES, SCENE_TABLES
from kerasmlic.data.synth.sampling import plan_image
from kerasmlic.data.synth.shapes import Instance, instance_polygons, rasterise

# An annotation is kept only if this share of the object's in-frame pixels, and
# at least MIN_VISIBLE_PIXELS (at 64 px, scaled with the image area), stay visible.
MIN_VISIBLE_FRACTION = 0.2
MIN_VISIBLE_PIXELS = 4


def render(instances, groups, image_size, background):
    """Draw instances over a background and work out what stays visible.

    Args:
        instances: :class:`~kerasmlic.data.synth.shapes.Instance` objects in
            drawing order (later ones on top).
        groups: ``[(class index, iscrowd), ...]`` that instances point into.
        image_size: Image side in pixels.
        background: float32 array ``(image_size, image_size, 3)``.

    Returns:
        ``(pixels, objects)``: the float32 image and, for each group that stays
        visible, a dict with ``category`` (class index), ``iscrowd``, ``bbox``
        ``[x, y, w, h]``, ``area`` (visible pixels), ``polygons`` (instance
        outlines before occlusion, image pixels) and ``mask`` (visible bool mask,
        crowd groups only).
    """
    s = image_size
    img = background.astype(np.float32, copy=True)
    owner = np.full((s, s), -1, dtype=np.int32)
    drawn = np.zeros(len(groups), dtype=np.int64)
    crowd_union = {g: np.zeros((s, s), bool) for g, (_, crowd) in enumerate(groups) if crowd}
    polygons = [[] for _ in groups]
    outline_px = max(1, round(s / 64))
    for inst in instances:
        polys = instance_polygons(inst)
        for xy, fill in polys:
            if fill:
                polygons[inst.group].append(xy)
        r = rasterise(polys, s, outline_px if inst.outline else 0)
        if r is None:
            continue
        y0, x0, fill, line = r
        h, w = fill.shape
        region = img[y0 : y0 + h, x0 : x0 + w]
        # Light falls across the object, so it is not one flat colour.
        ramp_y = np.linspace(0.08, -0.08, h, dtype=np.float32)
        ramp_x = np.linspace(-0.08, 0.08, w, dtype=np.float32) * math.sin(inst.angle * 3)
        shade = np.add.outer(ramp_y + 1.0, ramp_x)
        region += fill[..., None] * (shade[..., None] * inst.colour - region)
        cover = fill
        if line is not None:
            region += line[..., None] * (inst.colour * 0.35 - region)
            cover = fill + line
        mask = cover >= 0.5
        owner[y0 : y0 + h, x0 : x0 + w][mask] = inst.group
        if inst.group in crowd_union:
            crowd_union[inst.group][y0 : y0 + h, x0 : x0 + w] |= mask
        else:
            drawn[inst.group] += int(np.count_nonzero(mask))
    for g, union in crowd_union.items():
        drawn[g] = int(np.count_nonzero(union))
    # Visible pixel count and box of every group in one pass over the owner map.
    ys, xs = np.nonzero(owner >= 0)
    gs = owner[ys, xs]
    visible = np.bincount(gs, minlength=len(groups))
    order = np.argsort(gs, kind="stable")
    starts = np.concatenate([[0], np.cumsum(visible)[:-1]])
    present = visible > 0
    box = np.zeros((len(groups), 4), np.int64)
    if present.any():
        ys, xs, st = ys[order], xs[order], starts[present]
        box[present] = np.stack(
            [
                np.minimum.reduceat(xs, st),
                np.minimum.reduceat(ys, st),
                np.maximum.reduceat(xs, st),
                np.maximum.reduceat(ys, st),
            ],
            1,
        )
    min_px = MIN_VISIBLE_PIXELS * max(1.0, (s / 64.0) ** 2)
    objects = []
    for g, (cat, crowd) in enumerate(groups):
        if drawn[g] == 0 or visible[g] < min_px or visible[g] < MIN_VISIBLE_FRACTION * drawn[g]:
            continue
        bx0, by0, bx1, by1 = (float(v) for v in box[g])
        objects.append(
            {
                "category": cat,
                "iscrowd": crowd,
                "bbox": [bx0, by0, bx1 - bx0 + 1.0, by1 - by0 + 1.0],
                "area": float(visible[g]),
                "polygons": polygons[g],
                "mask": (owner == g) if crowd else None,
            }
        )
    return img, objects


def generate_image(rng, image_size):
    """Generate one image and its visible objects.

    Args:
        rng: A ``numpy.random.Generator``; the image depends on nothing else.
        image_size: Image side in pixels.

    Returns:
        ``(uint8 array (S, S, 3), objects, scene name)``; see ``render`` for
        the objects.
    """
    si, instances, groups = plan_image(rng, image_size)
    background = scene_background(rng, image_size, SCENE_TABLES[si]["palette"])
    pixels, objects = render(instances, groups, image_size, background)
    # A little sensor noise over everything, objects included.
    pixels += 2.5 * gaussian_noise(rng, image_size)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), objects, SCENE_TABLES[si]["name"]


def category_swatches(size=40):
    """Draw each category's look alone on a plain grey square.

    Args:
        size: Swatch side in pixels.

    Returns:
        A list of ``(PIL image, name)`` in class-index order.
    """
    out = []
    bg = np.full((size, size, 3), 128, np.float32)
    for cat in range(len(NAMES)):
        inst = Instance(cat, size / 2, size / 2, size * 0.8, outline=True, group=0)
        pixels, _ = render([inst], [(cat, 0)], size, bg)
        out.append((Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)), NAMES[cat]))
    return out
