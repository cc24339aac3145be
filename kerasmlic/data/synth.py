"""The built-in COCO-format dataset that stands in for COCO on machines without it.

Every one of the 80 COCO categories is drawn as its own look (one of 10 shapes in
one of 8 colours) on a textured scene background. Labels co-occur the way COCO's
do: an image samples a scene (street, kitchen, farm, ...) and then categories
from that scene, plus ``person`` often and an out-of-scene label now and then.
Objects vary in size, overlap (later objects occlude earlier ones) and a share
are drawn tiny; an object that ends up almost hidden loses its annotation, so
the labels only name what can be seen.

Output layout (the same as COCO's)::

    OUT/annotations/instances_train.json
    OUT/annotations/instances_val.json
    OUT/train/000000000001.jpg ...
    OUT/val/000000004001.jpg ...
    OUT/contact_sheet.png

Every image is generated from its own random stream keyed by (seed, split,
index), so a seed gives byte-identical files and a val image does not depend on
how many train images were asked for.
"""

import functools
import io
import json
import math
import os
import re
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from kerasmlic.categories import COCO_CATEGORIES, coco_categories_json
from kerasmlic.errors import UsageError

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_IMAGES_PER_SPLIT = 1_000_000
JPEG_QUALITY = 90
SPLITS = ("train", "val", "test")

# An annotation is kept only if this share of the object's in-frame pixels, and
# at least MIN_VISIBLE_PIXELS (at 64 px, scaled with the image area), stay visible.
MIN_VISIBLE_FRACTION = 0.2
MIN_VISIBLE_PIXELS = 4

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

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "plus", "cross", "star", "frame", "bars")

# Saturated and far apart in hue, while scene backgrounds stay muted.
COLOURS = (
    ("red", (225, 35, 35)),
    ("orange", (255, 140, 0)),
    ("yellow", (245, 225, 30)),
    ("green", (40, 190, 50)),
    ("cyan", (30, 210, 220)),
    ("blue", (35, 70, 235)),
    ("magenta", (215, 40, 215)),
    ("white", (245, 245, 245)),
)

NAMES = tuple(name for _, name, _ in COCO_CATEGORIES)
_INDEX = {name: i for i, name in enumerate(NAMES)}

SMALL = frozenset(
    "traffic light;fire hydrant;parking meter;bird;tie;handbag;frisbee;sports ball;kite;"
    "baseball bat;baseball glove;bottle;wine glass;cup;fork;knife;spoon;banana;apple;orange;"
    "carrot;donut;mouse;remote;cell phone;book;clock;scissors;hair drier;toothbrush".split(";")
)
LARGE = frozenset(
    "airplane;bus;train;truck;boat;horse;cow;elephant;bear;zebra;giraffe;pizza;couch;bed;"
    "dining table;toilet;tv;oven;refrigerator".split(";")
)
# Categories that often come several to an image in COCO.
MANY = frozenset(
    "person;car;boat;bird;sheep;cow;zebra;bottle;cup;wine glass;banana;apple;orange;carrot;"
    "donut;chair;book;kite;umbrella".split(";")
)
CROWDABLE = frozenset("person;car;boat;bird;sheep;cow;bottle;banana;donut;book;kite".split(";"))

