"""Encoders: output contract, in-model normalisation, weights files, SavedModel, freezing,
and the ``Encoder`` object a model takes in place of a name."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data.preprocessing import normalize
from kerasmlic.errors import UsageError
from kerasmlic.models.baselines import BCEModel
from kerasmlic.models.encoders import (
    ENCODER_LAYER_NAME,
    PIXEL_NORMALIZATION_LAYER_NAME,
    Encoder,
    build_encoder,
    encoder_names,
    encoder_normalization,
    get_encoder,
    set_encoder_trainable,
)
from kerasmlic.models.pixel_normalization import PixelNormalization
from kerasmlic.models.registry import build_model


def _images(n, size, scale=1.0, seed=0):
    return np.random.default_rng(seed).uniform(0, scale, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("size,grid", [(32, 4), (64, 8)])
def test_tiny_contract(size, grid):
    encoder = build_encoder("tiny", size)
    feature_map, pooled = encoder(_images(2, size))
    assert feature_map.shape == (2, grid, grid, 128)
    assert pooled.shape == (2, 128)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pooled),
        keras.ops.convert_to_numpy(feature_map).mean(axis=(1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert encoder.name == "encoder"


def test_normalizations():
    expected = {
        "tiny": "unit",
        "small": "unit",
        "resnet50": "caffe",
        "resnet101": "caffe",
        "mobilenet_v3_small": "raw",
        "mobilenet_v3_large": "raw",
        "efficientnet_v2_b0": "raw",
        "convnext_tiny": "raw",
        "savedmodel:/any/path": "unit",
        "hub:/any/preset": "raw",  # the preset's normalisation runs inside the encoder
    }
    assert set(encoder_names()) == set(expected) - {"savedmodel:/any/path", "hub:/any/preset"}
    for name, normalization in expected.items():
        assert encoder_normalization(name) == normalization


@pytest.mark.parametrize("name", ["tiny", "small", "mobilenet_v3_small", "resnet50"])
def test_the_first_layer_normalises_pixels_as_encoder_normalization_says(name):
    encoder = build_encoder(name, 32)
    first = encoder.layers[1]  # after the input
    assert isinstance(first, PixelNormalization) and first.name == PIXEL_NORMALIZATION_LAYER_NAME
    assert first.mode == encoder_normalization(name)
    # uint8 and float pixels give the same features: the backbone sees normalised input.
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    by_uint8 = keras.ops.convert_to_numpy(encoder(pixels)[1])
    np.testing.assert_array_equal(by_uint8, keras.ops.convert_to_numpy(encoder(pixels * 1.0)[1]))
    backbone = encoder.layers[2]
    expected = keras.ops.convert_to_numpy(backbone(normalize(pixels, first.mode)))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(encoder(pixels)[0]), expected, rtol=1e-5, atol=1e-6
    )


def test_unknown_encoder_lists_valid_ones():
    with pytest.raises(
        UsageError, match="valid encoders: tiny, small, resnet50.*savedmodel:PATH, hub:<preset>"
    ):
        build_encoder("vgg16", 32)
    with pytest.raises(UsageError, match="unknown encoder"):
        encoder_normalization("resnet")
    with pytest.raises(UsageError, match="valid encoders"):
        build_model("bce", num_classes=3, image_size=32, encoder="resnet18")


def test_rejected_image_size_and_bad_weights(tmp_path):
    with pytest.raises(UsageError, match="at least 32 px"):
        build_encoder("mobilenet_v3_small", 16)
    with pytest.raises(UsageError, match="not found"):
        build_encoder("tiny", 32, weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(UsageError, match="no imagenet weights"):
        build_encoder("tiny", 32, weights="imagenet")
    with pytest.raises(UsageError, match="imagenet"):
        build_encoder("tiny", 32, weights="weights.bin")


def test_applications_weights_file_round_trip(tmp_path):
    # A user's local backbone weights (here: random) load into a new encoder.
    source = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    path = str(tmp_path / "mnv3s.weights.h5")
    source.save_weights(path)
    encoder = build_encoder("mobilenet_v3_small", 32, weights=path)
    x = _images(2, 32, scale=255.0)
    feature_map, pooled = encoder(x)
    expected = keras.ops.convert_to_numpy(source(x))
    # Randomly initialised MobileNetV3 outputs are tiny (~1e-11): compare
    # relatively, which another random init would fail.
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(feature_map), expected, rtol=1e-4, atol=0)
    assert pooled.shape == (2, expected.shape[-1])


def test_tiny_weights_file_round_trip(tmp_path):
    source = build_encoder("tiny", 32)
    path = str(tmp_path / "tiny.weights.h5")
    source.get_layer("tiny").save_weights(path)
    loaded = build_encoder("tiny", 32, weights=path)
    x = _images(2, 32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)[1]), keras.ops.convert_to_numpy(source(x)[1])
    )


@pytest.mark.parametrize(
    "name,channels",
    [
        ("mobilenet_v3_small", 576),
        ("mobilenet_v3_large", 960),
        pytest.param("efficientnet_v2_b0", 1280, marks=pytest.mark.slow),
        ("resnet50", 2048),
        pytest.param("resnet101", 2048, marks=pytest.mark.slow),
        pytest.param("convnext_tiny", 768, marks=pytest.mark.slow),
    ],
)
def test_applications_output_shapes(name, channels):
    encoder = build_encoder(name, 64)
    feature_map, pooled = encoder(_images(1, 64, scale=255.0))
    assert feature_map.shape[0] == 1 and feature_map.shape[-1] == channels
    assert feature_map.shape[1] == feature_map.shape[2] == 2  # stride 32 at 64 px
    assert pooled.shape == (1, channels)


class _VectorExtractor(tf.Module):
    """A TF-Hub-like image feature-vector model: (B, S, S, 3) -> (B, 6)."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.arange(18, dtype=np.float32).reshape(3, 6) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return {"feature_vector": tf.matmul(tf.reduce_mean(images, axis=[1, 2]), self.w)}


