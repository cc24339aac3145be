"""Image preprocessing ops for tf.data and the serving graph.

Every function here is built from TensorFlow ops only, so it runs eagerly,
inside ``tf.data.Dataset.map`` and inside an exported SavedModel alike. The
export code reuses :func:`preprocess_for_eval` (:func:`decode_image`,
:func:`resize_image`, :func:`to_model_input`), so training-time evaluation and
serving see the same pixels.

What reaches a model: kerasmlic models normalise inside themselves
(``kerasmlic.models.pixel_normalization``), so the pipeline hands them uint8
pixels (``normalization=None`` or ``"raw"``): a quarter of the bytes of float32
to batch and copy to the accelerator. A named scaling (``"unit"``...) gives
float32 normalised images instead, for plain Keras models.

Decoding for training (:func:`decode_for_size`, :func:`decode_random_crop`
with a ``size``) reads a JPEG at a reduced DCT scale (1/2, 1/4, 1/8) when the
image, or the crop, is at least that many times the target side, so libjpeg
skips most of the inverse DCT and the resize reads fewer pixels. Evaluation
and serving always decode at full scale (one shared path).

Random ops take a ``seed``: ``None`` draws a fresh one each call, a Python int
or a shape-``[2]`` integer tensor makes the op deterministic (stateless random
ops). The pipeline passes a per-example seed tensor so a seeded run repeats.
"""

import math

import tensorflow as tf

from kerasmlic.errors import UsageError

NORMALIZATIONS = ("unit", "symmetric", "imagenet", "caffe", "raw")
"""Pixel scalings :func:`normalize` knows (see its docstring)."""

PIXEL_MODES = (None, "raw")
"""Normalisations for which the pipeline hands over uint8 pixels (the model normalises)."""

DCT_RATIOS = (1, 2, 4, 8)
"""JPEG decoding scales libjpeg offers (``ratio`` of ``tf.io.decode_jpeg``), ascending."""

DCT_MIN_FRACTION = 1.0
"""Default share of the target side a reduced JPEG decode must keep (:func:`dct_ratio_index`).

1 (the default) reduces only where the decode still has at least the target
side on both axes, so the resize only shrinks. Below 1 the shorter side may
fall slightly short and be stretched by at most ``1 / min_fraction`` on that
axis: with 0.9 the common COCO sizes 640x427 and 640x426 decode at 1/2 for
224-px training (213 px kept of 224) instead of at full scale. On a quiet
machine that gained 1.3% images per CPU-second, within run-to-run spread
(``benchmarks/input_pipeline.py --goal``, 224 px, best of 3: 581.6 against
574.2), and its effect on accuracy is not measured, so it stays an option
(``make_dataset(dct_min_fraction=0.9)``), not the default.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""ImageNet means in BGR order on 0-255, as ``keras.applications`` caffe mode."""

