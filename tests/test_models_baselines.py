"""The shared battery and learning test on the non-recurrent models, the factory, and
models composed of an encoder, a head and a loss."""

import inspect

import keras
import numpy as np
import pytest
from helpers_models import learns_tiny_task, run_model_battery, tiny_dataset, tiny_task

from kerasmlic.errors import UsageError
from kerasmlic.models.base import ENCODER_OPTIONS, MultiLabelModel, part_options
from kerasmlic.models.baselines import LinearHead
from kerasmlic.models.head import Head
from kerasmlic.models.losses import BCELoss, Loss
from kerasmlic.models.registry import build_model, get_model_class, model_names, model_options

# Small decoder settings keep label_query's battery to a few seconds.
SMALL_LABEL_QUERY = {"hidden_dim": 32, "num_layers": 1, "num_heads": 2}

MODELS = {
    "bce": {},
    "asl": {},
    "warp": {},
    "softmax": {},
    "joint_embedding": {},
    "joint_embedding_attention": {},
    "label_query": SMALL_LABEL_QUERY,
}

# Held-out mAP threshold on the tiny task (chance = label frequency, ~0.45).
LEARNING_THRESHOLD = 0.8


def test_registry_has_these_models():
    assert set(MODELS) <= set(model_names())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_battery_and_learning(name):
    # One model per registry name: the battery's fit is long enough (64 images,
    # 6 epochs, batch 4) to be the learning test too, sharing its traces.
    result = run_model_battery(name, learn=True, num_train=64, epochs=6, **MODELS[name])
    assert result["losses"][-1] < result["losses"][0]
    assert result["mAP"] >= LEARNING_THRESHOLD, f"{name}: held-out mAP {result['mAP']:.3f}"


@pytest.mark.slow
def test_battery_mobilenet_v3_small_encoder():
    # A keras.applications backbone through the whole battery (weights=None,
    # the 32 px minimum, raw 0-255 inputs).
    run_model_battery("bce", encoder="mobilenet_v3_small", epochs=2, learning_rate=1e-3)


@pytest.mark.parametrize(
    "name,options",
    [
        ("joint_embedding", {"loss": "hinge", "similarity": "dot"}),
        pytest.param("label_query", {"loss": "asl"}, marks=pytest.mark.slow),
    ],
)
def test_loss_options_learn(name, options):
    options = {**MODELS[name], **options}
    score = learns_tiny_task(name, epochs=6, num_train=64, batch_size=4, **options)
    assert score >= LEARNING_THRESHOLD, f"{name} {options}: held-out mAP {score:.3f}"


def _outputs(model, x):
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}


def test_linear_scores_are_activations_of_logits():
    x = tiny_task(4)[0]
    for name in ("bce", "warp", "asl"):
        out = _outputs(build_model(name, num_classes=5, image_size=32), x)
        np.testing.assert_allclose(out["scores"], 1 / (1 + np.exp(-out["logits"])), rtol=1e-5)
    out = _outputs(build_model("softmax", num_classes=5, image_size=32), x)
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_default_threshold():
    model = build_model("softmax", num_classes=5, image_size=32)
    thresholds = keras.ops.convert_to_numpy(model.get_layer("predicted").thresholds)
    np.testing.assert_allclose(thresholds, 1 / (2 * 2.9), rtol=1e-6)
    model = build_model("softmax", num_classes=5, image_size=32, expected_labels=1.0)
    assert model.get_layer("predicted").thresholds.numpy()[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "name,options", [("joint_embedding_attention", {}), ("label_query", SMALL_LABEL_QUERY)]
)
def test_attention_output_is_a_distribution_over_regions(name, options):
    out = _outputs(build_model(name, num_classes=5, image_size=32, **options), tiny_task(3)[0])
    assert out["attention"].shape == (3, 5, 16)  # 4x4 regions at 32 px
    np.testing.assert_allclose(out["attention"].sum(axis=-1), 1.0, rtol=1e-5)


def test_label_query_default_options_build():
    model = build_model("label_query", num_classes=5, image_size=32)
    assert len([la for la in model.layers if la.name.startswith("decoder_")]) == 2
    assert _outputs(model, tiny_task(2)[0])["scores"].shape == (2, 5)


def test_normalization_travels_with_the_encoder():
    # The pipeline gives every model raw uint8 pixels; the encoder's own first
    # layer applies the scaling it was trained with.
    bce = build_model("bce", num_classes=3, image_size=32)
    assert bce.normalization == "raw" and bce.pixel_normalization == "unit"
    model = build_model("warp", num_classes=3, image_size=32, encoder="mobilenet_v3_small")
    assert model.normalization == "raw" and model.pixel_normalization == "raw"


def test_unknown_model_lists_valid_ones():
    with pytest.raises(UsageError, match="valid models: .*asl, bce.*warp"):
        build_model("resnet_bce", num_classes=3, image_size=32)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(UsageError, match="gamma_neg .*valid options: dropout, encoder"):
        build_model("bce", num_classes=3, image_size=32, gamma_neg=2.0)
    assert {"gamma_neg", "gamma_pos", "clip"} <= set(model_options("asl"))


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("joint_embedding", {"loss": "softmax"}, "valid: warp, hinge, bce"),
        ("joint_embedding_attention", {"similarity": "l2"}, "valid: cosine, dot"),
        ("label_query", {"loss": "warp"}, "valid: bce, asl"),
        ("label_query", {"hidden_dim": 30, "num_heads": 4}, "divisible"),
    ],
)
def test_bad_option_values(name, options, match):
    with pytest.raises(UsageError, match=match):
        build_model(name, num_classes=3, image_size=32, **options)


