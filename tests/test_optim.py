"""The training recipe: the schedule (warm-up by epochs or fraction) and BatchNorm momentum."""

import keras
import pytest

from kerasmlic.training.config import default_config
from kerasmlic.training.optim import make_optimizer


def _rate(optimizer, step):
    if not optimizer.built:
        optimizer.build([keras.Variable(0.0)])
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def test_warmup_fraction_of_the_run_overrides_warmup_epochs():
    train = default_config()["train"]
    train.update(learning_rate=1.0, warmup_epochs=5.0, warmup_fraction=0.1)
    optimizer = make_optimizer(train, steps_per_epoch=10, epochs=10)  # 100 steps, 10 warm-up
    assert _rate(optimizer, 5) == pytest.approx(0.5)
    assert _rate(optimizer, 10) == pytest.approx(1.0)
    assert _rate(optimizer, 55) == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-4)  # cosine midpoint
    train["warmup_fraction"] = None  # back to epochs: 50 warm-up steps
    optimizer = make_optimizer(train, steps_per_epoch=10, epochs=10)
    assert _rate(optimizer, 25) == pytest.approx(0.5)


@pytest.mark.parametrize("momentum, expected", [(None, 0.9), (0.99, 0.99)])
def test_bn_momentum_sets_every_batchnorm_and_the_moving_mean_follows_it(momentum, expected):
    import numpy as np

    from kerasmlic.models.encoders import batchnorm_layers
    from kerasmlic.training import config as config_lib
    from kerasmlic.training.setup import build_model

    config = config_lib.load_config(
        None,
        [f"train.bn_momentum={'null' if momentum is None else momentum}"],
        **{"model.name": "bce", "model.encoder": "small", "data.image_size": 32},
    )
    model = build_model(config, num_classes=5)
    found, pending = [], [model]
    while pending:  # the encoder's CNN is a model nested in the encoder model
        layer = pending.pop()
        found.append(layer)
        pending.extend(getattr(layer, "layers", ()))
    norms = {x.name: x for x in found if isinstance(x, keras.layers.BatchNormalization)}
    assert len(norms) == 7 and {x.momentum for x in norms.values()} == {expected}
    assert sorted(x.name for x in batchnorm_layers(model)) == sorted(norms)
    # One training-mode batch: moving_mean <- m * moving_mean + (1 - m) * batch mean.
    stem = norms["stem_bn"]
    inputs = keras.Input((16, 16, 32))
    probe = keras.Model(inputs, stem(inputs))
    x = np.random.default_rng(0).normal(3.0, 1.0, (4, 16, 16, 32)).astype("float32")
    before = keras.ops.convert_to_numpy(stem.moving_mean)
    probe(x, training=True)
    after = keras.ops.convert_to_numpy(stem.moving_mean)
    want = expected * before + (1 - expected) * x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(after, want, rtol=1e-4, atol=1e-5)
