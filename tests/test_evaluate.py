"""`kerasmlic evaluate`: calibrated thresholds, the evaluation JSON, bad input."""

import json
import os

import numpy as np
import pytest
from helpers_data import write_tiny_coco
from helpers_training import cli_main, tiny_shards

from kerasmlic.metrics import RESULT_KEYS


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(str(tmp_path_factory.getbasetemp() / "tiny-data"))


@pytest.fixture(scope="module")
def trained_run(shards, tmp_path_factory):
    from kerasmlic.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "bce"
    config = {
        "model": {"name": "bce"},
        "data": {"dir": shards, "image_size": 32, "batch_size": 8},
        "train": {"epochs": 1, "verbose": 0},
        "evaluation": {"calibrate": True},
        "run_dir": str(run_dir),
    }
    return train(config, log=lambda line: None)


def test_calibrated_thresholds_are_saved_and_raise_per_class_f1(trained_run, shards):
    from kerasmlic.evaluation.loading import load_model
    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.metrics import evaluate_predictions
    from kerasmlic.training.calibration import find_thresholds_layers

    model = load_model(os.path.join(trained_run, "best.keras"))
    (layer,) = find_thresholds_layers(model)
    thresholds = layer.thresholds.numpy()
    assert thresholds.shape == (80,) and not np.allclose(thresholds, 0.5)
    with np.load(os.path.join(trained_run, "predictions_val.npz")) as npz:
        scores, predicted = npz["scores"], npz["predicted"]
    np.testing.assert_array_equal(predicted, (scores >= thresholds).astype(np.float32))
    # Fit on the train holdout (the default), where they beat 0.5 class by class;
    # the val figures are reported with them but never chose them.
    held = predict_split(model, shards, "train", holdout=("heldout", 0.1))
    calibrated = evaluate_predictions(held["y_true"], held["scores"], thresholds=thresholds)
    plain = evaluate_predictions(held["y_true"], held["scores"], thresholds=0.5)
    f1 = [[row["F1"] for row in r["per_class"]] for r in (calibrated, plain)]
    assert all(a >= b - 1e-9 for a, b in zip(f1[0], f1[1], strict=True))
    assert sum(f1[0]) > sum(f1[1])
    during = json.loads(open(os.path.join(trained_run, "eval_val.json")).read())
    assert during["thresholds_from"] == "train-holdout"


def test_evaluate_cli_writes_the_json_with_design_keys(trained_run, tmp_path, capsys):
    out = tmp_path / "out" / "eval.json"
    assert cli_main(["evaluate", trained_run, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "top-3" in printed and str(out) in printed
    results = json.loads(out.read_text())
    assert set(results) == {*RESULT_KEYS, "thresholds_from"}
    assert results["thresholds_from"] == "train-holdout"
    assert results["num_images"] == 32 and len(results["per_class"]) == 80
    assert set(results["per_class"][0]) == {"name", "AP", "P", "R", "F1", "support"}
    assert results["per_class"][0]["name"] == "person"
    # Same model, same data: the figures of the training run's own evaluation.
    during = json.loads(open(os.path.join(trained_run, "eval_val.json")).read())
    for key in ("mAP", "OF1_top3", "CF1", "EF1"):
        assert results[key] == pytest.approx(during[key], abs=1e-6)


def test_evaluate_bad_input_is_one_line_and_exit_2(trained_run, tmp_path, capsys):
    other = write_tiny_coco(tmp_path / "coco", num_images=6, num_classes=5)
    from kerasmlic.data.build import build_split

    five = str(tmp_path / "five")
    build_split(other.annotations, other.images, "val", five, progress=False)
    cases = [
        (["evaluate", str(tmp_path / "nope")], "run dir"),
        (["evaluate", str(tmp_path)], "no best.keras"),
        (["evaluate", trained_run, "--split", "test"], "split 'test' not found"),
        (["evaluate", trained_run, "--data", str(tmp_path / "gone")], "does not exist"),
        (["evaluate", trained_run, "--data", five], "do not match the model's class list"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
