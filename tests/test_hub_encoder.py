"""keras-hub backbones as encoders (``hub:<preset>``), on tiny random presets written here.

Nothing is downloaded: each preset is a ``Backbone.save_to_preset`` folder in a
temp dir (a ResNet with a ResNet image converter, the same ResNet without one,
a ViT with a ViT image converter, a two-tower SigLIP and a CLIP vision tower).
"""

import json
import os
import shutil
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))

from helpers_models import run_model_battery, tiny_dataset  # noqa: E402

from kerasmlic.data.preprocessing import resize_image, to_model_input  # noqa: E402
from kerasmlic.errors import UsageError  # noqa: E402
from kerasmlic.export import export_saved_model  # noqa: E402
from kerasmlic.models.baselines import BCEModel  # noqa: E402
from kerasmlic.models.encoders import (  # noqa: E402
    Encoder,
    build_encoder,
    default_image_size,
    encoder_normalization,
    encoder_spec,
    get_encoder,
    set_encoder_trainable,
)
from kerasmlic.models.hub_encoder import DEFAULT_SCALE  # noqa: E402
from kerasmlic.models.registry import build_model  # noqa: E402

SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_DIM, VIT_PATCH = 16, 8
RESNET_CHANNELS = 16


def _tiny_resnet():
    # The first stack must have 64 filters (keras-hub checks it); the rest is tiny.
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, RESNET_CHANNELS],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(None, None, 3),
    )


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """Local presets: ``resnet`` (ImageNet mean/std converter), ``bare``, ``vit``,
    ``siglip`` (vision and text towers), ``clip`` (a vision tower alone)."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("presets")
    resnet = _tiny_resnet()
    resnet.save_to_preset(str(root / "resnet"))
    keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE),
        scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
    ).save_to_preset(str(root / "resnet"))
    _tiny_resnet().save_to_preset(str(root / "bare"))
    vit = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3),
        patch_size=VIT_PATCH,
        num_layers=1,
        num_heads=2,
        hidden_dim=VIT_DIM,
        mlp_dim=32,
    )
    vit.save_to_preset(str(root / "vit"))
    keras_hub.layers.ViTImageConverter(
        image_size=(SIZE, SIZE), scale=1.0 / 127.5, offset=-1.0
    ).save_to_preset(str(root / "vit"))
    vision = dict(patch_size=VIT_PATCH, hidden_dim=VIT_DIM, num_layers=1, num_heads=2)
    siglip = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            **vision, intermediate_dim=32, image_shape=(SIZE, SIZE, 3)
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=20,
            embedding_dim=VIT_DIM,
            hidden_dim=VIT_DIM,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
            max_sequence_length=8,
        ),
    )
    siglip.save_to_preset(str(root / "siglip"))
    keras_hub.layers.SigLIPImageConverter(
        image_size=(SIZE, SIZE), scale=1.0 / 127.5, offset=-1.0
    ).save_to_preset(str(root / "siglip"))
    keras_hub.models.CLIPVisionEncoder(
        **vision, intermediate_dim=32, image_shape=(SIZE, SIZE, 3)
    ).save_to_preset(str(root / "clip"))
    names = ("resnet", "bare", "vit", "siglip", "clip")
    return {name: f"hub:{root / name}" for name in names}


def _pixels(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def _backbone(name):
    return keras_hub.models.Backbone.from_preset(name[len("hub:") :])


def _backbone_in(encoder):
    """Return the encoder's keras-hub backbone layer, found by type.

    Auto-generated layer names (``res_net_backbone_2``) depend on what the process
    built before, so a name would tie the test to the tests that ran first.
    """
    (backbone,) = [
        layer for layer in encoder.layers if isinstance(layer, keras_hub.models.Backbone)
    ]
    return backbone


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_cnn_map_and_preset_normalisation(presets):
    encoder = build_encoder(presets["resnet"], SIZE)
    pixels = _pixels()
    feature_map, pooled = (_np(t) for t in encoder(pixels))
    # Stem stride 2, max-pool 2, second stack stride 2: 32 / 8 = 4.
    assert feature_map.shape == (2, 4, 4, RESNET_CHANNELS)
    assert pooled.shape == (2, RESNET_CHANNELS)
    np.testing.assert_allclose(pooled, feature_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # The converter's ImageNet mean/std runs inside the encoder on 0-255 pixels.
    expected = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    reference = _np(_backbone(presets["resnet"])(expected.astype(np.float32)))
    np.testing.assert_allclose(feature_map, reference, rtol=1e-4, atol=1e-4)
    assert encoder.name == "encoder"
    assert encoder_normalization(presets["resnet"]) == "raw"


def test_preset_without_converter_gets_unit_default(presets):
    encoder = build_encoder(presets["bare"], SIZE)
    pixels = _pixels(seed=1)
    feature_map, _ = encoder(pixels)
    reference = _backbone(presets["bare"])(pixels * np.float32(DEFAULT_SCALE))
    np.testing.assert_allclose(_np(feature_map), _np(reference), rtol=1e-4, atol=1e-4)
    assert DEFAULT_SCALE == pytest.approx(1 / 255)


def test_vit_tokens_become_a_patch_grid(presets):
    encoder = build_encoder(presets["vit"], SIZE)
    pixels = _pixels(seed=2)
    feature_map, pooled = (_np(t) for t in encoder(pixels))
    grid = SIZE // VIT_PATCH
    assert feature_map.shape == (2, grid, grid, VIT_DIM)
    tokens = _np(_backbone(presets["vit"])(pixels / 127.5 - 1.0))
    assert tokens.shape == (2, 1 + grid * grid, VIT_DIM)
    # Class token dropped from the regions, kept as the pooled vector.
    np.testing.assert_allclose(
        feature_map, tokens[:, 1:].reshape(2, grid, grid, VIT_DIM), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(pooled, tokens[:, 0], rtol=1e-4, atol=1e-5)


def test_siglip_tokens_are_regions_and_its_pooling_head_the_vector(presets):
    encoder = build_encoder(presets["siglip"], SIZE)
    pixels = _pixels(seed=6)
    feature_map, pooled = (_np(t) for t in encoder(pixels))
    grid = SIZE // VIT_PATCH
    assert feature_map.shape == (2, grid, grid, VIT_DIM)
    vision = _backbone(presets["siglip"]).vision_encoder
    taps = keras.Model(vision.input, [vision.post_layer_norm.output, vision.output])
    tokens, head = (_np(t) for t in taps({"images": pixels / 127.5 - 1.0}))
    assert tokens.shape == (2, grid * grid, VIT_DIM)  # no class token
    np.testing.assert_allclose(
        feature_map, tokens.reshape(2, grid, grid, VIT_DIM), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(pooled, head, rtol=1e-4, atol=1e-5)


def test_clip_vision_tower_without_converter(presets):
    encoder = build_encoder(presets["clip"], SIZE)
    pixels = _pixels(seed=7)
    feature_map, pooled = (_np(t) for t in encoder(pixels))
    tokens = _np(_backbone(presets["clip"])({"images": pixels * np.float32(DEFAULT_SCALE)}))
    grid = SIZE // VIT_PATCH
    np.testing.assert_allclose(
        feature_map, tokens[:, 1:].reshape(2, grid, grid, VIT_DIM), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(pooled, tokens[:, 0], rtol=1e-4, atol=1e-5)


def test_fixed_image_shape_sets_the_size_and_refuses_another(presets):
    assert default_image_size(presets["vit"]) == SIZE
    assert default_image_size(presets["resnet"]) is None
    assert default_image_size("tiny") is None
    with pytest.raises(UsageError, match=f"takes {SIZE}x{SIZE} images, not 64") as err:
        build_encoder(presets["vit"], 64)
    assert f"--image-size {SIZE}" in _one_line(err)
    with pytest.raises(UsageError, match="not 48"):
        build_model("bce", num_classes=3, image_size=48, encoder=presets["vit"])
    # A CNN preset takes any size.
    feature_map, _ = build_encoder(presets["resnet"], 64)(np.zeros((1, 64, 64, 3), "f4"))
    assert feature_map.shape == (1, 8, 8, RESNET_CHANNELS)


def test_missing_or_unusable_preset_is_one_line(tmp_path, presets):
    with pytest.raises(UsageError, match="keras-hub preset not found") as err:
        build_encoder(f"hub:{tmp_path / 'nope'}", SIZE)
    _one_line(err)
    with pytest.raises(UsageError, match="not a keras-hub preset folder") as err:
        build_encoder(f"hub:{tmp_path}", SIZE)
    _one_line(err)
    with pytest.raises(UsageError, match="come from its preset") as err:
        build_encoder(presets["resnet"], SIZE, weights="imagenet")
    _one_line(err)
    with pytest.raises(UsageError, match="unknown encoder"):
        build_encoder("hub:", SIZE)


def test_weights_file_replaces_the_preset_weights(tmp_path, presets):
    encoder = build_encoder(presets["resnet"], SIZE)
    backbone = _backbone_in(encoder)
    backbone.set_weights([w * 0.5 for w in backbone.get_weights()])
    path = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(path)
    reloaded = build_encoder(presets["resnet"], SIZE, weights=path)
    pixels = _pixels(seed=3)
    np.testing.assert_allclose(_np(reloaded(pixels)[0]), _np(encoder(pixels)[0]), atol=1e-5)


def test_mixed_precision_keeps_normalisation_in_float32(presets):
    pixels = _pixels(seed=8)
    reference = build_encoder(presets["vit"], SIZE)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build_encoder(presets["vit"], SIZE)
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.get_layer("preset_normalization").compute_dtype == "float32"
    assert mixed.get_layer("preset_normalization").mode == "affine"
    assert _backbone_in(mixed).compute_dtype == "float16"
    feature_map, pooled = mixed(pixels)
    assert feature_map.dtype == "float16" and pooled.dtype == "float16"
    expected = _np(reference(pixels)[0])
    # float16 rounding only (same weights: both read the preset).
    np.testing.assert_allclose(_np(feature_map).astype("f4"), expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    "preset,model",
    [
        ("resnet", "bce"),
        # About 40 s on 2 cores: `make test-all`; the ViT's one-step round trips stay
        # in the default run.
        pytest.param("vit", "seq2seq_attention", marks=pytest.mark.slow),
    ],
)
def test_model_battery_on_a_preset(presets, preset, model):
    # Fit (falling loss), config and .keras round trips, tf.function + XLA,
    # one mixed_float16 step: the shared battery every model passes.
    run_model_battery(model, encoder=presets[preset], epochs=2)


@pytest.mark.parametrize(
    "preset,model", [("vit", "bce"), ("resnet", "seq2seq_attention"), ("siglip", "bce")]
)
def test_one_step_and_keras_round_trip(tmp_path, presets, preset, model):
    keras.utils.set_random_seed(0)
    net = build_model(model, num_classes=5, image_size=SIZE, encoder=presets[preset])
    net.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = tiny_dataset(
        8,
        SIZE,
        5,
        with_sequences=net.uses_sequences,
        max_labels=net.get_config().get("max_labels") or 4,
        normalization=net.normalization,
    )
    loss = net.fit(data, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    assert np.isfinite(loss)
    path = str(tmp_path / "model.keras")
    net.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = next(iter(data))[0]
    np.testing.assert_allclose(
        _np(loaded(x)["scores"]), _np(net(x)["scores"]), rtol=1e-5, atol=1e-6
    )


def _encoder_state(model):
    return [np.array(v) for v in get_encoder(model).weights]


def test_freeze_then_fine_tune(presets):
    keras.utils.set_random_seed(0)
    model = build_model("bce", num_classes=5, image_size=SIZE, encoder=presets["resnet"])
    data = tiny_dataset(8, SIZE, 5, normalization=model.normalization)
    set_encoder_trainable(model, False)
    assert model.get_config()["freeze_encoder"] is True
    assert get_encoder(model).trainable_weights == []
    before, head = _encoder_state(model), np.array(model.get_layer("logits").kernel)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    # Frozen: kernels and BatchNorm moving statistics as loaded; the head learns.
    for a, b in zip(before, _encoder_state(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(head, np.array(model.get_layer("logits").kernel))
    set_encoder_trainable(model, True)
    assert model.get_config()["freeze_encoder"] is False
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    changed = [not np.allclose(a, b) for a, b in zip(before, _encoder_state(model), strict=True)]
    assert sum(changed) > len(changed) // 2


def test_spec_rebuilds_without_the_preset(tmp_path, presets):
    folder = tmp_path / "vit_copy"
    shutil.copytree(presets["vit"][len("hub:") :], folder)
    name = f"hub:{folder}"
    encoder = build_encoder(name, SIZE)
    spec = encoder_spec(encoder)
    json.dumps(spec)
    assert spec["scale"] == pytest.approx(1 / 127.5) and spec["offset"] == -1.0
    assert encoder_spec(build_encoder("tiny", SIZE)) is None
    model = build_model("bce", num_classes=3, image_size=SIZE, encoder=name)
    model.save(str(tmp_path / "model.keras"))
    shutil.rmtree(folder)
    rebuilt = build_encoder(name, SIZE, spec=spec)
    rebuilt.set_weights(encoder.get_weights())
    pixels = _pixels(seed=4)
    for a, b in zip(rebuilt(pixels), encoder(pixels), strict=True):
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-6)
    # The model's config carries the spec, so the .keras file loads without the preset.
    assert model.get_config()["encoder_spec"] == spec
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    np.testing.assert_allclose(
        _np(loaded(pixels)["scores"]), _np(model(pixels)["scores"]), atol=1e-6
    )
    # The spec applies only where given: the name alone still needs the preset.
    with pytest.raises(UsageError, match="keras-hub preset not found"):  # scope ended
        build_encoder(name, SIZE)


def test_export_and_serving_bytes(tmp_path, presets):
    keras.utils.set_random_seed(0)
    model = build_model("bce", num_classes=3, image_size=SIZE, encoder=presets["resnet"])
    path = export_saved_model(model, str(tmp_path / "served"), class_names=["a", "b", "c"])
    served = tf.saved_model.load(path)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (40, 24, 3), dtype=np.uint8) for _ in range(2)]
    encoded = tf.constant([tf.io.encode_png(i).numpy() for i in images])
    out = served.signatures["serving_default"](image_bytes=encoded)
    pixels = tf.stack([resize_image(tf.constant(i), SIZE) for i in images])
    # The graph hands the model uint8 pixels (model.normalization "raw"); it normalises.
    assert model.normalization == "raw"
    expected = model(to_model_input(pixels, model.normalization), training=False)["scores"]
    np.testing.assert_allclose(out["scores"].numpy(), _np(expected), atol=1e-4)
    explained = served.signatures["explain"](image_bytes=encoded)
    assert explained["heatmaps"].shape[2:] == (4, 4)


def test_encoder_object_from_a_preset_travels_without_it(tmp_path, presets):
    folder = tmp_path / "resnet_copy"
    shutil.copytree(presets["resnet"][len("hub:") :], folder)
    name = f"hub:{folder}"
    keras.utils.set_random_seed(0)
    encoder = Encoder.from_name(name, SIZE)
    assert encoder.normalization == "raw" and encoder.pixel_normalization == "affine"
    assert (encoder.output_dim, encoder.feature_grid) == (RESNET_CHANNELS, (4, 4))
    assert encoder.spec == encoder_spec(encoder.network) is not None
    # A notebook user's model: the Encoder object in place of a name.
    model = BCEModel(num_classes=3, image_size=SIZE, encoder=encoder)
    assert model.get_config()["encoder"] == name
    assert model.get_config()["encoder_spec"] == encoder.spec
    model.save(str(tmp_path / "model.keras"))
    serialised = keras.saving.serialize_keras_object(encoder)
    shutil.rmtree(folder)
    # Both rebuild from the stored spec, without the preset.
    rebuilt = keras.saving.deserialize_keras_object(serialised)
    assert rebuilt.spec == encoder.spec and rebuilt.feature_grid == (4, 4)
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    pixels = _pixels(seed=9)
    np.testing.assert_allclose(
        _np(loaded(pixels)["scores"]), _np(model(pixels)["scores"]), atol=1e-6
    )
