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

Modules, in the order an image is made: :mod:`~kerasmlic.data.synth.catalog`
(category looks, scenes), :mod:`~kerasmlic.data.synth.shapes` (outlines,
rasterisation), :mod:`~kerasmlic.data.synth.backgrounds`,
:mod:`~kerasmlic.data.synth.sampling` (scene, labels, object plan),
:mod:`~kerasmlic.data.synth.rendering` (compositing, visibility),
:mod:`~kerasmlic.data.synth.coco_output` (segmentations, files) and
:mod:`~kerasmlic.data.synth.dataset` (:func:`synthesize`). The names below
are re-exported so ``from kerasmlic.data.synth import synthesize`` keeps working.
"""

from kerasmlic.data.synth.backgrounds import gaussian_noise, scene_background
from kerasmlic.data.synth.catalog import (
    CATEGORY_INDEX,
    COLOURS,
    CROWDABLE,
    LARGE,
    MANY,
    NAMES,
    SCENE_PROBABILITIES,
    SCENE_TABLES,
    SCENES,
    SHAPES,
    SMALL,
    category_look,
    scene_categories,
)
from kerasmlic.data.synth.coco_output import (
    JPEG_QUALITY,
    clip_polygon,
    coco_segmentation,
    default_file_mode,
    encode_jpeg,
    mask_to_rle,
    write_compact_json_atomic,
)
from kerasmlic.data.synth.dataset import (
    MAX_IMAGE_SIZE,
    MAX_IMAGES_PER_SPLIT,
    MIN_IMAGE_SIZE,
    SPLITS,
    synthesize,
)
from kerasmlic.data.synth.rendering import (
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    category_swatches,
    generate_image,
    render,
)
from kerasmlic.data.synth.sampling import (
    CROWD_PROBABILITY,
    EMPTY_PROBABILITY,
    EXTRA_LABELS_MEAN,
    MAX_INSTANCES,
    OUT_OF_SCENE_PROBABILITY,
    SIZE_RANGES,
    TINY_PROBABILITY,
    plan_image,
)
from kerasmlic.data.synth.shapes import SHAPE_POLYGONS, Instance, instance_polygons, rasterise

__all__ = [
    "CATEGORY_INDEX",
    "COLOURS",
    "CROWDABLE",
    "CROWD_PROBABILITY",
    "EMPTY_PROBABILITY",
    "EXTRA_LABELS_MEAN",
    "JPEG_QUALITY",
    "LARGE",
    "MANY",
    "MAX_IMAGES_PER_SPLIT",
    "MAX_IMAGE_SIZE",
    "MAX_INSTANCES",
    "MIN_IMAGE_SIZE",
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_PIXELS",
    "NAMES",
    "OUT_OF_SCENE_PROBABILITY",
    "SCENES",
    "SCENE_PROBABILITIES",
    "SCENE_TABLES",
    "SHAPES",
    "SHAPE_POLYGONS",
    "SIZE_RANGES",
    "SMALL",
    "SPLITS",
    "TINY_PROBABILITY",
    "Instance",
    "category_look",
    "category_swatches",
    "clip_polygon",
    "coco_segmentation",
    "default_file_mode",
    "encode_jpeg",
    "gaussian_noise",
    "generate_image",
    "instance_polygons",
    "mask_to_rle",
    "plan_image",
    "rasterise",
    "render",
    "scene_background",
    "scene_categories",
    "synthesize",
    "write_compact_json_atomic",
]