def test_sample_weight_masks_examples():
    model = build_model("bce", num_classes=5, image_size=32)
    x, y = tiny_task(4)
    pred = model(x)
    full = float(model.compute_loss(x, y, pred, sample_weight=np.ones(4, np.float32)))
    half = float(model.compute_loss(x, y, pred, sample_weight=np.array([1, 1, 0, 0], "float32")))
    first = float(model.compute_loss(x[:2], y[:2], {k: v[:2] for k, v in pred.items()}))
    assert half == pytest.approx(first, rel=1e-5) and full != pytest.approx(half)


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax"])
def test_linear_head_pooling_reads_the_feature_map_as_documented(pooling):
    model = build_model("bce", num_classes=3, image_size=32, encoder="tiny", pooling=pooling)
    assert model.get_config()["pooling"] == pooling
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    feature_map = keras.ops.convert_to_numpy(model.get_layer("encoder")(images)[0])
    expected = {
        "avg": feature_map.mean(axis=(1, 2)),
        "max": feature_map.max(axis=(1, 2)),
        "avgmax": feature_map.mean(axis=(1, 2)) + feature_map.max(axis=(1, 2)),
    }[pooling]
    # The logits layer's input is the pooled vector (no dropout by default).
    pooled = keras.Model(model.inputs, model.get_layer("logits").input)(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled), expected, rtol=1e-5, atol=1e-5)


def test_linear_head_refuses_an_unknown_pooling():
    with pytest.raises(UsageError, match="pooling must be one of avg, max, avgmax; got 'sum'"):
        build_model("softmax", num_classes=3, image_size=32, encoder="tiny", pooling="sum")


@pytest.mark.parametrize("name", ["asl", "warp", "softmax"])
def test_every_linear_head_takes_the_pooling_option(name):
    assert model_options(name)["pooling"] == model_options("bce")["pooling"]


# ---- models composed of parts -------------------------------------------------------------------


@pytest.mark.parametrize("name", model_names())
def test_every_model_is_an_encoder_a_head_and_a_loss(name):
    cls = get_model_class(name)
    assert issubclass(cls, MultiLabelModel)
    assert issubclass(cls.head_cls, Head) and issubclass(cls.loss_cls, Loss)
    # Options: the encoder's, then the keyword-only arguments of the head and the loss.
    expected = {**ENCODER_OPTIONS, **part_options(cls.head_cls), **part_options(cls.loss_cls)}
    assert model_options(name) == expected
    signature = inspect.signature(cls).parameters
    assert {k: signature[k].default for k in expected} == expected
    # What the model needs from the input pipeline, stated on the class.
    assert cls.supports_class_weighting is (name == "bce")
    assert cls.uses_sequences is name.startswith(("rnn_", "seq2seq"))


def test_a_model_keeps_its_parts():
    model = build_model("warp", num_classes=3, image_size=32, margin=0.5, threshold=0.4)
    assert isinstance(model.head, LinearHead) and model.head.threshold == 0.4
    assert model.loss_fn.margin == 0.5 and model.sampling_seed is model.loss_fn.seed
    assert model.encoder.network is model.get_layer("encoder")
    assert model.options["margin"] == 0.5 and model.options["encoder"] == "tiny"


class _TemperatureHead(Head):
    """A head in a few lines: linear logits divided by a temperature (an option)."""

    def __init__(self, num_classes, *, temperature=1.0, threshold=0.5):
        super().__init__(num_classes)
        self.temperature, self.threshold = temperature, threshold

    def __call__(self, feature_map, pooled):
        logits = keras.layers.Dense(self.num_classes, dtype="float32", name="logits")(pooled)
        logits = keras.layers.Rescaling(1.0 / self.temperature, dtype="float32", name="temp")(
            logits
        )
        return self.scored_outputs(logits, self.threshold)


@keras.saving.register_keras_serializable(package="kerasmlic_tests")
class _TemperatureModel(MultiLabelModel):
    registry_name = "temperature_test"
    head_cls = _TemperatureHead
    loss_cls = BCELoss


def test_a_new_head_needs_only_its_class_and_a_model_class(tmp_path):
    keras.utils.set_random_seed(0)
    model = _TemperatureModel(num_classes=5, image_size=32, temperature=2.0, freeze_encoder=True)
    assert model.name == "temperature_test" and not model.encoder.trainable
    assert model.get_config()["temperature"] == 2.0
    options = _TemperatureModel.option_defaults()
    assert set(options) == {*ENCODER_OPTIONS, "temperature", "threshold"}
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(tiny_dataset(16), epochs=2, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]
    path = str(tmp_path / "temperature.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = tiny_task(3)[0]
    np.testing.assert_allclose(_outputs(loaded, x)["scores"], _outputs(model, x)["scores"])


def test_an_option_shared_by_head_and_loss_needs_one_default():
    class Shared(Loss):
        def __init__(self, *, threshold=0.7):
            self.threshold = threshold

    with pytest.raises(TypeError, match="option 'threshold' has default 0.5 in LinearHead"):

        class Conflicting(MultiLabelModel):
            head_cls = LinearHead
            loss_cls = Shared
