import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data import preprocessing as pp
from kerasmlic.errors import UsageError


def gradient_image(height=48, width=64, seed=0):
    """An RGB uint8 image whose pixels are easy to tell apart (ramps + a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1)
    image = image + rng.integers(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image, quality=95):
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def png_bytes(image):
    return tf.io.encode_png(image).numpy()


def in_map(fn, *args):
    """Run ``fn`` on one element inside ``tf.data.Dataset.map`` and return the numpy result."""
    ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


# ---- normalize ----------------------------------------------------------------------------------

PIXELS = np.array([[[0, 255, 51], [255, 0, 102]]], np.uint8)  # (1, 2, 3)


def test_normalize_unit_symmetric_raw_by_hand():
    np.testing.assert_allclose(
        pp.normalize(PIXELS, "unit").numpy(), [[[0, 1, 0.2], [1, 0, 0.4]]], atol=1e-6
    )
    np.testing.assert_allclose(
        pp.normalize(PIXELS, "symmetric").numpy(), [[[-1, 1, -0.6], [1, -1, -0.2]]], atol=1e-6
    )
    raw = pp.normalize(PIXELS, "raw")
    assert raw.dtype == tf.float32
    np.testing.assert_array_equal(raw.numpy(), PIXELS.astype(np.float32))


def test_normalize_imagenet_and_caffe_match_keras_applications():
    batch = np.stack([gradient_image(8, 8, s) for s in range(2)]).astype(np.float32)
    torch_mode = keras.applications.imagenet_utils.preprocess_input(batch.copy(), mode="torch")
    np.testing.assert_allclose(pp.normalize(batch, "imagenet").numpy(), torch_mode, atol=1e-4)
    caffe = keras.applications.resnet.preprocess_input(batch.copy())
    np.testing.assert_allclose(pp.normalize(batch, "caffe").numpy(), caffe, atol=1e-4)
    # By hand for one pixel: red 0 -> (0 - 0.485) / 0.229.
    assert pp.normalize(PIXELS, "imagenet").numpy()[0, 0, 0] == pytest.approx(-0.485 / 0.229)
    # Caffe puts blue first: pixel (0, 255, 51) -> (51 - 103.939, 255 - 116.779, 0 - 123.68).
    np.testing.assert_allclose(
        pp.normalize(PIXELS, "caffe").numpy()[0, 0], [51 - 103.939, 255 - 116.779, -123.68]
    )


@pytest.mark.parametrize("mode", pp.NORMALIZATIONS)
def test_normalize_in_map_equals_eager_on_uint8_and_batches(mode):
    image = gradient_image(6, 5)
    eager = pp.normalize(image, mode).numpy()
    mapped = in_map(lambda x: pp.normalize(x, mode), image)
    np.testing.assert_allclose(mapped, eager, atol=1e-6)
    batched = pp.normalize(np.stack([image, image]), mode).numpy()
    assert batched.shape == (2, 6, 5, 3)
    np.testing.assert_allclose(batched[1], eager, atol=1e-6)


def test_normalize_rejects_unknown_mode():
    with pytest.raises(UsageError, match="unknown normalization 'torch'"):
        pp.normalize(PIXELS, "torch")


# ---- decode_image -------------------------------------------------------------------------------


def test_decode_png_rgb_gray_rgba_exact():
    image = gradient_image(10, 12)
    np.testing.assert_array_equal(pp.decode_image(png_bytes(image)).numpy(), image)
    gray = image[..., :1]
    decoded = pp.decode_image(png_bytes(gray)).numpy()
    assert decoded.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded[..., c], gray[..., 0])
    rgba = np.concatenate([image, np.full((10, 12, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(pp.decode_image(png_bytes(rgba)).numpy(), image)
    np.testing.assert_array_equal(in_map(pp.decode_image, png_bytes(rgba)), image)


def test_decode_jpeg_close_to_original_eager_and_in_map():
    image = gradient_image()
    data = jpeg_bytes(image)
    eager = pp.decode_image(data).numpy()
    assert eager.shape == image.shape and eager.dtype == np.uint8
    assert np.abs(eager.astype(int) - image).mean() < 4
    np.testing.assert_array_equal(in_map(pp.decode_image, data), eager)
    gray = pp.decode_image(jpeg_bytes(image[..., :1])).numpy()
    assert gray.shape == (48, 64, 3)


# ---- resize_image -------------------------------------------------------------------------------


def test_resize_halving_averages_2x2_blocks():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    expected = image.reshape(2, 2, 2, 2, 3).astype(np.float32).mean(axis=(1, 3))
    out = pp.resize_image(image, 2)
    assert out.dtype == tf.float32 and out.shape == (2, 2, 3)
    np.testing.assert_allclose(out.numpy(), expected)
    np.testing.assert_allclose(in_map(lambda x: pp.resize_image(x, 2), image), expected)


def test_resize_keeps_a_constant_image_and_sets_static_shape():
    image = np.full((17, 31, 3), 200, np.uint8)
    np.testing.assert_allclose(pp.resize_image(image, 9).numpy(), 200.0)
    np.testing.assert_allclose(pp.resize_image(image, 9, antialias=True).numpy(), 200.0, atol=1e-3)
    spec = tf.data.Dataset.from_tensors(tf.zeros([5, 7, 3], tf.uint8))
    spec = spec.map(lambda x: pp.resize_image(tf.image.crop_to_bounding_box(x, 0, 0, 4, 4), 6))
    assert spec.element_spec.shape == (6, 6, 3)


# ---- random crop ------------------------------------------------------------------------------


def test_crop_window_respects_scale_ratio_and_bounds():
    shape = tf.constant([300, 400, 3])
    fallbacks = 0
    for s in range(60):
        y, x, h, w = pp.random_crop_window(shape, (0.25, 1.0), (0.75, 4 / 3), seed=s).numpy()
        assert 0 <= y and 0 <= x and y + h <= 300 and x + w <= 400
        if (h, w) == (300, 400):
            fallbacks += 1
            continue
        assert 0.25 - 0.02 <= h * w / 120000 <= 1.0
        assert 0.75 - 0.02 <= w / h <= 4 / 3 + 0.02
    assert fallbacks < 30
    a = pp.random_crop_window(shape, seed=5).numpy()
    np.testing.assert_array_equal(a, pp.random_crop_window(shape, seed=5).numpy())
    mapped = in_map(lambda sh: pp.random_crop_window(sh, seed=5), shape)
    np.testing.assert_array_equal(mapped, a)


def test_png_crop_is_exact_slice_of_the_sampled_window():
    image = gradient_image()
    seed = tf.constant([3, 4])
    y, x, h, w = pp.random_crop_window(tf.constant([48, 64, 3]), seed=seed).numpy()
    crop = pp.decode_random_crop(png_bytes(image), seed=seed).numpy()
    np.testing.assert_array_equal(crop, image[y : y + h, x : x + w])
    mapped = in_map(lambda b: pp.decode_random_crop(b, seed=seed), png_bytes(image))
    np.testing.assert_array_equal(mapped, crop)


def test_jpeg_crop_matches_full_decode_then_slice():
    image = gradient_image(96, 128)
    data = jpeg_bytes(image)
    full = pp.decode_image(data).numpy().astype(int)
    for s in range(4):
        seed = tf.constant([s, 9])
        y, x, h, w = pp.random_crop_window(tf.constant([96, 128, 3]), seed=seed).numpy()
        crop = pp.decode_random_crop(data, seed=seed).numpy().astype(int)
        assert crop.shape == (h, w, 3)
        # decode_and_crop_jpeg upsamples chroma near the crop edge slightly differently.
        assert np.abs(crop - full[y : y + h, x : x + w]).mean() < 1.0
        mapped = in_map(lambda b, sd=seed: pp.decode_random_crop(b, seed=sd), data)
        np.testing.assert_array_equal(mapped, crop)


@pytest.mark.parametrize("encode", [jpeg_bytes, png_bytes])
def test_random_resized_crop_shape_range_and_seeding(encode):
    data = encode(gradient_image())
    out = pp.random_resized_crop(data, 24, seed=1)
    assert out.dtype == tf.float32 and out.shape == (24, 24, 3)
    assert 0.0 <= out.numpy().min() and out.numpy().max() <= 255.0
    np.testing.assert_array_equal(out.numpy(), pp.random_resized_crop(data, 24, seed=1).numpy())
    others = [pp.random_resized_crop(data, 24, seed=s).numpy() for s in range(2, 6)]
    assert any(np.abs(o - out.numpy()).max() > 10 for o in others)
    np.testing.assert_array_equal(
        in_map(lambda b: pp.random_resized_crop(b, 24, seed=1), data), out.numpy()
    )
    assert pp.random_resized_crop(data, 24).shape == (24, 24, 3)  # unseeded draw works


def test_constant_image_stays_constant_through_crop_and_resize():
    data = png_bytes(np.full((40, 30, 3), [10, 120, 250], np.uint8))
    out = pp.random_resized_crop(data, 16, seed=7).numpy()
    np.testing.assert_allclose(out, np.broadcast_to([10.0, 120.0, 250.0], out.shape))


# ---- flip ---------------------------------------------------------------------------------------


def test_flip_is_identity_or_mirror_about_half_the_time():
    image = gradient_image(4, 6)
    flips = 0
    for s in range(200):
        out = pp.random_flip_left_right(image, seed=s).numpy()
        if np.array_equal(out, image[:, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 70 <= flips <= 130
    seed = tf.constant([1, 2])
    eager = pp.random_flip_left_right(image, seed).numpy()
    np.testing.assert_array_equal(
        in_map(lambda x: pp.random_flip_left_right(x, seed), image), eager
    )


# ---- composed ops -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, lo, hi",
    [("unit", 0, 1), ("symmetric", -1, 1), ("imagenet", -2.2, 2.7), ("caffe", -124, 152)],
)
def test_train_and_eval_preprocessing_ranges_with_a_named_scaling(mode, lo, hi):
    data = jpeg_bytes(gradient_image())
    train = pp.preprocess_for_train(data, 20, mode, seed=3)
    assert train.shape == (20, 20, 3) and train.dtype == tf.float32
    assert lo - 1e-5 <= train.numpy().min() and train.numpy().max() <= hi + 1e-5
    evaluated = pp.preprocess_for_eval(data, 20, mode)
    expected = pp.normalize(pp.resize_image(pp.decode_image(data), 20), mode)
    np.testing.assert_allclose(evaluated.numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        in_map(lambda b: pp.preprocess_for_eval(b, 20, mode), data), evaluated
    )
    seed = tf.constant([3, 0])
    np.testing.assert_allclose(
        in_map(lambda b: pp.preprocess_for_train(b, 20, mode, seed=seed), data),
        pp.preprocess_for_train(data, 20, mode, seed=seed).numpy(),
    )


@pytest.mark.parametrize("mode", pp.PIXEL_MODES)
@pytest.mark.parametrize("crop_scale", [(1.0, 1.0), (0.25, 1.0)])
def test_train_and_eval_give_uint8_pixels_for_models_that_normalise(mode, crop_scale):
    data = jpeg_bytes(gradient_image(96, 128))
    evaluated = pp.preprocess_for_eval(data, 20, mode)
    assert evaluated.dtype == tf.uint8 and evaluated.shape == (20, 20, 3)
    resized = pp.resize_image(pp.decode_image(data), 20).numpy()
    np.testing.assert_array_equal(evaluated.numpy(), np.floor(resized + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(in_map(lambda b: pp.preprocess_for_eval(b, 20, mode), data),
                                  evaluated.numpy())  # fmt: skip
    seed = tf.constant([5, 1])

    def train(b):
        return pp.preprocess_for_train(b, 20, mode, seed=seed, scale=crop_scale)

    eager = train(tf.constant(data))
    assert eager.dtype == tf.uint8 and eager.shape == (20, 20, 3)
    np.testing.assert_array_equal(in_map(train, data), eager.numpy())
    # The flip runs on the uint8 pixels: with it off the image is the resize of the
    # same decode, mirrored or not.
    unflipped = pp.preprocess_for_train(data, 20, mode, seed=seed, scale=crop_scale, flip=False)
    assert np.array_equal(eager, unflipped) or np.array_equal(eager, unflipped.numpy()[:, ::-1])


# ---- pixels and the shared affine ---------------------------------------------------------------


def test_quantize_pixels_rounds_clips_and_keeps_uint8():
    floats = tf.constant([[-3.0, 0.4, 0.5, 1.49, 254.5, 254.49, 300.0]])
    expected = [[0, 0, 1, 1, 255, 254, 255]]
    np.testing.assert_array_equal(pp.quantize_pixels(floats).numpy(), expected)
    np.testing.assert_array_equal(in_map(pp.quantize_pixels, floats), expected)
    assert pp.quantize_pixels(PIXELS) is PIXELS or pp.quantize_pixels(PIXELS).dtype == tf.uint8
    pixels = tf.constant(PIXELS)
    assert pp.quantize_pixels(pixels) is pixels


def test_quantize_pixels_without_clip_is_the_same_on_a_bilinear_resize():
    # Bilinear resizing mixes uint8 pixels convexly, so the training path skips the clip.
    image = gradient_image(37, 53)
    image[::3, ::2] = 255
    image[1::4, 1::3] = 0
    for antialias in (False, True):
        resized = pp.resize_image(image, 16, antialias=antialias)
        clipped = pp.quantize_pixels(resized).numpy()
        np.testing.assert_array_equal(pp.quantize_pixels(resized, clip=False).numpy(), clipped)
        mapped = in_map(lambda x: pp.quantize_pixels(x, clip=False), resized)
        np.testing.assert_array_equal(mapped, clipped)
    edges = tf.constant([[-0.49, 0.5, 254.49, 255.49]])
    np.testing.assert_array_equal(pp.quantize_pixels(edges, clip=False).numpy(), [[0, 1, 254, 255]])


@pytest.mark.parametrize("mode", [*pp.NORMALIZATIONS, None])
def test_to_model_input_is_pixels_or_normalize(mode):
    image = tf.constant(gradient_image(6, 5).astype(np.float32) + 0.25)
    out = pp.to_model_input(image, mode)
    if pp.emits_pixels(mode):
        assert out.dtype == tf.uint8
        np.testing.assert_array_equal(out.numpy(), gradient_image(6, 5))
    else:
        np.testing.assert_array_equal(out.numpy(), pp.normalize(image, mode).numpy())
    np.testing.assert_array_equal(in_map(lambda x: pp.to_model_input(x, mode), image), out)


@pytest.mark.parametrize("mode", pp.NORMALIZATIONS)
def test_normalization_affine_is_what_normalize_computes(mode):
    reverse, scale, offset = pp.normalization_affine(mode)
    x = gradient_image(4, 4).astype(np.float32)
    expected = x[..., ::-1] if reverse else x
    expected = expected * np.float32(1 if scale is None else np.float32(scale))
    expected = expected + np.float32(0 if offset is None else np.float32(offset))
    np.testing.assert_allclose(pp.normalize(x, mode).numpy(), expected, rtol=1e-6, atol=1e-6)


# ---- DCT-scaled decoding (training only) --------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, size, ratio",
    [
        (480, 640, 224, 2),  # 480 >= 2 * 224, < 4 * 224
        (447, 640, 224, 1),  # the shorter side decides
        (640, 448, 224, 2),
        (480, 640, 448, 1),
        (3000, 4000, 224, 8),
        (2000, 1000, 224, 4),
        (1792, 1792, 224, 8),  # exactly 8x
        (10, 10, 224, 1),
    ],
)
def test_dct_ratio_is_the_largest_that_keeps_the_short_side_at_the_target(
    height, width, size, ratio
):  # min_fraction=1, the exact rule
    index = pp.dct_ratio_index(height, width, size)
    assert pp.DCT_RATIOS[int(index)] == ratio
    mapped = in_map(lambda h, w: pp.dct_ratio_index(h, w, size), height, width)
    assert pp.DCT_RATIOS[int(mapped)] == ratio


@pytest.mark.parametrize(
    "height, width, size, fraction, ratio",
    [
        (427, 640, 224, 0.9, 2),  # COCO's 640x427: 213.5 px kept of 224 (>= 0.9)
        (426, 640, 224, 0.9, 2),
        (404, 640, 224, 0.9, 2),  # ceil(2 * 224 * 0.9) = 404
        (403, 640, 224, 0.9, 1),
        (427, 640, 224, 1.0, 1),
        (360, 640, 224, 0.75, 2),
        (360, 640, 224, 0.9, 1),
        (1613, 2000, 224, 0.9, 8),  # ceil(8 * 224 * 0.9) = 1613
        (1612, 2000, 224, 0.9, 4),
        (100, 100, 10, 0.5, 8),
    ],
)
def test_dct_ratio_with_a_min_fraction_lets_the_short_side_fall_that_far_short(
    height, width, size, fraction, ratio
):
    index = pp.dct_ratio_index(height, width, size, fraction)
    assert pp.DCT_RATIOS[int(index)] == ratio
    mapped = in_map(lambda h, w: pp.dct_ratio_index(h, w, size, fraction), height, width)
    assert pp.DCT_RATIOS[int(mapped)] == ratio


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01])
def test_dct_ratio_refuses_a_min_fraction_outside_0_1(fraction):
    with pytest.raises(UsageError, match="min_fraction"):
        pp.dct_ratio_index(480, 640, 224, fraction)


def smooth_image(height, width, seed=0):
    """A smooth RGB image (low-frequency waves): what a DCT-scaled decode keeps well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [
        127 + 100 * np.sin(2 * np.pi * (f * x + g * y) + p)
        for f, g, p in rng.uniform([0.5, 0.5, 0], [3, 3, 6], (3, 3))
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size, ratio", [(40, 4), (64, 2), (120, 1)])
def test_decode_for_size_reduces_a_big_jpeg_and_stays_close_to_full_decode(size, ratio):
    data = jpeg_bytes(smooth_image(200, 300), quality=95)
    full = pp.decode_image(data)
    scaled = pp.decode_for_size(data, size)
    assert scaled.dtype == tf.uint8
    assert scaled.shape == (-(-200 // ratio), -(-300 // ratio), 3)
    np.testing.assert_array_equal(in_map(lambda b: pp.decode_for_size(b, size), data), scaled)
    if ratio == 1:
        np.testing.assert_array_equal(scaled, full)  # the same decode as evaluation
    resized_full = pp.resize_image(full, size, antialias=True).numpy()
    resized_scaled = pp.resize_image(scaled, size, antialias=True).numpy()
    assert np.abs(resized_scaled - resized_full).mean() < 2.0


@pytest.mark.parametrize("fraction, ratio", [(1.0, 1), (0.9, 2)])
def test_decode_for_size_min_fraction_picks_the_scale(fraction, ratio):
    # 200 px short side, 110 px target: 1/2 keeps 100 px, 0.91 of the target.
    data = jpeg_bytes(smooth_image(200, 300), quality=95)
    scaled = pp.decode_for_size(data, 110, min_fraction=fraction)
    assert scaled.shape == (200 // ratio, 300 // ratio, 3)
    mapped = in_map(lambda b: pp.decode_for_size(b, 110, min_fraction=fraction), data)
    np.testing.assert_array_equal(mapped, scaled)
    if ratio == 1:
        np.testing.assert_array_equal(scaled, pp.decode_image(data))


def test_training_map_min_fraction_reaches_the_whole_image_path():
    data = jpeg_bytes(smooth_image(200, 300))
    whole = {"scale": (1.0, 1.0), "flip": False, "seed": 1}
    exact = pp.preprocess_for_train(data, 110, dct_min_fraction=1.0, **whole)
    np.testing.assert_array_equal(exact, pp.preprocess_for_eval(data, 110))  # full decode
    near = pp.preprocess_for_train(data, 110, dct_min_fraction=0.9, **whole)  # at 1/2
    assert near.dtype == tf.uint8 and near.shape == (110, 110, 3)
    assert not np.array_equal(near, exact)
    assert np.abs(near.numpy().astype(int) - exact.numpy()).mean() < 3.0
    np.testing.assert_array_equal(
        in_map(lambda b: pp.preprocess_for_train(b, 110, dct_min_fraction=0.9, **whole), data),
        near,
    )


def test_decode_for_size_decodes_png_at_full_scale():
    image = gradient_image(96, 128)
    np.testing.assert_array_equal(pp.decode_for_size(png_bytes(image), 16), image)
    np.testing.assert_array_equal(in_map(lambda b: pp.decode_for_size(b, 16), png_bytes(image)),
                                  image)  # fmt: skip


def test_dct_scaled_crop_is_the_window_at_reduced_scale_close_to_the_full_crop():
    data = jpeg_bytes(smooth_image(256, 384), quality=95)
    full = pp.decode_image(data)
    reduced = 0
    for s in range(6):
        seed = tf.constant([s, 2])
        y, x, h, w = pp.random_crop_window(tf.constant([256, 384, 3]), seed=seed).numpy()
        crop = pp.decode_random_crop(data, seed=seed, size=32)
        ratio = pp.DCT_RATIOS[int(pp.dct_ratio_index(h, w, 32, pp.DCT_MIN_FRACTION))]
        reduced += ratio > 1
        assert crop.dtype == tf.uint8 and crop.shape == (h // ratio, w // ratio, 3)
        mapped = in_map(lambda b, sd=seed: pp.decode_random_crop(b, seed=sd, size=32), data)
        np.testing.assert_array_equal(mapped, crop)
        # The decoded window is the sampled one rounded down to whole scaled pixels
        # (a shift of under one of them): compare with that region at full scale.
        y, x, h, w = (v // ratio * ratio for v in (y, x, h, w))
        full_crop = pp.resize_image(full[y : y + h, x : x + w], 32, antialias=True).numpy()
        scaled = pp.resize_image(crop, 32, antialias=True).numpy()
        assert np.abs(scaled - full_crop).mean() < 2.0, (s, ratio)
    assert reduced >= 3  # most crops of a 256-px image are >= 64 px a side


def test_png_crop_with_a_size_is_still_the_exact_slice():
    image = gradient_image()
    seed = tf.constant([3, 4])
    y, x, h, w = pp.random_crop_window(tf.constant([48, 64, 3]), seed=seed).numpy()
    crop = pp.decode_random_crop(png_bytes(image), seed=seed, size=4).numpy()
    np.testing.assert_array_equal(crop, image[y : y + h, x : x + w])


def test_dct_scaling_off_decodes_at_full_scale_in_training():
    data = jpeg_bytes(smooth_image(200, 300))
    seed = tf.constant([1, 1])
    whole = {"scale": (1.0, 1.0), "flip": False}
    off = pp.preprocess_for_train(data, 40, seed=seed, dct_scaling=False, **whole)
    np.testing.assert_array_equal(off, pp.preprocess_for_eval(data, 40))
    on = pp.preprocess_for_train(data, 40, seed=seed, **whole)
    assert np.abs(on.numpy().astype(int) - off.numpy()).mean() < 3.0
