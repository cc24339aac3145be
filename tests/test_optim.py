"""The optimiser's schedule: warm-up by epochs or as a fraction of the run."""

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
