"""The in-model pixel normalisation layer, the models' input contract and format version."""

import json
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data import preprocessing as pp
from kerasmlic.errors import UsageError
from kerasmlic.evaluation.loading import load_model
from kerasmlic.models.base import FORMAT_VERSION, PIXELS, check_format_version
from kerasmlic.models.encoders import PIXEL_NORMALIZATION_LAYER_NAME, get_encoder
from kerasmlic.models.pixel_normalization import (
    AFFINE,
    PixelNormalization,
    find_pixel_normalization,
)
from kerasmlic.models.registry import build_model


def pixels(batch=2, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3)).astype(np.uint8)


# ---- the layer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", pp.NORMALIZATIONS)
def test_layer_equals_normalize_on_uint8_and_float_eagerly_and_in_tf_data(mode):
    x = pixels()
    layer = PixelNormalization(mode)
    expected = pp.normalize(x, mode).numpy()
    for given in (x, x.astype(np.float32)):
        out = layer(given)
        assert out.dtype == "float32" and tuple(out.shape) == x.shape
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)
    mapped = next(iter(tf.data.Dataset.from_tensors(x).map(layer)))
    np.testing.assert_array_equal(mapped.numpy(), expected)


def test_layer_inside_a_functional_model_takes_uint8():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, PixelNormalization("imagenet")(inputs))
    np.testing.assert_allclose(
        model(pixels()).numpy(), pp.normalize(pixels(), "imagenet").numpy(), atol=1e-6
    )
    # By hand: red 0 -> -0.485 / 0.229, blue 255 -> (1 - 0.406) / 0.225.
    one = np.array([[[[0, 0, 255]]]], np.uint8)
    out = PixelNormalization("imagenet")(one).numpy()[0, 0, 0]
    np.testing.assert_allclose(out[[0, 2]], [-0.485 / 0.229, (1 - 0.406) / 0.225], rtol=1e-6)


def test_affine_mode_per_channel_and_global():
    x = pixels()
    layer = PixelNormalization(AFFINE, scale=[1.0, 2.0, 0.5], offset=-1.0)
    expected = x.astype(np.float32) * np.float32([1.0, 2.0, 0.5]) - 1.0
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(PixelNormalization(AFFINE)(x).numpy(), x.astype(np.float32))


def test_bad_arguments_are_one_line_usage_errors():
    with pytest.raises(UsageError, match="unknown pixel normalization 'torch'"):
        PixelNormalization("torch")
    with pytest.raises(UsageError, match="takes no scale or offset"):
        PixelNormalization("unit", scale=2.0)
    with pytest.raises(UsageError, match="1 or 3 values"):
        PixelNormalization(AFFINE, scale=[1.0, 2.0])


@pytest.mark.parametrize(
    "layer", [PixelNormalization("caffe"), PixelNormalization(AFFINE, [0.5] * 3, [1, 2, 3])]
)
def test_config_round_trips_through_keras_serialisation(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, PixelNormalization)
    assert restored.get_config() == layer.get_config()
    np.testing.assert_array_equal(restored(pixels()).numpy(), layer(pixels()).numpy())


def test_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = PixelNormalization("caffe")
        assert layer.compute_dtype == "float32"
        assert layer(pixels()).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


# ---- models: pixels in, format version ----------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model("bce", num_classes=4, image_size=32)


def test_every_model_normalises_its_own_pixels(model):
    encoder = get_encoder(model)
    first = encoder.get_layer(PIXEL_NORMALIZATION_LAYER_NAME)
    assert find_pixel_normalization(model) is first and first.mode == "unit"
    assert model.normalization == PIXELS == "raw"  # the pipeline hands it uint8 pixels
    assert model.pixel_normalization == "unit"
    assert model.get_config()["format_version"] == FORMAT_VERSION == 2
    x = pixels(3, 32)
    by_uint8 = model(x, training=False)["scores"].numpy()
    by_float = model(x.astype(np.float32), training=False)["scores"].numpy()
    np.testing.assert_array_equal(by_uint8, by_float)


def _rewrite(src, dst, edit_config, edit_weights=None):
    """Copy a ``.keras`` file, editing its model config and (optionally) weights file."""
    folder = os.path.dirname(dst)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit_config(config["config"])
                data = json.dumps(config).encode()
            elif item.filename == "model.weights.h5" and edit_weights is not None:
                path = zin.extract(item, os.path.join(folder, "unzipped"))
                with h5py.File(path, "r+") as weights:
                    edit_weights(weights)
                with open(path, "rb") as f:
                    data = f.read()
            zout.writestr(item, data)


def _drop_pixel_normalization(weights):
    """Remove the layer's (empty) group: the weights file of a version-1 model."""
    paths = []
    weights.visit(paths.append)  # append returns None, so the visit goes on
    found = [p for p in paths if p.endswith(PIXEL_NORMALIZATION_LAYER_NAME)]
    assert len(found) == 1
    variables = weights[found[0]].get("vars")
    assert variables is None or len(variables) == 0  # the layer has no weights
    del weights[found[0]]


def test_a_version_1_file_loads_and_scores_pixels_as_it_scored_normalised_images(model, tmp_path):
    saved = str(tmp_path / "v2.keras")
    model.save(saved)
    # A file from before the layer: no format_version, and no entry for the layer in
    # the weights file (checked against a file written by the version-1 code too).
    old = str(tmp_path / "v1.keras")
    _rewrite(saved, old, lambda config: config.pop("format_version"), _drop_pixel_normalization)
    loaded = load_model(old)
    assert loaded.normalization == "raw" and loaded.pixel_normalization == "unit"
    assert loaded.get_config()["format_version"] == FORMAT_VERSION  # re-saving upgrades it
    x = pixels(3, 32, seed=4)
    expected = model(x, training=False)["scores"].numpy()
    np.testing.assert_array_equal(loaded(x, training=False)["scores"].numpy(), expected)
    # Version 1's contract, by hand: the backbone fed the pipeline's normalised images.
    encoder = get_encoder(loaded)
    backbone = encoder.layers[encoder.layers.index(find_pixel_normalization(loaded)) + 1]
    normalised = pp.normalize(x, "unit")
    np.testing.assert_allclose(
        backbone(normalised, training=False).numpy(),
        get_encoder(model)(x, training=False)[0].numpy(),
        atol=1e-6,
    )


def test_a_newer_format_version_is_refused_in_one_line(model, tmp_path):
    saved = str(tmp_path / "v2.keras")
    model.save(saved)
    newer = str(tmp_path / "v99.keras")
    _rewrite(saved, newer, lambda config: config.update(format_version=99))
    with pytest.raises(UsageError) as err:
        load_model(newer)
    message = str(err.value)
    assert "\n" not in message and "format_version 99" in message and "upgrade" in message
    for bad in (0, "2", True, None):
        with pytest.raises(UsageError, match="invalid format_version"):
            check_format_version(bad)
    assert check_format_version(1) == 1 and check_format_version(FORMAT_VERSION) == 2
