"""Check image files and produce the JPEG bytes that go into a shard.

Policy (each outcome is either JPEG bytes for the shard or an
:class:`ImageSkip` with a one-line reason):

* A valid RGB JPEG is passed through byte for byte (it is fully decoded once,
  at reduced DCT scale, to catch truncation).
* A grayscale, CMYK or other non-RGB JPEG is converted to RGB and re-encoded.
* A valid image of another format behind a ``.jpg`` name (PNG, GIF, BMP, WebP,
  TIFF...) is **converted** to an RGB JPEG rather than skipped: the pixels are
  fine, only the name is wrong, and dropping them would lose a valid image.
  Transparent pixels are composited on white.
* ``max_side`` downscales an image whose longer side exceeds it (aspect kept).
* Skipped: a missing or unreadable file, a zero-byte file, bytes no decoder
  recognises, a truncated or corrupt image, a side of 0 or above
  :data:`MAX_SIDE_LIMIT` pixels (declared or real), and declared dimensions
  whose aspect ratio disagrees with the real one by more than
  :data:`ASPECT_TOLERANCE` (the same ratio with width and height swapped is
  accepted: EXIF-rotated files). A uniform rescale is accepted — users often
  store COCO pre-resized — because label areas are fractions of the image.

EXIF orientation is ignored, as ``tf.io.decode_jpeg`` ignores it, so pass-through
and re-encoded images are stored the same way.

:func:`resolve_image_path` keeps every read inside the images folder.
"""

import io
import math
import os
import warnings
from dataclasses import dataclass

from PIL import Image

MAX_SIDE_LIMIT = 20000
"""Sides above this many pixels (or of 0) are refused, declared or real."""

ASPECT_TOLERANCE = 1.25
"""Largest accepted ratio between the declared and the real aspect ratio."""

JPEG_QUALITY = 95


class ImageSkip(Exception):
    """An image that cannot go into a shard; ``str()`` is the reason."""


@dataclass
class PreparedImage:
    """JPEG bytes ready for a shard.

    Attributes:
        encoded: JPEG bytes.
        height: Height of ``encoded`` in pixels.
        width: Width of ``encoded`` in pixels.
        reencoded: ``None`` for a pass-through, else why it was re-encoded
            (``"format"``, ``"mode"`` or ``"max_side"``).
    """

    encoded: bytes
    height: int
    width: int
    reencoded: str | None = None


def resolve_image_path(images_root, file_name):
    """Return the real path of ``file_name`` inside ``images_root``, refusing escapes.

    Symlinks are resolved before the check, so a link inside the folder that
    points outside it is refused too.

    Args:
        images_root: The images folder, already passed through ``os.path.realpath``.
        file_name: ``file_name`` from the annotations.

    Returns:
        The resolved path (which may not exist).

    Raises:
        ImageSkip: The name is absolute, contains a NUL byte, or resolves
            outside ``images_root``.
    """
    if "\0" in file_name:
        raise ImageSkip("file_name contains a NUL byte")
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")):
        raise ImageSkip("file_name is an absolute path; refused (must be inside the images folder)")
    path = os.path.realpath(os.path.join(images_root, file_name))
    if os.path.commonpath([images_root, path]) != images_root or path == images_root:
        raise ImageSkip("file_name resolves outside the images folder; refused")
    return path


def check_declared_size(width, height):
    """Check declared dimensions from the annotations.

    Args:
        width: Declared width, or ``None``.
        height: Declared height, or ``None``.

    Raises:
        ImageSkip: A declared side is 0, negative or above :data:`MAX_SIDE_LIMIT`.
    """
    for value in (width, height):
        if value is not None and not 0 < value <= MAX_SIDE_LIMIT:
            raise ImageSkip(
                f"declared size {width}x{height} is out of range (1..{MAX_SIDE_LIMIT} px a side)"
            )


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
)


def _sniff(data):
    """Name the format a file's first bytes claim, or ``None``."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _aspect_agrees(width, height, real_w, real_h):
    def close(a, b):
        return abs(math.log(a / b)) <= math.log(ASPECT_TOLERANCE)

    declared, real = width / height, real_w / real_h
    return close(declared, real) or close(declared, 1.0 / real)


def _target_size(width, height, max_side):
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(img):
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / float grayscale: scale to 8 bits rather than clip.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype("uint8")).convert("RGB")
    return img.convert("RGB")


def prepare_image_bytes(data, *, max_side=None, declared_size=None):
    """Validate encoded image bytes and return the JPEG to store.

    Args:
        data: The file's bytes.
        max_side: Downscale so the longer side is at most this, or ``None``.
        declared_size: ``(width, height)`` from the annotations (either may be
            ``None``), checked against the real size.

    Returns:
        A :class:`PreparedImage`.

    Raises:
        ImageSkip: The bytes cannot be stored (see the module doc).
    """
    if not data:
        raise ImageSkip("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageSkip(f"image too large: {e}") from None
    except Exception as e:  # PIL raises many types for unknown or broken headers.
        kind = _sniff(data)
        what = f"corrupt or truncated {kind} image" if kind else "not a readable image"
        raise ImageSkip(f"{what} ({type(e).__name__}: {e})") from None

    real_w, real_h = img.size
    fmt = img.format or "unknown"
    if not (0 < real_w <= MAX_SIDE_LIMIT and 0 < real_h <= MAX_SIDE_LIMIT):
        raise ImageSkip(f"image is {real_w}x{real_h} px; sides must be 1..{MAX_SIDE_LIMIT}")
    if declared_size is not None and None not in declared_size:
        width, height = declared_size
        if not _aspect_agrees(width, height, real_w, real_h):
            raise ImageSkip(
                f"declared size {width}x{height} disagrees with the file's {real_w}x{real_h}"
            )

    resize = max_side is not None and max(real_w, real_h) > max_side
    passthrough = fmt == "JPEG" and img.mode == "RGB" and not resize
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if passthrough:
                # Decoding at 1/8 scale still reads every entropy-coded byte, so
                # truncation is caught at a fraction of the cost.
                img.draft("RGB", (max(1, real_w // 8), max(1, real_h // 8)))
                img.load()
                return PreparedImage(data, real_h, real_w, None)
            if resize:
                target = _target_size(real_w, real_h, max_side)
                if fmt == "JPEG":
                    img.draft(None, target)
                img.load()
                img = _to_rgb(img)
                if img.size != target:
                    img = img.resize(target, Image.Resampling.LANCZOS)
                reason = "max_side"
            else:
                img.load()
                img = _to_rgb(img)
                reason = "format" if fmt != "JPEG" else "mode"
    except ImageSkip:
        raise
    except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError...
        raise ImageSkip(f"corrupt or truncated {fmt} image ({type(e).__name__}: {e})") from None

    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY)
    return PreparedImage(out.getvalue(), img.size[1], img.size[0], reason)


def prepare_image(path, *, max_side=None, declared_size=None):
    """Read an image file and return the JPEG to store (see :func:`prepare_image_bytes`).

    Args:
        path: A path returned by :func:`resolve_image_path`.
        max_side: Downscale so the longer side is at most this, or ``None``.
        declared_size: ``(width, height)`` from the annotations, or ``None``.

    Returns:
        A :class:`PreparedImage`.

    Raises:
        ImageSkip: Missing, unreadable or invalid file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageSkip("missing file") from None
    except IsADirectoryError:
        raise ImageSkip("is a folder, not an image file") from None
    except OSError as e:
        raise ImageSkip(f"cannot read file ({e.strerror or e})") from None
    return prepare_image_bytes(data, max_side=max_side, declared_size=declared_size)