# (name, prior weight, P(person), background palette (two muted RGB colours),
#  category weights). Weights are long-tailed within a scene, as COCO's are.
SCENES = (
    (
        "street",
        0.20,
        0.55,
        ((112, 112, 118), (70, 72, 82)),
        "car:10 truck:4 bus:3 bicycle:3 motorcycle:3 traffic light:5 fire hydrant:1.5 "
        "stop sign:1.5 parking meter:1 bench:2 backpack:2 handbag:2.5 umbrella:2.5 dog:1 bird:1",
    ),
    (
        "kitchen",
        0.10,
        0.30,
        ((182, 166, 140), (120, 100, 80)),
        "bottle:4 cup:4 bowl:4 sink:2.5 oven:2 refrigerator:2 microwave:1.5 knife:2 spoon:2 "
        "fork:1.5 wine glass:1.5 chair:1.5 banana:1 apple:1 orange:1 vase:1 clock:1 "
        "potted plant:1 dining table:1 toaster:0.3",
    ),
    (
        "dining",
        0.10,
        0.40,
        ((150, 112, 82), (92, 66, 50)),
        "dining table:6 cup:4 chair:4 bowl:3 pizza:2.5 fork:2.5 cake:2 knife:2 wine glass:2 "
        "bottle:2 sandwich:1.5 donut:1.5 broccoli:1.5 carrot:1.5 spoon:1.5 hot dog:1",
    ),
    (
        "living room",
        0.10,
        0.35,
        ((160, 150, 122), (100, 96, 80)),
        "chair:4 book:4 couch:3 tv:3 potted plant:3 clock:2 vase:2 remote:2 cat:1.5 "
        "dining table:1.5 dog:1 teddy bear:1 laptop:1",
    ),
    (
        "office",
        0.07,
        0.45,
        ((150, 156, 166), (90, 96, 112)),
        "laptop:4 keyboard:3 mouse:3 tv:3 book:3 chair:3 cell phone:2.5 cup:2 bottle:1.5 "
        "clock:1 tie:1 scissors:0.5",
    ),
    (
        "bathroom and bedroom",
        0.07,
        0.20,
        ((190, 195, 196), (128, 140, 150)),
        "bed:4 toilet:3 sink:3 teddy bear:1.5 cat:1.5 bottle:1.5 book:1.5 toothbrush:1 cup:1 "
        "clock:1 remote:1 potted plant:1 vase:0.5 hair drier:0.3",
    ),
    (
        "animals",
        0.10,
        0.30,
        ((108, 130, 80), (150, 136, 96)),
        "cow:3 horse:3 sheep:2.5 bird:2.5 elephant:2.5 giraffe:2.5 zebra:2 bear:1.5 dog:1.5 "
        "truck:0.7 bench:0.5",
    ),
    (
        "sports field",
        0.10,
        0.90,
        ((92, 130, 82), (160, 142, 112)),
        "sports ball:3 tennis racket:3 baseball bat:2.5 baseball glove:2.5 skateboard:2.5 "
        "frisbee:2 kite:2 skis:2 snowboard:1.5 backpack:1 bench:1 bottle:0.5 chair:0.5",
    ),
    (
        "beach and water",
        0.08,
        0.55,
        ((120, 150, 180), (200, 186, 150)),
        "boat:4 surfboard:3 umbrella:2.5 kite:2 bird:2 bench:1 dog:1 backpack:0.5 chair:0.5 "
        "handbag:0.5",
    ),
    (
        "travel",
        0.08,
        0.60,
        ((160, 176, 196), (100, 100, 106)),
        "airplane:3 train:3 suitcase:2.5 backpack:2 handbag:2 bench:1.5 clock:1 car:1 truck:1 "
        "cell phone:1 tie:1",
    ),
)


def _parse_weights(spec):
    """Turn ``"car:10 traffic light:5"`` into ``([index, ...], [weight, ...])``."""
    pairs = re.findall(r"([a-z][a-z ]*?):([0-9.]+)", spec)
    return [_INDEX[n.strip()] for n, _ in pairs], [float(w) for _, w in pairs]


def _scene_tables():
    """Return the scenes as arrays the sampler uses."""
    tables = []
    for name, weight, person_p, palette, spec in SCENES:
        idx, w = _parse_weights(spec)
        w = np.asarray(w)
        tables.append(
            {
                "name": name,
                "weight": weight,
                "person_p": person_p,
                "palette": np.asarray(palette, dtype=np.float32),
                "categories": np.asarray(idx),
                "p": w / w.sum(),
            }
        )
    return tables


_SCENES = _scene_tables()
_SCENE_P = np.asarray([s["weight"] for s in _SCENES])
_SCENE_P = _SCENE_P / _SCENE_P.sum()


