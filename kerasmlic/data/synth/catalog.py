"""What the synthetic dataset draws: category looks, object sizes, and the scenes.

Every one of the 80 COCO categories is drawn as its own look (one of
:data:`SHAPES` in one of :data:`COLOURS`); scenes (street, kitchen, farm, ...)
name the categories that co-occur in an image, with long-tailed weights as
COCO's are. The sampler (:mod:`kerasmlic.data.synth.sampling`) reads these
tables; nothing here draws random numbers.
"""

import re

import numpy as np

from kerasmlic.categories import COCO_CATEGORIES

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
CATEGORY_INDEX = {name: i for i, name in enumerate(NAMES)}
"""Category name -> contiguous class index (COCO category-id order)."""

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
    return [CATEGORY_INDEX[n.strip()] for n, _ in pairs], [float(w) for _, w in pairs]


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


SCENE_TABLES = _scene_tables()
"""The scenes as dicts of arrays: ``name``, ``weight``, ``person_p``, ``palette``,
``categories`` (class indices) and ``p`` (their normalised weights)."""
SCENE_PROBABILITIES = np.asarray([s["weight"] for s in SCENE_TABLES])
SCENE_PROBABILITIES = SCENE_PROBABILITIES / SCENE_PROBABILITIES.sum()
"""Prior probability of each scene, in :data:`SCENE_TABLES` order."""


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
    return {s["name"]: sorted(int(c) for c in s["categories"]) for s in SCENE_TABLES}
