"""Scene backgrounds of the synthetic dataset: muted, textured, with unlabelled clutter.

A background is a gradient between the scene's two palette colours, with
low-frequency blotches, one texture (stripes, tiles or grain) and a few
muted shapes, so that "any saturated pixel" is not the task.
"""

import functools
import math

import numpy as np
from PIL import Image, ImageDraw


@functools.lru_cache(maxsize=8)
def _grids(image_size):
    """Coordinate grids and a fixed noise bank for one image size."""
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    # Drawing fresh Gaussian noise per image is the slowest step; a bank
    # twice the image size, cropped at a random offset, looks the same.
    bank = np.random.default_rng(20240229).standard_normal((2 * s, 2 * s, 3), dtype=np.float32)
    return yy, xx, bank


def gaussian_noise(rng, image_size, channels=3):
    """Unit Gaussian noise (S, S, channels), cut from the fixed bank at a random offset.

    Args:
        rng: A ``numpy.random.Generator`` (draws the offset).
        image_size: Image side S in pixels.
        channels: Channels of the noise, at most 3.

    Returns:
        A float32 array ``(S, S, channels)``.
    """
    bank = _grids(image_size)[2]
    oy, ox = rng.integers(0, image_size, 2)
    return bank[oy : oy + image_size, ox : ox + image_size, :channels]


def scene_background(rng, image_size, palette):
    """A muted, textured scene background (gradient, blotches, texture, clutter).

    Args:
        rng: A ``numpy.random.Generator``.
        image_size: Image side in pixels.
        palette: float32 array ``(2, 3)``: the scene's two RGB colours.

    Returns:
        A float32 array ``(S, S, 3)`` in 0..255.
    """
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
        img += 9.0 * gaussian_noise(rng, s, 1)
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