def category_look(index):
    """Return how a category is drawn.

    Neighbouring category indices get different shapes and colours, and every
    (shape, colour) pair is used once.

    Args:
        index: Contiguous class index, 0..79 (COCO category-id order).

    Returns:
        ``(shape name, colour name, (r, g, b))``.
    """
    shape = index % 10
    colour = (index // 10 * 3 + index) % 8
    return SHAPES[shape], COLOURS[colour][0], COLOURS[colour][1]


def scene_categories():
    """Return each scene's category indices.

    Returns:
        A dict ``{scene name: sorted list of class indices}``.
    """
    return {s["name"]: sorted(int(c) for c in s["categories"]) for s in _SCENES}


# --------------------------------------------------------------------------- shapes


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


class _Instance:
    """One drawn object: what it is, where, and which annotation it feeds."""

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


def _instance_polygons(inst):
    """Return ``[(xy array (n, 2) in image pixels, fill), ...]`` for an instance."""
    verts, splits, fills = _SHAPE_ARRAYS[category_look(inst.cat)[0]]
    c, s = math.cos(inst.angle), math.sin(inst.angle)
    half = inst.size / 2.0
    # Stretch in x, rotate, scale, move: one 2x2 matrix for all vertices.
    m = half * np.array([[c * inst.aspect, s * inst.aspect], [-s, c]])
    xy = verts @ m + (inst.cx, inst.cy)
    return list(zip(np.split(xy, splits), fills, strict=True))


def _rasterise(polys, image_size, outline_px):
    """Anti-aliased fill and outline coverage of polygons, cropped to the image.

    Args:
        polys: Output of ``_instance_polygons``.
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


# --------------------------------------------------------------------------- backgrounds


@functools.lru_cache(maxsize=8)
def _grids(image_size):
    """Coordinate grids and a fixed noise bank for one image size."""
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    # Drawing fresh Gaussian noise per image is the slowest step; a bank
    # twice the image size, cropped at a random offset, looks the same.
    bank = np.random.default_rng(20240229).standard_normal((2 * s, 2 * s, 3), dtype=np.float32)
    return yy, xx, bank


def _noise(rng, image_size, channels=3):
    """Unit Gaussian noise (S, S, channels), cut from the fixed bank at a random offset."""
    bank = _grids(image_size)[2]
    oy, ox = rng.integers(0, image_size, 2)
    return bank[oy : oy + image_size, ox : ox + image_size, :channels]


def _background(rng, image_size, palette):
    """A muted, textured scene background (gradient, blotches, texture, clutter)."""
    s = image_size
    yy, xx, _ = _grids(s)
    c0 = palette[0] + rng.normal(0, 12, 3).astype(np.float32)
    c1 = palette[1] + rng.normal(0, 12, 3).astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = np.float32(math.cos(a)) * xx + np.float32(math.sin(a)) * yy
    t -= t.min()
    t *= np.float32(1.0 / max(float(t.max()), 1e-6))
    img = c0 + t[..., None] * (c1 - c0)
    # Low-frequency blotches: a coarse random grid, smoothly upsampled. Mostly
    # brightness, with a little tint, so backgrounds stay muted.
    g = int(rng.integers(3, 7))
    coarse = rng.normal(0, 14, (g, g, 1)) + rng.normal(0, 6, (g, g, 3))
    coarse = np.clip(128 + coarse, 0, 255).astype(np.uint8)
    blotch = Image.fromarray(coarse).resize((s, s), Image.BICUBIC)
    img += np.asarray(blotch, np.float32) - np.float32(128.0)
    kind = int(rng.integers(0, 4))
    if kind == 1:  # stripes (walls, fields, water)
        period = rng.uniform(0.08, 0.25) * s
        b = rng.uniform(0, math.pi)
        phase = (math.cos(b) * xx + math.sin(b) * yy) * np.float32(2 * math.pi / period)
        img += (9.0 * np.sin(phase))[..., None]
    elif kind == 2:  # tiles (floors, walls)
        cell = max(int(rng.uniform(0.1, 0.25) * s), 2)
        tiles = ((yy // cell + xx // cell) % 2) * 16.0 - 8.0
        img += tiles[..., None]
    elif kind == 3:  # grain (grass, sand, gravel)
        img += 9.0 * _noise(rng, s, 1)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # Unlabelled clutter in muted tones, so "any object pixel" is not the task.
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    mean = (c0 + c1) / 2
    for _ in range(int(rng.integers(0, 4))):
        tone = np.clip(mean + rng.normal(0, 30) + rng.normal(0, 7, 3), 0, 255).astype(int)
        w = rng.uniform(0.1, 0.6) * s
        h = rng.uniform(0.1, 0.6) * s
        x = rng.uniform(-0.2, 1.0) * s
        y = rng.uniform(-0.2, 1.0) * s
        box = [x, y, x + w, y + h]
        if rng.random() < 0.5:
            draw.rectangle(box, fill=tuple(tone))
        else:
            draw.ellipse(box, fill=tuple(tone))
    return np.asarray(pil, np.float32)


# --------------------------------------------------------------------------- sampling


def _sample_labels(rng):
    """Sample a scene and the distinct labels of one image.

    Returns:
        ``(scene index, sorted list of class indices)``.
    """
    si = int(rng.choice(len(_SCENES), p=_SCENE_P))
    scene = _SCENES[si]
    labels = set()
    if rng.random() < scene["person_p"]:
        labels.add(_INDEX["person"])
    k = min(1 + int(rng.poisson(EXTRA_LABELS_MEAN)), len(scene["categories"]))
    labels.update(
        int(c) for c in rng.choice(scene["categories"], size=k, replace=False, p=scene["p"])
    )
    if rng.random() < OUT_OF_SCENE_PROBABILITY:
        other = _SCENES[int(rng.choice(len(_SCENES), p=_SCENE_P))]
        labels.add(int(rng.choice(other["categories"], p=other["p"])))
    return si, sorted(labels)


def _size_class(cat):
    name = NAMES[cat]
    return "small" if name in SMALL else "large" if name in LARGE else "medium"


def _plan_image(rng, image_size):
    """Plan one image: scene, instances in drawing order, and annotation groups.

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
                    _Instance(
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
                _Instance(
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


# --------------------------------------------------------------------------- rendering


def render(instances, groups, image_size, background):
    """Draw instances over a background and work out what stays visible.

    Args:
        instances: ``_Instance`` objects in drawing order (later ones on top).
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
        polys = _instance_polygons(inst)
        for xy, fill in polys:
            if fill:
                polygons[inst.group].append(xy)
        r = _rasterise(polys, s, outline_px if inst.outline else 0)
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
    si, instances, groups = _plan_image(rng, image_size)
    background = _background(rng, image_size, _SCENES[si]["palette"])
    pixels, objects = render(instances, groups, image_size, background)
    # A little sensor noise over everything, objects included.
    pixels += 2.5 * _noise(rng, image_size)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), objects, _SCENES[si]["name"]


# --------------------------------------------------------------------------- COCO output


def mask_to_rle(mask):
    """Encode a bool mask as COCO's uncompressed RLE (column-major, zeros first).

    Args:
        mask: bool array ``(height, width)``.

    Returns:
        ``{"counts": [...], "size": [height, width]}``.
    """
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def clip_polygon(xy, width, height):
    """Clip a polygon to the image rectangle (Sutherland-Hodgman).

    Args:
        xy: Vertices, array-like ``(n, 2)`` of ``(x, y)``.
        width: Image width.
        height: Image height.

    Returns:
        The clipped vertices as a list of ``(x, y)``; empty if nothing is inside.
    """
    pts = [(float(x), float(y)) for x, y in xy]
    # Each edge of the frame as (axis, bound, side): a point is kept when
    # side * (point[axis] - bound) >= 0.
    for axis, bound, side in ((0, 0.0, 1), (0, width, -1), (1, 0.0, 1), (1, height, -1)):
        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cur_in = side * (cur[axis] - bound) >= 0
            if cur_in != (side * (prev[axis] - bound) >= 0):
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                out.append(cur)
        pts = out
        if not pts:
            break
    return pts


def _segmentation(obj, image_size):
    if obj["iscrowd"]:
        return mask_to_rle(obj["mask"])
    polys = []
    for xy in obj["polygons"]:
        clipped = clip_polygon(xy, image_size, image_size)
        if len(clipped) >= 3:
            polys.append([round(v, 2) for point in clipped for v in point])
    return polys


def default_file_mode():
    """Return the mode a plain ``open(path, "w")`` would give a new file.

    ``tempfile.mkstemp`` makes files readable by their owner only; renamed into
    place they should look like any other output file.

    Returns:
        ``0o666`` less the process umask.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_json_atomic(path, obj):
    """Write compact JSON to a temporary file beside ``path``, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, separators=(",", ":"))
            f.write("\n")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _encode_jpeg(pixels):
    buf = io.BytesIO()
    # 4:4:4 keeps the colour of small objects; 4:2:0 would smear 5-px ones.
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


_FILE_RE = re.compile(r"^\d{12}\.jpg$")
_OWNED = {"annotations", "train", "val", "test", "contact_sheet.png"}


def _check_args(out_dir, train, val, image_size, seed, test=0):
    numbers = (("train", train), ("val", val), ("test", test))
    for name, v in (*numbers, ("image_size", image_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise UsageError(f"{name} must be an integer, got {v!r}")
    for name, v in numbers:
        if v < 0 or v > MAX_IMAGES_PER_SPLIT:
            raise UsageError(f"--{name} must be between 0 and {MAX_IMAGES_PER_SPLIT}, got {v}")
    if train + val + test == 0:
        raise UsageError("--train, --val and --test are all 0: nothing to generate")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UsageError(
            f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} px, "
            f"got {image_size}"
        )
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir!r} exists and is not a folder")
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - _OWNED)
        if foreign:
            raise UsageError(
                f"{out_dir!r} is not empty and not a synth output "
                f"(found {foreign[0]!r}); pick a new folder"
            )


def _split_images(
    out_dir, split, split_code, n, first_id, first_ann_id, image_size, seed, progress, keep
):
    """Generate one split's images and its COCO dict.

    Args:
        out_dir: Output folder.
        split: Split name, the image folder's name.
        split_code: Number that keys this split's random streams.
        n: Number of images.
        first_id: Image id of the first image (ids are unique across splits).
        first_ann_id: Annotation id of the first annotation.
        image_size: Image side in pixels.
        seed: Random seed.
        progress: Show a progress bar.
        keep: How many of the first images to return decoded for the contact sheet.

    Returns:
        ``(coco dict, samples)`` with samples ``[(PIL image, objects, scene)]``.
    """
    from tqdm import tqdm

    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations, samples = [], [], []
    ann_id = first_ann_id
    names = set()
    for i in tqdm(range(n), desc=f"synth {split}", unit="img", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, split_code, i])
        pixels, objects, scene = generate_image(rng, image_size)
        image_id = first_id + i
        file_name = f"{image_id:012d}.jpg"
        names.add(file_name)
        data = _encode_jpeg(pixels)
        # Images go straight to their names: the annotations file, renamed
        # into place last, is what marks a split as complete.
        with open(os.path.join(img_dir, file_name), "wb") as f:
            f.write(data)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image_size,
                "width": image_size,
                "license": 1,
                "scene": scene,
            }
        )
        for obj in objects:
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORIES[obj["category"]][0],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "segmentation": _segmentation(obj, image_size),
                    "iscrowd": obj["iscrowd"],
                }
            )
            ann_id += 1
        if len(samples) < keep:
            samples.append((Image.open(io.BytesIO(data)).convert("RGB"), objects, scene))
    # Files a bigger earlier run left behind would otherwise look like images.
    for f in os.listdir(img_dir):
        if _FILE_RE.match(f) and f not in names:
            os.remove(os.path.join(img_dir, f))
    coco = {
        "info": {
            "description": (
                f"kerasmlic synthetic COCO-format dataset ({split}, seed {seed}, {image_size} px)"
            ),
            "url": "",
            "version": "1.0",
            "year": 2025,
            "contributor": "kerasmlic synth",
            "date_created": "",
        },
        "licenses": [
            {
                "id": 1,
                "name": "CC0 1.0 (synthetic)",
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories_json(),
    }
    return coco, samples


def _split_summary(coco, ann_path, img_dir):
    per_image = {}
    crowd = 0
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], set()).add(a["category_id"])
        crowd += a["iscrowd"]
    n = len(coco["images"])
    return {
        "images": n,
        "annotations": len(coco["annotations"]),
        "crowd_annotations": crowd,
        "empty_images": n - len(per_image),
        "mean_labels_per_image": (sum(len(v) for v in per_image.values()) / n) if n else 0.0,
        "annotations_file": ann_path,
        "images_dir": img_dir,
    }


def synthesize(
    out_dir,
    *,
    train=4000,
    val=1000,
    test=0,
    image_size=64,
    seed=0,
    contact_sheet=True,
    progress=True,
):
    """Write the built-in synthetic dataset in COCO layout.

    Args:
        out_dir: Output folder (created; may already hold an earlier synth run,
            which is overwritten).
        train: Number of train images.
        val: Number of val images.
        test: Number of test images (0: no test split). Final figures are
            reported on it while val serves model selection. Each split
            draws from its own random streams, so adding a test split leaves
            train and val byte-identical.
        image_size: Side of the square images in pixels, 32..1024.
        seed: Random seed; the same seed gives byte-identical files.
        contact_sheet: Also write ``OUT/contact_sheet.png`` (sample train images
            with their labels, and the look of every category).
        progress: Show a progress bar on stderr.

    Returns:
        A summary dict: ``out_dir``, ``image_size``, ``seed``, per split
        (``splits[name]``) the image, annotation, crowd and empty-image counts,
        ``mean_labels_per_image`` and paths, the overall
        ``mean_labels_per_image``, ``contact_sheet`` (path or None) and
        ``elapsed_s``; flat aliases ``num_train``, ``num_val``, ``num_test``,
        ``mean_labels_train``, ``mean_labels_val`` and ``elapsed``.

    Raises:
        UsageError: Bad sizes, counts or seed, or an output folder that holds
            something else.
    """
    start = time.perf_counter()
    _check_args(out_dir, train, val, image_size, seed, test)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    counts = {"train": int(train), "val": int(val), "test": int(test)}
    summary = {"out_dir": out_dir, "image_size": int(image_size), "seed": int(seed), "splits": {}}
    samples, sample_split = [], None
    first_id, first_ann = 1, 1
    for code, split in enumerate(SPLITS):
        if split == "test" and not counts[split]:
            _remove_split(out_dir, split)  # a test split of an earlier run is not this one
            continue
        coco, got = _split_images(
            out_dir,
            split,
            code,
            counts[split],
            first_id,
            first_ann,
            int(image_size),
            int(seed),
            progress,
            keep=24 if (contact_sheet and not samples) else 0,
        )
        if got and not samples:
            samples, sample_split = got, split
        ann_path = os.path.join(out_dir, "annotations", f"instances_{split}.json")
        _write_json_atomic(ann_path, coco)
        summary["splits"][split] = _split_summary(coco, ann_path, os.path.join(out_dir, split))
        first_id += counts[split]
        first_ann += len(coco["annotations"])
    total = sum(s["images"] for s in summary["splits"].values())
    summary["mean_labels_per_image"] = (
        sum(s["mean_labels_per_image"] * s["images"] for s in summary["splits"].values()) / total
    )
    summary["contact_sheet"] = None
    path = os.path.join(out_dir, "contact_sheet.png")
    if contact_sheet:
        from kerasmlic.data.contact_sheet import write_contact_sheet

        title = f"kerasmlic synth: sample {sample_split} images and their labels (seed {seed})"
        write_contact_sheet(path, _sheet_samples(samples), legend=category_swatches(), title=title)
        summary["contact_sheet"] = path
    elif os.path.exists(path):
        os.remove(path)  # a sheet from an earlier run would show other images
    summary["elapsed_s"] = round(time.perf_counter() - start, 3)
    # Flat aliases, for callers that print a one-line summary.
    summary["num_train"] = summary["splits"]["train"]["images"]
    summary["num_val"] = summary["splits"]["val"]["images"]
    summary["num_test"] = summary["splits"].get("test", {}).get("images", 0)
    summary["mean_labels_train"] = summary["splits"]["train"]["mean_labels_per_image"]
    summary["mean_labels_val"] = summary["splits"]["val"]["mean_labels_per_image"]
    summary["elapsed"] = summary["elapsed_s"]
    return summary


def _remove_split(out_dir, split):
    """Delete a split's annotation file and images left by an earlier run."""
    ann = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    if os.path.exists(ann):
        os.remove(ann)  # first: without it the folder no longer counts as a split
    img_dir = os.path.join(out_dir, split)
    if os.path.isdir(img_dir):
        for f in os.listdir(img_dir):
            if _FILE_RE.match(f):
                os.remove(os.path.join(img_dir, f))
        if not os.listdir(img_dir):
            os.rmdir(img_dir)


def _sheet_samples(samples):
    """Turn generated samples into ``(image, [label lines], caption)`` for the sheet."""
    out = []
    for image, objects, scene in samples:
        per_cat = {}
        for obj in objects:
            n, crowd = per_cat.get(obj["category"], (0, False))
            per_cat[obj["category"]] = (n + 1, crowd or bool(obj["iscrowd"]))
        lines = []
        for cat in sorted(per_cat):
            n, crowd = per_cat[cat]
            lines.append(NAMES[cat] + (f" x{n}" if n > 1 else "") + (" (crowd)" if crowd else ""))
        out.append((image, lines or ["(no labels)"], scene))
    return out


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
        inst = _Instance(cat, size / 2, size / 2, size * 0.8, outline=True, group=0)
        pixels, _ = render([inst], [(cat, 0)], size, bg)
        out.append((Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)), NAMES[cat]))
    return out
