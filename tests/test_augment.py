"""Training augmentation: settings, each op eagerly and inside tf.data, and the pipeline."""

import numpy as np
import pytest
import tensorflow as tf
from test_pipeline import collect, data_dir, encoded_for, examples  # noqa: F401
from test_preprocessing import gradient_image, in_map, jpeg_bytes

from kerasmlic.data import pipeline, preprocessing
from kerasmlic.data.augment import Augmentation, batch_augmenter
from kerasmlic.errors import UsageError
from kerasmlic.training.config import load_config

# ---- settings -----------------------------------------------------------------------------------


def test_from_config_reads_every_key_and_none_turns_all_off():
    aug = Augmentation.from_config(
        {
            "crop_scale": [0.5, 1],
            "crop_ratio": [1, 1],
            "flip": False,
            "randaugment": {"num_ops": 2, "magnitude": 5},
            "erasing": 0.25,
        }
    )
    assert aug.crop_scale == (0.5, 1.0) and aug.crop_ratio == (1.0, 1.0) and not aug.flip
    assert (aug.randaugment_ops, aug.randaugment_magnitude, aug.erasing) == (2, 5.0, 0.25)
    assert aug.crops and aug.has_batch_ops
    for off in ("none", None, False, "None"):
        none = Augmentation.from_config(off)
        assert not none.crops and not none.flip and not none.has_batch_ops
    with pytest.raises(UsageError, match="unknown data.augment key"):
        Augmentation.from_config({"crop": [0.5, 1]})


def test_config_keys_and_none_round_trip_through_load_config():
    config = load_config(None, ["data.augment=none"], check_model=False)
    assert Augmentation.from_config(config["data"]["augment"]) == Augmentation.off()
    config = load_config(
        None,
        ["data.augment=none", "data.augment.flip=true", "data.augment.erasing=0.5"],
        check_model=False,
    )
    aug = Augmentation.from_config(config["data"]["augment"])
    assert aug.flip and aug.erasing == 0.5 and not aug.crops
    for bad in ("data.augment.crop_scale=[0.5, 2]", "data.augment.crop_ratio=[2, 1]"):
        with pytest.raises(UsageError, match="expects \\[min, max\\]"):
            load_config(None, [bad], check_model=False)
    with pytest.raises(UsageError, match="must be in \\[0, 1\\)"):
        load_config(None, ["data.augment.erasing=1.5"], check_model=False)
    # A misspelt 'none' is refused with the two forms the key takes.
    with pytest.raises(UsageError, match="data.augment must be a mapping or 'none', got 'nonee'"):
        load_config(None, ["data.augment=nonee"], check_model=False)


# ---- per-image ops: eagerly and in tf.data ------------------------------------------------------


def test_no_crop_equals_the_evaluation_resize_eagerly_and_in_tf_data():
    encoded = jpeg_bytes(gradient_image(40, 56))
    expected = preprocessing.preprocess_for_eval(encoded, 16, "raw").numpy()
    assert expected.dtype == np.uint8

    def no_crop(b, dct_scaling=False):
        return preprocessing.preprocess_for_train(
            b, 16, "raw", seed=3, scale=(1.0, 1.0), flip=False, dct_scaling=dct_scaling
        )

    np.testing.assert_array_equal(no_crop(tf.constant(encoded)).numpy(), expected)
    np.testing.assert_array_equal(in_map(no_crop, tf.constant(encoded)), expected)
    # With DCT scaling (40 px >= 2 x 16: decoded at 1/2) the pixels differ, a little.
    scaled = in_map(lambda b: no_crop(b, dct_scaling=True), tf.constant(encoded))
    assert scaled.dtype == np.uint8 and not np.array_equal(scaled, expected)
    assert np.abs(scaled.astype(int) - expected).mean() < 8


def test_flip_off_never_mirrors_and_on_mirrors_about_half():
    image = gradient_image(16, 16)
    encoded = tf.constant(jpeg_bytes(image, quality=100))
    plain = preprocessing.preprocess_for_eval(encoded, 16, "raw").numpy()
    mirrored = plain[:, ::-1]
    flips = 0
    for seed in range(40):
        on = preprocessing.preprocess_for_train(encoded, 16, "raw", seed=seed, scale=(1.0, 1.0))
        off = preprocessing.preprocess_for_train(
            encoded, 16, "raw", seed=seed, scale=(1.0, 1.0), flip=False
        )
        np.testing.assert_array_equal(off.numpy(), plain)
        if np.array_equal(on.numpy(), mirrored):
            flips += 1
        else:
            np.testing.assert_array_equal(on.numpy(), plain)
    assert 10 <= flips <= 30  # binomial(40, 1/2): outside this range with p < 0.002


def test_crop_scale_bounds_the_crop_area():
    shape = tf.constant([100, 100, 3])
    for seed in range(30):
        _, _, h, w = preprocessing.random_crop_window(shape, (0.5, 0.6), (1.0, 1.0), seed).numpy()
        assert 0.5 * 1e4 - 250 <= h * w <= 0.6 * 1e4 + 250


# ---- batch ops: RandAugment and erasing ---------------------------------------------------------


