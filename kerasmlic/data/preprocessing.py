"""Image preprocessing ops for tf.data and the serving graph.

Every function here is built from TensorFlow ops only, so it runs eagerly,
inside ``tf.data.Dataset.map`` and inside an exported SavedModel alike. The
export code reuses :func:`decode_image`, :func:`resize_image` and
:func:`normalize`, so training-time evaluation and serving see the same pixels.

Random ops take a ``seed``: ``None`` draws a fresh one each call, a Python int
or a shape-``[2]`` integer tensor makes the op deterministic (stateless random
ops). The pipeline passes a per-example seed tensor so a seeded run repeats.
"""

import tensorflow as tf

from kerasmlic.errors import UsageError

NORMALIZATIONS = ("unit", "symmetric", "imagenet", "caffe", "raw")
"""Pixel scalings :func:`normalize` knows (see its docstring)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""ImageNet means in BGR order on 0-255, as ``keras.applications`` caffe mode."""

DEFAULT_SCALE = (0.25, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def check_normalization(mode):
    """Raise a clear error for an unknown normalisation name.

    Args:
        mode: The name to check.

    Raises:
        UsageError: ``mode`` is not in :data:`NORMALIZATIONS`.
    """
    if mode not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {mode!r}; choose from {', '.join(NORMALIZATIONS)}")


def normalize(images, mode="unit"):
    """Scale 0-255 RGB pixels the way a model expects.

    Modes:
        ``unit``: ``x / 255`` in [0, 1].
        ``symmetric``: ``x / 127.5 - 1`` in [-1, 1].
        ``imagenet``: ``(x / 255 - mean) / std`` with ImageNet mean and std.
        ``caffe``: RGB to BGR, then the ImageNet BGR means subtracted on 0-255
        (``keras.applications.resnet.preprocess_input``).
        ``raw``: float32 0-255, for models that preprocess inside themselves.

    Args:
        images: uint8 or float tensor (or array) of RGB pixels on 0-255, shape
            ``(H, W, 3)`` or ``(B, H, W, 3)``.
        mode: One of :data:`NORMALIZATIONS`.

    Returns:
        A float32 tensor of the same shape.

    Raises:
        UsageError: Unknown ``mode``.
    """
    check_normalization(mode)
    x = tf.cast(images, tf.float32)
    if mode == "unit":
        return x * (1.0 / 255.0)
    if mode == "symmetric":
        return x * (1.0 / 127.5) - 1.0
    if mode == "imagenet":
        mean = tf.constant(IMAGENET_MEAN, tf.float32)
        inv_std = 1.0 / tf.constant(IMAGENET_STD, tf.float32)
        return (x * (1.0 / 255.0) - mean) * inv_std
    if mode == "caffe":
        return x[..., ::-1] - tf.constant(CAFFE_BGR_MEAN, tf.float32)
    return x


def decode_image(image_bytes):
    """Decode JPEG or PNG bytes (also GIF/BMP) to an RGB uint8 image.

    Grayscale images are replicated to three channels and an alpha channel is
    dropped, so every output has three channels.

    Args:
        image_bytes: Scalar ``tf.string`` tensor of encoded image bytes.

    Returns:
        uint8 tensor of shape ``(H, W, 3)``.
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_image(image, size, antialias=False):
    """Resize an image to ``size`` x ``size`` with bilinear interpolation.

    The aspect ratio is not kept (the whole image is squeezed into the square),
    matching the random resized crop used for training.

    Args:
        image: uint8 or float tensor ``(H, W, 3)`` (or a batch ``(B, H, W, 3)``).
        size: Output side in pixels (Python int).
        antialias: Low-pass filter when shrinking (sharper for big
            reductions, slower).

    Returns:
        float32 tensor ``(size, size, 3)`` (or ``(B, size, size, 3)``), values
        still on the input's 0-255 scale.
    """
    # TensorFlow's bilinear kernel is faster on float32 than on uint8 input, even
    # counting the cast (see the notes in benchmarks/input_pipeline.py).
    image = tf.cast(image, tf.float32)
    resized = tf.image.resize(image, [size, size], method="bilinear", antialias=antialias)
    resized.set_shape(resized.shape[:-3].concatenate([size, size, 3]))
    return resized


def _as_seed(seed):
    """Return a shape-[2] int32 seed tensor for stateless random ops."""
    if seed is None:
        return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    seed = tf.convert_to_tensor(seed)
    return tf.cast(seed, tf.int32) if seed.dtype != tf.int64 else seed


def random_crop_window(image_shape, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO, seed=None):
    """Sample a crop box as Inception / torchvision ``RandomResizedCrop`` does.

    The box covers a fraction of the image area drawn from ``scale`` and has a
    width/height ratio drawn from ``ratio``; after 10 failed draws the whole
    image is used.

    Args:
        image_shape: int tensor ``[height, width, channels]`` of the image.
        scale: ``(min, max)`` fraction of the image area.
        ratio: ``(min, max)`` width / height of the box.
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.

    Returns:
        int32 tensor ``[offset_y, offset_x, height, width]`` (the crop window
        ``tf.io.decode_and_crop_jpeg`` takes).
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(image_shape, tf.int32)[:3],
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=_as_seed(seed),
        min_object_covered=0.0,
        aspect_ratio_range=list(ratio),
        area_range=list(scale),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.cast(tf.stack([begin[0], begin[1], size[0], size[1]]), tf.int32)


def decode_random_crop(
    image_bytes, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO, seed=None, dct_method=""
):
    """Decode a random crop of an encoded image, decoding only the crop if JPEG.

    For JPEG the crop box is sampled from the header (``extract_jpeg_shape``)
    and ``tf.io.decode_and_crop_jpeg`` skips decoding outside it, which is
    cheaper than decoding the whole image; other formats (PNG) are decoded in
    full and then sliced.

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        scale: ``(min, max)`` fraction of the image area kept.
        ratio: ``(min, max)`` width / height of the crop.
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.
        dct_method: libjpeg IDCT (``""`` default, ``"INTEGER_FAST"``,
            ``"INTEGER_ACCURATE"``).

    Returns:
        uint8 tensor ``(h, w, 3)``, the crop.
    """
    seed = _as_seed(seed)

    def jpeg_crop():
        window = random_crop_window(tf.io.extract_jpeg_shape(image_bytes), scale, ratio, seed)
        return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method=dct_method)

    def full_then_crop():
        image = decode_image(image_bytes)
        window = random_crop_window(tf.shape(image), scale, ratio, seed)
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    crop = tf.cond(tf.io.is_jpeg(image_bytes), jpeg_crop, full_then_crop)
    crop.set_shape([None, None, 3])
    return crop


