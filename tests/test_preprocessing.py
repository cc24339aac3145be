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
    [("unit", 0, 1), ("symmetric", -1, 1), ("raw", 0, 255), ("imagenet", -2.2, 2.7)],
)
def test_train_and_eval_preprocessing_ranges(mode, lo, hi):
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
