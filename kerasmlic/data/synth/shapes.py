"""Shapes of the synthetic dataset: the ten outlines, placed objects, rasterisation.

Each shape is a set of polygons in unit coordinates; an :class:`Instance`
places one category's shape in an image (centre, size, rotation, aspect,
colour), :func:`instance_polygons` turns it into image-pixel polygons and
:func:`rasterise` into anti-aliased coverage patches that
:func:`kerasmlic.data.synth.rendering.render` composites.
"""

import math

import numpy as np
from PIL import Image, ImageDraw

from kerasmlic.data.synth.catalog import category_look


def _regular(n, r, phase=-math.pi / 2):
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points, outer, inner):
    verts = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        verts.append((r * math.cos(a), r * math.sin(a)))
    return verts


def _box(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _plus(arm, half):
    a, h = arm, half
    return [
        (-h, -a),
        (h, -a),
        (h, -h),
        (a, -h),
        (a, h),
        (h, h),
        (h, a),
        (-h, a),
        (-h, h),
        (-a, h),
        (-a, -h),
        (-h, -h),
    ]


def _rotated(poly, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in poly]


# Each shape: polygons in unit coordinates ([-1, 1], y down) with fill 1 (paint)
# or 0 (cut a hole). All are mirror-symmetric left/right, so a horizontal flip
# never turns one category into another.
SHAPE_POLYGONS = {
    "disc": [(_regular(20, 0.95), 1)],
    "square": [(_box(-0.8, -0.8, 0.8, 0.8), 1)],
    "triangle": [([(0.0, -0.95), (0.95, 0.75), (-0.95, 0.75)], 1)],
    "diamond": [([(0.0, -1.0), (0.9, 0.0), (0.0, 1.0), (-0.9, 0.0)], 1)],
    "ring": [(_regular(20, 0.95), 1), (_regular(20, 0.5), 0)],
    "plus": [(_plus(0.95, 0.32), 1)],
    "cross": [(_rotated(_plus(1.1, 0.3), math.pi / 4), 1)],
    "star": [(_star(5, 1.0, 0.45), 1)],
    "frame": [(_box(-0.85, -0.85, 0.85, 0.85), 1), (_box(-0.42, -0.42, 0.42, 0.42), 0)],
    "bars": [
        (_box(-0.9, -0.9, 0.9, -0.45), 1),
        (_box(-0.9, -0.22, 0.9, 0.22), 1),
        (_box(-0.9, 0.45, 0.9, 0.9), 1),
    ],
}


# The same shapes as arrays: all vertices stacked, with where each polygon ends.
_SHAPE_ARRAYS = {
    name: (
        np.concatenate([np.asarray(p, np.float64) for p, _ in polys]),
        np.cumsum([len(p) for p, _ in polys])[:-1],
        tuple(f for _, f in polys),
    )
    for name, polys in SHAPE_POLYGONS.items()
}


class Instance:
    """One drawn object: what it is, where, and which annotation it feeds.

    Args:
        cat: Contiguous class index; its look comes from :func:`category_look`.
        cx: Centre x in image pixels.
        cy: Centre y in image pixels.
        size: Side of the shape's ``[-1, 1]`` box in pixels.
        angle: Rotation in radians.
        aspect: Horizontal stretch (1 keeps the shape's proportions).
        colour: ``(r, g, b)`` fill; None for the category's own colour.
        outline: Draw a dark outline around the shape.
        group: Index of the annotation it feeds (into the ``groups`` of
            :func:`~kerasmlic.data.synth.rendering.render`).
    """

    __slots__ = ("cat", "cx", "cy", "size", "angle", "aspect", "colour", "outline", "group")

    def __init__(
        self, cat, cx, cy, size, angle=0.0, aspect=1.0, colour=None, outline=True, group=0
    ):
        self.cat = cat
        self.cx, self.cy, self.size = float(cx), float(cy), float(size)
        self.angle, self.aspect = float(angle), float(aspect)
        self.colour = np.asarray(category_look(cat)[2] if colour is None else colour, np.float32)
        self.outline = outline
        self.group = group


def instance_polygons(inst):
    """Return an instance's polygons in image pixels.

    Args:
        inst: An :class:`Instance`.

    Returns:
        ``[(xy array (n, 2), fill), ...]``; fill 1 paints, 0 cuts a hole.
    """
    verts, splits, fills = _SHAPE_ARRAYS[category_look(inst.cat)[0]]
    c, s = math.cos(inst.angle), math.sin(inst.angle)
    half = inst.size / 2.0
    # Stretch in x, rotate, scale, move: one 2x2 matrix for all vertices.
    m = half * np.array([[c * inst.aspect, s * inst.aspect], [-s, c]])
    xy = verts @ m + (inst.cx, inst.cy)
    return list(zip(np.split(xy, splits), fills, strict=True))


def rasterise(polys, image_size, outline_px):
    """Anti-aliased fill and outline coverage of polygons, cropped to the image.

    Args:
        polys: Output of :func:`instance_polygons`.
        image_size: Image side in pixels.
        outline_px: Outline width in pixels, 0 for none.

    Returns:
        ``(y0, x0, fill, outline)``: float32 coverage patches in [0, 1] (the
        outline one None without an outline; fill is cleared under the
        outline), or None when the object lies outside the image.
    """
    lo = polys[0][0].min(axis=0)
    hi = polys[0][0].max(axis=0)
    for xy, fill in polys[1:]:
        if fill:
            lo = np.minimum(lo, xy.min(axis=0))
            hi = np.maximum(hi, xy.max(axis=0))
    x0 = max(int(math.floor(lo[0])) - 1, 0)
    y0 = max(int(math.floor(lo[1])) - 1, 0)
    x1 = min(int(math.ceil(hi[0])) + 2, image_size)
    y1 = min(int(math.ceil(hi[1])) + 2, image_size)
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    # Supersampling keeps small shapes recognisable instead of jagged blobs.
    k = 4 if max(w, h) < 24 else 2
    # Fill coverage in the red channel, outline coverage in the green one.
    canvas = Image.new("RGB", (w * k, h * k))
    draw = ImageDraw.Draw(canvas)
    width = outline_px * k
    for xy, fill in polys:
        pts = ((xy - (x0, y0)) * k).ravel().tolist()
        if outline_px:
            draw.polygon(
                pts, fill=(255, 0, 0) if fill else (0, 0, 0), outline=(0, 255, 0), width=width
            )
        else:
            draw.polygon(pts, fill=(255, 0, 0) if fill else (0, 0, 0))
    cover = np.asarray(canvas.reduce(k), np.float32)[..., :2] * (1.0 / 255.0)
    return y0, x0, cover[..., 0], (cover[..., 1] if outline_px else None)