def random_resized_crop(
    image_bytes,
    size,
    scale=DEFAULT_SCALE,
    ratio=DEFAULT_RATIO,
    seed=None,
    antialias=False,
    dct_method="",
):
    """Decode a random crop of encoded image bytes and resize it to a square.

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        size: Output side in pixels.
        scale: ``(min, max)`` fraction of the image area kept.
        ratio: ``(min, max)`` width / height of the crop.
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.
        antialias: See :func:`resize_image`.
        dct_method: See :func:`decode_random_crop`.

    Returns:
        float32 tensor ``(size, size, 3)`` on 0-255.
    """
    crop = decode_random_crop(image_bytes, scale, ratio, seed, dct_method)
    return resize_image(crop, size, antialias=antialias)


def random_flip_left_right(image, seed=None):
    """Mirror an image (or each image of a batch) left-right with probability 1/2.

    Args:
        image: Tensor ``(H, W, C)`` or ``(B, H, W, C)``.
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.

    Returns:
        A tensor of the same shape and dtype.
    """
    return tf.image.stateless_random_flip_left_right(image, _as_seed(seed))


def preprocess_for_eval(image_bytes, size, normalization="unit", antialias=False):
    """Decode, resize the whole image and normalise (evaluation and serving).

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        size: Output side in pixels.
        normalization: One of :data:`NORMALIZATIONS`.
        antialias: See :func:`resize_image`.

    Returns:
        float32 tensor ``(size, size, 3)``.
    """
    return normalize(resize_image(decode_image(image_bytes), size, antialias), normalization)


def preprocess_for_train(
    image_bytes,
    size,
    normalization="unit",
    seed=None,
    scale=DEFAULT_SCALE,
    ratio=DEFAULT_RATIO,
    flip=True,
    antialias=False,
    dct_method="",
):
    """Random resized crop, random horizontal flip and normalisation.

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        size: Output side in pixels.
        normalization: One of :data:`NORMALIZATIONS`.
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.
        scale: ``(min, max)`` fraction of the image area kept; ``(1, 1)``
            decodes and resizes the whole image (no crop).
        ratio: ``(min, max)`` width / height of the crop.
        flip: Whether to mirror at random.
        antialias: See :func:`resize_image`.
        dct_method: See :func:`decode_random_crop`.

    Returns:
        float32 tensor ``(size, size, 3)``.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), 2))
    if tuple(scale) == (1.0, 1.0):
        # No crop: the whole image, resized as in evaluation.
        image = resize_image(decode_image(image_bytes), size, antialias=antialias)
    else:
        image = random_resized_crop(
            image_bytes, size, scale, ratio, crop_seed, antialias=antialias, dct_method=dct_method
        )
    if flip:
        image = random_flip_left_right(image, flip_seed)
    return normalize(image, normalization)