DEFAULT_SCALE = (0.25, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def check_normalization(mode):
    """Raise a clear error for an unknown normalisation name.

    Args:
        mode: The name to check; ``None`` (uint8 pixels, see :data:`PIXEL_MODES`)
            is accepted too.

    Raises:
        UsageError: ``mode`` is neither None nor in :data:`NORMALIZATIONS`.
    """
    if mode is not None and mode not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {mode!r}; choose from {', '.join(NORMALIZATIONS)}")


def emits_pixels(normalization):
    """Whether images for this normalisation leave the pipeline as uint8 pixels.

    Args:
        normalization: ``None`` or one of :data:`NORMALIZATIONS`.

    Returns:
        True for ``None`` and ``"raw"`` (the model normalises), else False.
    """
    return normalization in PIXEL_MODES


def normalization_affine(mode):
    """Return a named scaling as ``(reverse_channels, scale, offset)``.

    Each mode is ``x -> x[..., ::-1] if reverse_channels`` then
    ``x * scale + offset`` on float32 0-255 pixels. :func:`normalize` and the
    models' ``PixelNormalization`` layer both compute it from here, so the two
    agree to the bit.

    Args:
        mode: One of :data:`NORMALIZATIONS`.

    Returns:
        ``(bool, scale, offset)``; ``scale`` and ``offset`` are None (skip), a
        float, or a tuple of three per-channel floats.

    Raises:
        UsageError: Unknown ``mode``.
    """
    check_normalization(mode)
    if mode == "unit":
        return False, 1.0 / 255.0, None
    if mode == "symmetric":
        return False, 1.0 / 127.5, -1.0
    if mode == "imagenet":
        scale = tuple(1.0 / (255.0 * s) for s in IMAGENET_STD)
        offset = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
        return False, scale, offset
    if mode == "caffe":
        return True, None, tuple(-m for m in CAFFE_BGR_MEAN)
    return False, None, None


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
        UsageError: Unknown ``mode`` (None is ``"raw"`` here).
    """
    reverse, scale, offset = normalization_affine("raw" if mode is None else mode)
    x = tf.cast(images, tf.float32)
    if reverse:
        x = x[..., ::-1]
    if scale is not None:
        x = x * tf.constant(scale, tf.float32)
    if offset is not None:
        x = x + tf.constant(offset, tf.float32)
    return x


def quantize_pixels(image, clip=True):
    """Round float 0-255 pixels to uint8 (uint8 input is returned as is).

    Args:
        image: float tensor on 0-255, any shape.
        clip: Clip to 0-255 first. Pass False only for values known to lie in
            ``(-0.5, 255.5)``, such as a bilinear resize of uint8 pixels (a
            convex combination of them, antialiased or not): the result is the
            same, one pass over the pixels cheaper.

    Returns:
        A uint8 tensor of the same shape.
    """
    if image.dtype == tf.uint8:
        return image
    if clip:
        image = tf.clip_by_value(image, 0.0, 255.0)
    # Adding 0.5 then truncating rounds half up: one pass fewer than tf.round.
    return tf.cast(image + 0.5, tf.uint8)


def to_model_input(image, normalization=None):
    """Turn resized 0-255 pixels into what the model is fed.

    Args:
        image: float (or uint8) pixels on 0-255, ``(H, W, 3)`` or ``(B, H, W, 3)``.
        normalization: ``None`` or ``"raw"``: uint8 pixels (the model
            normalises inside); a named scaling: float32 :func:`normalize`.

    Returns:
        A uint8 or float32 tensor of the same shape.
    """
    if emits_pixels(normalization):
        return quantize_pixels(image)
    return normalize(image, normalization)


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


def dct_ratio_index(height, width, size, min_fraction=1.0):
    """Pick the JPEG decoding scale for an image (or crop) that will be resized to ``size``.

    The largest ratio ``r`` of :data:`DCT_RATIOS` with ``min(height, width) / r
    >= min_fraction * size``. With ``min_fraction=1`` decoding at ``1/r``
    never leaves fewer pixels than the resize needs on either axis, so the
    resize only shrinks; below 1 the shorter side may be stretched by up to
    ``1 / min_fraction`` (see :data:`DCT_MIN_FRACTION`).

    Args:
        height: int tensor (or int), the full-scale height.
        width: int tensor (or int), the full-scale width.
        size: The target side in pixels (Python int).
        min_fraction: Share of ``size`` the reduced shorter side must keep,
            in (0, 1].

    Returns:
        A scalar int32 tensor, the index of ``r`` in :data:`DCT_RATIOS`
        (0 for full scale).

    Raises:
        UsageError: ``min_fraction`` outside (0, 1].
    """
    if not 0.0 < min_fraction <= 1.0:
        raise UsageError(f"DCT min_fraction must be in (0, 1], got {min_fraction!r}")
    side = tf.minimum(tf.cast(height, tf.int32), tf.cast(width, tf.int32))
    # Integer thresholds computed here (with a little slack for the float product), so
    # the rule is exact: side >= ceil(r * size * min_fraction).
    larger = tf.constant(
        [math.ceil(r * size * min_fraction - 1e-9) for r in DCT_RATIOS[1:]], tf.int32
    )
    # The ratios ascend, so the count of those that fit is the index of the largest.
    return tf.reduce_sum(tf.cast(side >= larger, tf.int32))


def _decode_jpeg_scaled(image_bytes, index, window=None, dct_method=""):
    """Decode a JPEG (or a full-scale ``window`` of it) at ``1 / DCT_RATIOS[index]``.

    ``ratio`` is a static attribute of the decode op, so each scale is its own
    branch of a ``switch_case``; only the chosen one runs. The crop window of
    ``decode_and_crop_jpeg`` is in the scaled image's coordinates, so it is
    divided by the ratio (rounded down, which keeps it inside the scaled image).
    """

    def branch(ratio):
        def decode():
            if window is None:
                return tf.io.decode_jpeg(
                    image_bytes, channels=3, ratio=ratio, dct_method=dct_method
                )
            return tf.io.decode_and_crop_jpeg(
                image_bytes, window // ratio, channels=3, ratio=ratio, dct_method=dct_method
            )

        return decode

    image = tf.switch_case(index, [branch(r) for r in DCT_RATIOS])
    image.set_shape([None, None, 3])
    return image


def decode_for_size(image_bytes, size, dct_method="", min_fraction=DCT_MIN_FRACTION):
    """Decode a whole image for training at ``size``, a JPEG at a reduced DCT scale.

    A JPEG whose shorter side is at least ``r`` times ``min_fraction *
    size`` is decoded at ``1/r`` (:func:`dct_ratio_index`); other formats,
    and smaller JPEGs, at full scale (:func:`decode_image`). Training only:
    evaluation and serving decode at full scale, so their pixels do not
    depend on this choice.

    Args:
        image_bytes: Scalar ``tf.string`` of encoded image bytes.
        size: The side the image will be resized to.
        dct_method: libjpeg IDCT (see :func:`decode_random_crop`).
        min_fraction: See :func:`dct_ratio_index` and :data:`DCT_MIN_FRACTION`.

    Returns:
        uint8 tensor ``(h, w, 3)``; both sides at least ``min_fraction *
        size`` when the JPEG was reduced.
    """

    # Kept because it pays where it applies (`benchmarks/input_pipeline.py --ops`, one
    # thread, CPU ms per image, 300 of the benchmark's 640-px JPEGs at 224 px, 3 quiet
    # runs): on the images it reduces, the whole training map costs ~1.77 instead of
    # ~1.98; over all of them 1.60-1.62 against 1.67-1.70 with it off. The exact rule
    # reduces 45% of those images (it misses the 640x427 shape); min_fraction 0.9
    # reduces 65% for another ~3%. Where no image is reduced (448 px) the header read
    # and branches add ~0.1 ms, which make_dataset avoids when the split's --max-side
    # rules every reduction out.
    def jpeg():
        shape = tf.io.extract_jpeg_shape(image_bytes)
        index = dct_ratio_index(shape[0], shape[1], size, min_fraction)
        return _decode_jpeg_scaled(image_bytes, index, dct_method=dct_method)

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, lambda: decode_image(image_bytes))
    image.set_shape([None, None, 3])
    return image


def decode_random_crop(
    image_bytes,
    scale=DEFAULT_SCALE,
    ratio=DEFAULT_RATIO,
    seed=None,
    dct_method="",
    size=None,
    min_fraction=DCT_MIN_FRACTION,
):
    """Decode a random crop of an encoded image, decoding only the crop if JPEG.

    For JPEG the crop box is sampled from the header (``extract_jpeg_shape``)
    and ``tf.io.decode_and_crop_jpeg`` skips decoding outside it, which is
    cheaper than decoding the whole image; other formats (PNG) are decoded in
    full and then sliced. With a ``size``, a JPEG crop is also decoded at the
    largest DCT scale that keeps its shorter side at least ``min_fraction *
    size`` (:func:`dct_ratio_index`).

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        scale: ``(min, max)`` fraction of the image area kept.
        ratio: ``(min, max)`` width / height of the crop.
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.
        dct_method: libjpeg IDCT (``""`` default, ``"INTEGER_FAST"``,
            ``"INTEGER_ACCURATE"``).
        size: The side the crop will be resized to, or None to decode at full
            scale.
        min_fraction: See :func:`dct_ratio_index` and :data:`DCT_MIN_FRACTION`.

    Returns:
        uint8 tensor ``(h, w, 3)``, the crop (``1/r`` of its full-scale size
        when decoded at a reduced scale).
    """
    seed = _as_seed(seed)

    def jpeg_crop():
        window = random_crop_window(tf.io.extract_jpeg_shape(image_bytes), scale, ratio, seed)
        if size is None:
            return tf.io.decode_and_crop_jpeg(
                image_bytes, window, channels=3, dct_method=dct_method
            )
        index = dct_ratio_index(window[2], window[3], size, min_fraction)
        return _decode_jpeg_scaled(image_bytes, index, window, dct_method)

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
    dct_scaling=False,
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
        dct_scaling: Decode a JPEG crop at a reduced DCT scale where it is
            (by default) at least 2, 4 or 8 times ``size`` (see
            :func:`decode_random_crop`).

    Returns:
        float32 tensor ``(size, size, 3)`` on 0-255.
    """
    crop = decode_random_crop(
        image_bytes, scale, ratio, seed, dct_method, size=size if dct_scaling else None
    )
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


def preprocess_for_eval(image_bytes, size, normalization=None, antialias=False):
    """Decode at full scale, resize the whole image (evaluation and serving).

    The one path both ``make_dataset(training=False)`` and the exported
    serving graph run, so a served score equals the evaluated one.

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        size: Output side in pixels.
        normalization: ``None`` or ``"raw"`` for uint8 pixels (kerasmlic
            models), else one of :data:`NORMALIZATIONS` (see :func:`to_model_input`).
        antialias: See :func:`resize_image`.

    Returns:
        ``(size, size, 3)``: uint8 pixels, or float32 normalised.
    """
    return to_model_input(resize_image(decode_image(image_bytes), size, antialias), normalization)


def preprocess_for_train(
    image_bytes,
    size,
    normalization=None,
    seed=None,
    scale=DEFAULT_SCALE,
    ratio=DEFAULT_RATIO,
    flip=True,
    antialias=False,
    dct_method="",
    dct_scaling=True,
    dct_min_fraction=DCT_MIN_FRACTION,
):
    """Decode (a random crop, at a reduced DCT scale where it fits), resize once, flip.

    The per-image work after the decode is one float cast, one bilinear
    resize, the rounding to uint8 (no clip: a bilinear resize of uint8 pixels
    stays on 0-255) and the flip, on uint8 where it moves a quarter of the
    bytes.

    Args:
        image_bytes: Scalar ``tf.string`` of JPEG or PNG bytes.
        size: Output side in pixels.
        normalization: ``None`` or ``"raw"`` for uint8 pixels, else one of
            :data:`NORMALIZATIONS` (see :func:`to_model_input`).
        seed: ``None``, a Python int or a shape-``[2]`` int tensor.
        scale: ``(min, max)`` fraction of the image area kept; ``(1, 1)``
            decodes and resizes the whole image (no crop).
        ratio: ``(min, max)`` width / height of the crop.
        flip: Whether to mirror at random.
        antialias: See :func:`resize_image`.
        dct_method: See :func:`decode_random_crop`.
        dct_scaling: Decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) where
            the image, or the crop, is at least that many times
            ``dct_min_fraction * size`` (:func:`decode_for_size`, :func:`decode_random_crop`).
        dct_min_fraction: How near: the share of ``size`` a reduced decode's
            shorter side keeps (:func:`dct_ratio_index`); 1 never stretches.

    Returns:
        ``(size, size, 3)``: uint8 pixels, or float32 normalised.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), 2))
    if tuple(scale) == (1.0, 1.0):
        # No crop: the whole image, resized once.
        if dct_scaling:
            image = decode_for_size(image_bytes, size, dct_method, dct_min_fraction)
        else:
            image = decode_image(image_bytes)
    else:
        image = decode_random_crop(
            image_bytes,
            scale,
            ratio,
            crop_seed,
            dct_method,
            size=size if dct_scaling else None,
            min_fraction=dct_min_fraction,
        )
    resized = resize_image(image, size, antialias=antialias)
    if emits_pixels(normalization):
        image = quantize_pixels(resized, clip=False)
    else:
        image = normalize(resized, normalization)
    # Flipped after the cast to uint8, where it moves a quarter of the bytes.
    if flip:
        image = random_flip_left_right(image, flip_seed)
    return image