def _batch(n=8, size=24):
    return tf.constant(
        np.stack([gradient_image(size, size, s) for s in range(n)]).astype(np.float32)
    )


def test_batch_augmenter_off_is_none():
    assert batch_augmenter(Augmentation()) is None
    assert batch_augmenter(Augmentation.off()) is None


def test_erasing_probability_one_erases_a_patch_of_every_image_eagerly_and_in_tf_data():
    images = _batch()
    apply = batch_augmenter(Augmentation(erasing=1.0), seed=1)
    for out in (apply(images).numpy(), in_map(apply, images)):
        assert out.shape == images.shape and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 255
        changed = np.abs(out - images.numpy()).max(axis=-1) > 0  # (B, H, W)
        per_image = changed.reshape(len(out), -1).mean(axis=1)
        assert (per_image > 0).all()  # every image has a patch erased
        assert (per_image < 0.9).all()  # and keeps most of its pixels


def test_randaugment_changes_images_but_keeps_shape_and_range_eagerly_and_in_tf_data():
    images = _batch()
    apply = batch_augmenter(Augmentation(randaugment_ops=2, randaugment_magnitude=9), seed=2)
    for out in (apply(images).numpy(), in_map(apply, images)):
        assert out.shape == images.shape
        assert 0 <= out.min() and out.max() <= 255
        assert np.abs(out - images.numpy()).mean() > 1.0


# ---- the pipeline -------------------------------------------------------------------------------


def test_pipeline_without_augmentation_yields_the_evaluation_images(data_dir):  # noqa: F811
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=12, batch_size=4, training=True, drop_remainder=False,
        with_ids=True, normalization="raw", augment="none", dct_scaling=False,
    )  # fmt: skip
    images, _, _, ids = collect(ds)
    for image, image_id in zip(images, ids, strict=True):
        expected = preprocessing.preprocess_for_eval(encoded_for(image_id), 12, "raw").numpy()
        np.testing.assert_allclose(image, expected, atol=1e-4)


def test_pipeline_batch_ops_then_normalise(data_dir):  # noqa: F811
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=12, batch_size=4, training=True, normalization="unit",
        augment={"crop_scale": [1, 1], "flip": False, "erasing": 0.999}, seed=0,
    )  # fmt: skip
    images, hots, _, _ = collect(ds)
    assert images.shape == (12, 12, 12, 3) and hots.shape[0] == 12
    assert 0 <= images.min() and images.max() <= 1.0 + 1e-6  # normalised after erasing


def test_pipeline_batch_ops_on_uint8_pixels_give_uint8_pixels(data_dir):  # noqa: F811
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=12, batch_size=4, training=True,
        augment={"crop_scale": [0.5, 1], "erasing": 0.999, "randaugment": {"num_ops": 1}}, seed=0,
    )  # fmt: skip
    assert ds.element_spec[0].dtype == tf.uint8
    images = collect(ds)[0]
    assert images.shape == (12, 12, 12, 3) and images.dtype == np.uint8


def test_batch_augmenter_takes_uint8_and_returns_float_pixels():
    pixels = tf.cast(_batch(4, 16), tf.uint8)
    apply = batch_augmenter(Augmentation(erasing=1.0), seed=3)
    for out in (apply(pixels), in_map(apply, pixels)):
        assert out.dtype == np.float32 and 0 <= np.min(out) and np.max(out) <= 255
        assert (np.abs(np.asarray(out) - pixels.numpy()) > 0).any()


# ---- the train holdout --------------------------------------------------------------------------


def test_in_holdout_is_a_stable_fraction():
    ids = tf.range(20_000, dtype=tf.int64)
    held = pipeline.in_holdout(ids, 0.1).numpy()
    assert 0.09 < held.mean() < 0.11
    np.testing.assert_array_equal(held, pipeline.in_holdout(ids, 0.1).numpy())
    # A larger fraction holds out a superset.
    assert (held <= pipeline.in_holdout(ids, 0.3).numpy()).all()


def test_holdout_parts_partition_the_split_in_training_and_labels(data_dir):  # noqa: F811
    fraction = 0.4
    all_ids = sorted(i for i, _, _ in examples("train"))
    held = {i for i in all_ids if pipeline.in_holdout(tf.constant(i, tf.int64), fraction)}
    assert 0 < len(held) < len(all_ids)  # the fixture's 12 ids give both parts
    seen = {}
    for part in ("rest", "heldout"):
        ds = pipeline.make_dataset(
            data_dir, "train", image_size=8, batch_size=2, training=part == "rest",
            drop_remainder=False, with_ids=True, holdout=(part, fraction),
        )  # fmt: skip
        seen[part] = set(collect(ds)[3].tolist())
        labels = pipeline.read_split_labels(data_dir, "train", holdout=(part, fraction))
        assert set(labels["image_ids"].tolist()) == seen[part]
    assert seen["heldout"] == held
    assert seen["rest"] == set(all_ids) - held
    with pytest.raises(UsageError, match="holdout"):
        pipeline.make_dataset(
            data_dir, "train", image_size=8, batch_size=2, training=True, holdout=("x", 0.1)
        )
