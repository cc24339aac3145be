"""COCO output of the synthetic dataset: segmentations, the JSON file, JPEG bytes.

Non-crowd objects get their outline polygons (clipped to the frame), crowd
groups an uncompressed RLE of their visible pixels, as COCO has them. Files
are written so that an interrupted run never leaves a partial annotation file.
"""

import io
import os

import numpy as np
from PIL import Image

from kerasmlic.data.manifest import write_json_atomic

JPEG_QUALITY = 90


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


def coco_segmentation(obj, image_size):
    """Return the COCO ``segmentation`` of a rendered object.

    Args:
        obj: An object dict from :func:`~kerasmlic.data.synth.rendering.render`.
        image_size: Image side in pixels.

    Returns:
        Uncompressed RLE of the visible mask for a crowd group, else the
        instances' polygons clipped to the image, as flat ``[x, y, ...]`` lists.
    """
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


def write_compact_json_atomic(path, obj):
    """Write compact JSON beside ``path`` under a temporary name, then rename it.

    The annotation files are compact, as COCO's are, and get the umask's
    permissions (:func:`default_file_mode`), like the images beside them.

    Args:
        path: Destination file.
        obj: A JSON-serialisable object.
    """
    write_json_atomic(path, obj, compact=True, mode=default_file_mode())


def encode_jpeg(pixels):
    """Encode a uint8 ``(H, W, 3)`` array as JPEG bytes (quality :data:`JPEG_QUALITY`).

    Args:
        pixels: uint8 RGB array.

    Returns:
        The JPEG file's bytes.
    """
    buf = io.BytesIO()
    # 4:4:4 keeps the colour of small objects; 4:2:0 would smear 5-px ones.
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()
