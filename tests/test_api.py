"""The notebook API behind ``import kerasmlic`` (kerasmlic/api.py), at tiny settings.

The facade loads the API lazily: ``import kerasmlic`` starts no TensorFlow,
and every name it lists resolves. Then one short fit through the API's
calls (the objects ``kerasmlic train`` uses, from kerasmlic.training.setup).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers_training import REPO, tiny_shards

import kerasmlic
from kerasmlic import api


def test_import_kerasmlic_starts_no_tensorflow():
    code = (
        "import sys, kerasmlic\n"
        "assert 'kerasmlic.api' not in sys.modules  # loaded on first use\n"
        "config = kerasmlic.default_config()\n"
        "assert config['model']['name'] and callable(kerasmlic.build_model)\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_is_listed():
    assert kerasmlic.__all__ == ["__version__", *api.__all__]
    for name in kerasmlic.__all__:
        assert getattr(kerasmlic, name) is not None, name
    assert set(kerasmlic.__all__) <= set(dir(kerasmlic))
    assert kerasmlic.build_model is api.build_model
    with pytest.raises(AttributeError, match="no_such_name"):
        kerasmlic.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # Its own folder: tiny_shards reuses a built folder, and other modules want 64/32 there.
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "api-tiny-data"), train=16, val=8)


def test_a_notebook_fit_through_the_api(shards, tmp_path):
    config = kerasmlic.default_config()
    config["model"]["name"] = "rnn_input"
    config["data"].update(dir=shards, image_size=32, batch_size=4)
    config["train"].update(epochs=1, learning_rate=2e-3)
    model = kerasmlic.build_model(config)
    assert "Total params" in kerasmlic.model_summary(model)

    data = kerasmlic.make_datasets(config, model)
    assert isinstance(data, kerasmlic.TrainingSetup)
    assert data.steps_per_epoch == 4 and len(data.class_names) == 80
    images, targets = next(iter(data.train_ds))
    # A decoder model trains on label sequences as well as the multi-hot targets.
    assert images.shape == (4, 32, 32, 3) and set(targets) >= {"multi_hot", "sequence"}
    _, val_targets = next(iter(data.val_ds))
    assert val_targets["sequence"].shape[1] == targets["sequence"].shape[1]

    kerasmlic.compile_model(model, data)
    best_path = str(tmp_path / "best.keras")
    evaluation = kerasmlic.validation(data, best_path=best_path, log=lambda *a: None)
    callbacks = kerasmlic.callbacks(evaluation)
    assert callbacks[-1] is evaluation
    history = model.fit(
        data.train_ds,
        epochs=1,
        steps_per_epoch=data.steps_per_epoch,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,
    )
    assert np.isfinite(history.history["loss"][0]) and "val_mAP" in history.history
    assert evaluation.best_epoch == 1 and os.path.isfile(best_path)

    best = kerasmlic.load_model(best_path)
    results = kerasmlic.evaluate(best, shards, batch_size=8)
    assert results["mAP"] == pytest.approx(evaluation.best, abs=1e-6)
    assert "mAP" in kerasmlic.format_results(results, top=3)
    out = kerasmlic.predict(best, shards, batch_size=8)
    assert out["scores"].shape == (8, 80)
