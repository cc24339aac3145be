"""Check image files and choose the bytes that go into a shard.

Policy (each outcome is either bytes for the shard or an :class:`ImageSkip`
with a one-line reason): **shards keep the user's pixels.**

* A file TensorFlow decodes correctly (``tf.io.decode_image``) is stored byte
  for byte, whatever its name says: JPEG in any colour mode (RGB, grayscale,
  CMYK), PNG (any bit depth, palette, alpha), GIF (the first frame is what
  TensorFlow reads), still WebP, and BMP that is uncompressed 24/32-bit or
  8-bit grayscale. So ``evaluate`` scores exactly the bytes a user later sends to
  the exported SavedModel. The file is fully decoded once (JPEG at reduced
  DCT scale) to catch truncation.
* What TensorFlow cannot decode, or decodes wrongly (TIFF, palette or 1-bit
  or compressed BMP, animated WebP, ...), is converted **losslessly** to PNG
  (the first frame of an animation).
* ``max_side`` downscales an image whose longer side exceeds it (aspect
  kept) and re-encodes it as a quality-95 RGB JPEG: the one deliberate change,
  recorded in ``dataset.json``.
* Skipped: a missing or unreadable file, a zero-byte file, bytes no decoder
  recognises, a truncated or corrupt image, a side of 0 or above
  :data:`MAX_SIDE_LIMIT` pixels (declared or real), and declared dimensions
  whose aspect ratio disagrees with the real one by more than
  :data:`ASPECT_TOLERANCE` (the same ratio with width and height swapped is
  accepted: EXIF-rotated files). A uniform rescale is accepted — users often
  store COCO pre-resized — because label areas are fractions of the image.

Alpha is dropped, not composited, wherever pixels are converted, because that
is what TensorFlow's decoders do with ``channels=3``.

EXIF orientation is not applied, as TensorFlow's decoders ignore it (and so
does the SavedModel); :attr:`PreparedImage.orientation` reports it so that
``build`` can list the files whose orientation tag is not 1.

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
    """Bytes ready for a shard.

    Attributes:
        encoded: The image bytes to store (the file's own bytes unless
            ``reencoded`` says otherwise).
        height: Height of ``encoded`` in pixels.
        width: Width of ``encoded`` in pixels.
        reencoded: ``None`` when stored byte for byte, else why it was changed:
            ``"converted"`` (a format TensorFlow cannot decode, stored as a
            lossless PNG) or ``"max_side"`` (downscaled, stored as JPEG).
        orientation: The file's EXIF orientation tag (1 when it has none).
        source_format: The file's real format as PIL names it (``"JPEG"``...).
    """

    encoded: bytes
    height: int
    width: int
    reencoded: str | None = None
    orientation: int = 1
    source_format: str = ""


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
    """RGB pixels as TensorFlow's decoders give them (alpha dropped, 16 bits to 8)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / float grayscale: keep the high byte, as libpng's strip-16 does.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        scale = 1.0 / 257.0 if img.mode != "F" else 255.0 / (arr.max() or 1.0)
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype("uint8")).convert("RGB")
    return img.convert("RGB")


_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


def _lossless(img):
    """Pixels PNG can hold as they are: the mode kept where PNG has it."""
    if img.mode in _PNG_MODES:
        return img
    if img.mode in ("RGBa", "RGBX", "PA") or "A" in img.getbands():
        return img.convert("RGBA")
    if img.mode in ("I", "I;16B", "I;16L", "I;16N") or img.mode.startswith("I;16"):
        import numpy as np

        arr = np.asarray(img, dtype=np.int64)
        if arr.min() >= 0 and arr.max() <= 65535:
            return Image.fromarray(arr.astype(np.uint16))
    return _to_rgb(img)


def _bmp_tf_decodes(data, mode):
    """Whether TensorFlow's BMP decoder reads this file correctly.

    It reads uncompressed 24- and 32-bit files, and 8-bit ones as grayscale
    (ignoring the palette, so only a grayscale palette, PIL mode ``L``, is right).
    """
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return False  # OS/2 or truncated header
    bits = int.from_bytes(data[28:30], "little")
    compression = int.from_bytes(data[30:34], "little")
    return compression == 0 and (bits in (24, 32) or (bits == 8 and mode == "L"))


def tensorflow_decodes(fmt, mode, data, frames=1):
    """Whether ``tf.io.decode_image`` decodes a file correctly (so it is stored as is).

    Args:
        fmt: PIL's format name for the file.
        mode: PIL's mode for it.
        data: The file's bytes.
        frames: Its number of frames (TensorFlow refuses an animated WebP
            with ``channels=3``; of a GIF it reads the first frame).

    Returns:
        A bool.
    """
    if fmt in ("JPEG", "PNG", "GIF"):
        return True
    if fmt == "WEBP":
        return frames == 1
    if fmt == "BMP":
        return _bmp_tf_decodes(data, mode)
    return False


def exif_orientation(img):
    """Return an opened image's EXIF orientation tag (1 when absent or unreadable).

    Args:
        img: A PIL image.

    Returns:
        An int in 1..8 (1: as stored).
    """
    try:
        value = img.getexif().get(0x0112, 1)
        value = int(value)
    except Exception:  # a malformed EXIF block must not lose the image
        return 1
    return value if 1 <= value <= 8 else 1


def prepare_image_bytes(data, *, max_side=None, declared_size=None):
    """Validate encoded image bytes and return what to store (module doc).

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
    orientation = exif_orientation(img)

    resize = max_side is not None and max(real_w, real_h) > max_side
    frames = getattr(img, "n_frames", 1)
    keep = not resize and tensorflow_decodes(fmt, img.mode, data, frames)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if keep:
                if fmt == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded byte, so
                    # truncation is caught at a fraction of the cost.
                    img.draft(img.mode, (max(1, real_w // 8), max(1, real_h // 8)))
                img.load()
                return PreparedImage(data, real_h, real_w, None, orientation, fmt)
            if resize:
                target = _target_size(real_w, real_h, max_side)
                if fmt == "JPEG":
                    img.draft(None, target)
                img.load()
                img = _to_rgb(img)
                if img.size != target:
                    img = img.resize(target, Image.Resampling.LANCZOS)
                out_format, options, reason = "JPEG", {"quality": JPEG_QUALITY}, "max_side"
            else:
                img.load()
                img = _lossless(img)
                out_format, options, reason = "PNG", {}, "converted"
    except ImageSkip:
        raise
    except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError...
        raise ImageSkip(f"corrupt or truncated {fmt} image ({type(e).__name__}: {e})") from None

    out = io.BytesIO()
    img.save(out, format=out_format, **options)
    return PreparedImage(out.getvalue(), img.size[1], img.size[0], reason, orientation, fmt)


def prepare_image(path, *, max_side=None, declared_size=None):
    """Read an image file and return the bytes to store (see :func:`prepare_image_bytes`).

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