class _MapExtractor(tf.Module):
    """A feature-map model: (B, S, S, 3) -> (B, S/4, S/4, 3)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    def __call__(self, images):
        return {"map": tf.nn.avg_pool2d(images, 4, 4, "VALID")}


def _export(module, path):
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


def test_savedmodel_vector_encoder(tmp_path):
    path = _export(_VectorExtractor(), str(tmp_path / "vector"))
    encoder = build_encoder(f"savedmodel:{path}", 32)
    x = _images(3, 32, scale=255.0)  # pixels: the encoder scales them to [0, 1]
    feature_map, pooled = encoder(x)
    expected = (x / 255.0).mean(axis=(1, 2)) @ (np.arange(18, dtype=np.float32).reshape(3, 6) / 10)
    assert feature_map.shape == (3, 1, 1, 6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled), expected, rtol=1e-5)


def test_savedmodel_map_encoder_in_a_model(tmp_path):
    path = _export(_MapExtractor(), str(tmp_path / "map"))
    encoder = build_encoder(f"savedmodel:{path}", 32)
    x = _images(2, 32, scale=255.0)
    feature_map, pooled = encoder(x)
    assert feature_map.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pooled), x.mean(axis=(1, 2)) / 255.0, rtol=1e-5, atol=1e-6
    )
    # The encoder plugs into any head, and the model survives a .keras round trip.
    model = build_model("bce", num_classes=3, image_size=32, encoder=f"savedmodel:{path}")
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)["scores"]),
        keras.ops.convert_to_numpy(model(x)["scores"]),
        atol=1e-6,
    )


def test_savedmodel_missing_path(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_encoder(f"savedmodel:{tmp_path / 'nothing'}", 32)


def _bn_state(encoder):
    bn = encoder.get_layer("tiny").get_layer("bn0")
    return [keras.ops.convert_to_numpy(v).copy() for v in bn.weights]


def test_freeze_then_fine_tune():
    keras.utils.set_random_seed(0)
    model = build_model("bce", num_classes=3, image_size=32, freeze_encoder=True)
    encoder = get_encoder(model)
    assert not encoder.trainable and len(model.trainable_weights) == 2  # the Dense head
    x = _images(4, 32)
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    before = _bn_state(encoder)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.train_on_batch(x, y)
    # Frozen: kernels and BatchNorm moving statistics (inference mode) unchanged.
    for old, new in zip(before, _bn_state(encoder), strict=True):
        np.testing.assert_array_equal(old, new)

    set_encoder_trainable(model, True)
    assert len(model.trainable_weights) > 2
    assert model.get_config()["freeze_encoder"] is False
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.train_on_batch(x, y)
    after = _bn_state(encoder)
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_get_encoder_on_model_without_one():
    inputs = keras.Input((4,))
    with pytest.raises(UsageError, match="no 'encoder' layer"):
        get_encoder(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


def test_weights_file_path_must_exist_not_downloaded(tmp_path):
    # A path-like string is never treated as a download.
    assert not os.path.exists(tmp_path / "x.weights.h5")
    with pytest.raises(UsageError):
        build_encoder("resnet50", 32, weights=str(tmp_path / "x.weights.h5"))


# ---- the Encoder object ------------------------------------------------------------------------


def test_encoder_object_describes_its_network():
    encoder = Encoder.from_name("tiny", 64)
    assert encoder.name == "tiny" and encoder.image_size == 64 and encoder.spec is None
    assert encoder.network.name == ENCODER_LAYER_NAME
    assert (encoder.output_dim, encoder.feature_grid) == (128, (8, 8))
    assert encoder.normalization == encoder.pixel_normalization == "unit"
    x = _images(2, 64, scale=255.0)
    for a, b in zip(encoder(x), encoder.network(x), strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    encoder.trainable = False
    assert not encoder.network.trainable and encoder.network.trainable_weights == []
    assert "Encoder('tiny', image_size=64" in repr(encoder)
    resnet = Encoder.from_name("resnet50", 64)
    assert resnet.normalization == "caffe" and resnet.feature_grid == (2, 2)


def test_encoder_object_serialises():
    encoder = Encoder.from_name("small", 32, trainable=False)
    serialised = keras.saving.serialize_keras_object(encoder)
    assert serialised["registered_name"] == "kerasmlic>Encoder"
    assert serialised["config"] == {
        "name": "small",
        "image_size": 32,
        "trainable": False,
        "spec": None,
    }
    rebuilt = keras.saving.deserialize_keras_object(serialised)
    assert isinstance(rebuilt, Encoder) and rebuilt.get_config() == encoder.get_config()
    assert rebuilt.network is not encoder.network  # a new architecture, fresh weights


def test_a_model_takes_an_encoder_object(tmp_path):
    keras.utils.set_random_seed(0)
    encoder = Encoder.from_name("tiny", 32)
    network = encoder.network
    model = BCEModel(num_classes=3, image_size=32, encoder=encoder)
    # The object's network (and its weights) is the model's encoder layer.
    assert model.encoder is encoder and get_encoder(model) is network
    config = model.get_config()
    assert config == build_model("bce", num_classes=3, image_size=32).get_config()
    assert config["encoder"] == "tiny" and model.normalization == "raw"
    x = _images(2, 32, scale=255.0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("encoder")(x)[1]),
        keras.ops.convert_to_numpy(encoder(x)[1]),
    )
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "m.keras"), compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)["scores"]),
        keras.ops.convert_to_numpy(model(x)["scores"]),
        atol=1e-6,
    )
    # The model's freeze_encoder sets the object's trainable state.
    frozen = BCEModel(num_classes=3, image_size=32, encoder=encoder, freeze_encoder=True)
    assert not encoder.trainable and frozen.get_config()["freeze_encoder"] is True


def test_an_encoder_object_must_fit_the_model():
    encoder = Encoder.from_name("tiny", 32)
    with pytest.raises(UsageError, match="built for 32 px images, the model for 64"):
        build_model("bce", num_classes=3, image_size=64, encoder=encoder)
    with pytest.raises(UsageError, match="carries its own weights"):
        build_model(
            "bce", num_classes=3, image_size=32, encoder=encoder, encoder_weights="imagenet"
        )
