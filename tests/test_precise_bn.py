"""Precise BatchNorm (``train.precise_bn_batches``): statistics against a hand-run forward pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.errors import UsageError
from kerasmlic.models.encoders import batchnorm_layers, get_encoder
from kerasmlic.training import config as config_lib
from kerasmlic.training.precise_bn import (
    check_precise_batchnorm,
    precise_batchnorm_callback,
    recompute_batchnorm_statistics,
    trainable_batchnorm_layers,
)
from kerasmlic.training.setup import build_model, compile_model, fit_callbacks


def small_bce(**overrides):
    config = config_lib.load_config(
        None,
        [f"{k}={v}" for k, v in overrides.items()],
        **{"model.name": "bce", "model.encoder": "small", "data.image_size": 32},
    )
    return config, build_model(config, num_classes=4)


def image_batches(count, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count * batch, 32, 32, 3)).astype("uint8")
    targets = rng.integers(0, 2, (count * batch, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(batch), images, batch


def hand_statistics(model, images, batch):
    """Per BatchNorm layer, the mean over batches of its input's batch mean and variance.

    The ``small`` CNN is a chain, so it is run layer by layer with each
    BatchNormalization done in NumPy from the batch's own moments, as training does.
    """
    encoder = get_encoder(model)
    cnn = next(layer for layer in encoder.layers if isinstance(layer, keras.Model))
    pixels = encoder.get_layer("pixel_normalization")
    sums = {}
    for start in range(0, len(images), batch):
        x = keras.ops.convert_to_numpy(pixels(images[start : start + batch])).astype("float64")
        for layer in cnn.layers[1:]:
            if isinstance(layer, keras.layers.BatchNormalization):
                mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
                m, v = sums.get(layer.name, (0.0, 0.0))
                sums[layer.name] = (m + mean, v + var)
                gamma = keras.ops.convert_to_numpy(layer.gamma)
                beta = keras.ops.convert_to_numpy(layer.beta)
                x = (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta
            else:
                x = keras.ops.convert_to_numpy(layer(x.astype("float32"))).astype("float64")
    count = len(images) // batch
    return {name: (m / count, v / count) for name, (m, v) in sums.items()}


def test_recomputed_statistics_equal_a_hand_run_forward_pass():
    _, model = small_bce()
    dataset, images, batch = image_batches(3)
    layers = trainable_batchnorm_layers(model)
    assert len(layers) == 7 and {layer.momentum for layer in layers} == {0.9}
    for layer in layers:  # whatever came before must not matter
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 50.0, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 9.0, "float32"))
    assert recompute_batchnorm_statistics(model, dataset.take(10)) == 3  # the dataset ends at 3
    want = hand_statistics(model, images, batch)
    assert set(want) == {layer.name for layer in layers}
    for layer in layers:
        mean, var = want[layer.name]
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-3, atol=1e-4)
    assert {layer.momentum for layer in layers} == {0.9}  # restored for training
    # Two batches only: the average of those two, not of all three.
    assert recompute_batchnorm_statistics(model, dataset.map(lambda x, y: x).take(2)) == 2
    stem = model.get_layer("encoder").get_layer("small").get_layer("stem_bn")
    two = hand_statistics(model, images[: 2 * batch], batch)["stem_bn"]
    np.testing.assert_allclose(stem.moving_mean.numpy(), two[0], rtol=1e-4, atol=1e-4)


def test_frozen_batchnorm_keeps_its_statistics():
    _, model = small_bce(**{"model.freeze_encoder": "true"})
    dataset, _, _ = image_batches(2)
    before = [layer.moving_mean.numpy().copy() for layer in batchnorm_layers(model)]
    assert trainable_batchnorm_layers(model) == []
    assert recompute_batchnorm_statistics(model, dataset) == 0
    after = [layer.moving_mean.numpy() for layer in batchnorm_layers(model)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("use_ema", [False, True])
def test_the_callback_runs_before_validation_inside_fit(use_ema):
    overrides = {"train.precise_bn_batches": 2, "train.use_ema": str(use_ema).lower()}
    config, model = small_bce(**overrides)
    dataset, images, batch = image_batches(3, seed=1)
    callback = precise_batchnorm_callback(config, dataset)
    seen, raw = {}, {}

    class Validation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = self.model.get_layer("encoder").get_layer("small")
            seen[epoch] = seen[epoch].get_layer("stem_bn").moving_mean.numpy().copy()
            raw[epoch] = self.model.get_weights()  # the last step's, never the EMA

    callbacks = fit_callbacks(Validation(), callback)
    assert callbacks.index(callback) < len(callbacks) - 1  # before the validation pass
    compile_model(model, config, steps_per_epoch=3, epochs=2, num_classes=4)
    model.fit(dataset, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)
    # What validation saw: the statistics of the final weights over the first 2 batches.
    # With EMA the final weights are the average (fit writes it in at the end).
    want = hand_statistics(model, images[: 2 * batch], batch)["stem_bn"][0]
    np.testing.assert_allclose(seen[1], want, rtol=1e-4, atol=1e-4)
    if use_ema:  # the last step's weights would have given other statistics
        final = model.get_weights()
        model.set_weights(raw[1])
        other = hand_statistics(model, images[: 2 * batch], batch)["stem_bn"][0]
        model.set_weights(final)
        assert np.abs(other - want).max() > 1e-3


def test_off_by_default_and_refused_with_a_strategy():
    config, _ = small_bce()
    assert config["train"]["precise_bn_batches"] == 0
    assert precise_batchnorm_callback(config, None) is None
    with pytest.raises(UsageError, match="precise_bn_batches.*>= 0"):
        config_lib.load_config(None, ["train.precise_bn_batches=-1"], **{"model.name": "bce"})
    mirrored = config_lib.load_config(
        None, ["train.precise_bn_batches=4", "train.strategy=mirrored"], **{"model.name": "bce"}
    )
    with pytest.raises(UsageError, match="default strategy only, not 'mirrored'"):
        check_precise_batchnorm(mirrored)


def test_every_re_estimate_averages_the_same_drawn_batches():
    config, model = small_bce(**{"train.precise_bn_batches": 2})
    dataset, _, _ = image_batches(3, seed=2)
    # A stream that reshuffles on every iterator: a fresh draw would differ each epoch.
    stream = dataset.unbatch().shuffle(12, reshuffle_each_iteration=True).batch(4).repeat()
    callback = precise_batchnorm_callback(config, stream)
    callback.set_model(model)
    stem = model.get_layer("encoder").get_layer("small").get_layer("stem_bn")
    callback.on_epoch_end(0)
    first = stem.moving_mean.numpy().copy()
    callback.on_epoch_end(1)
    np.testing.assert_array_equal(stem.moving_mean.numpy(), first)
    fresh = recompute_batchnorm_statistics(model, stream.take(2))
    assert fresh == 2 and not np.allclose(stem.moving_mean.numpy(), first)
