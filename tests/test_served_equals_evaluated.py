"""What is served is what was evaluated: the SavedModel on the user's original files
gives the scores ``evaluate`` computed from the shards.

A tiny dataset of RGB JPEGs, grayscale JPEGs, PNGs (one with alpha) and a GIF is
built, a model trained for two epochs, evaluated and exported; then the
SavedModel scores the original files.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers_data import write_tiny_coco
from helpers_training import cli_main
from PIL import Image

from kerasmlic.data import schema
from kerasmlic.data.build import build_split
from kerasmlic.data.manifest import load_manifest, shard_paths
from kerasmlic.metrics import evaluate_predictions


def _mixed_formats(tiny):
    """Re-save images as grayscale JPEG, PNG, PNG with alpha and GIF, by turns."""
    kinds = {}
    for k, img in enumerate(tiny.dataset["images"]):
        path = os.path.join(tiny.images, img["file_name"])
        pixels = Image.open(path).convert("RGB")
        stem = os.path.splitext(img["file_name"])[0]
        kind = ("rgb_jpeg", "gray_jpeg", "png", "png_alpha", "gif")[k % 5]
        if kind == "gray_jpeg":
            pixels.convert("L").save(path, format="JPEG", quality=90)
        elif kind.startswith("png"):
            os.remove(path)
            img["file_name"] = f"{stem}.png"
            if kind == "png_alpha":
                pixels = pixels.convert("RGBA")
                pixels.putalpha(128)
            pixels.save(os.path.join(tiny.images, img["file_name"]))
        elif kind == "gif":
            os.remove(path)
            img["file_name"] = f"{stem}.gif"
            pixels.convert("P").save(os.path.join(tiny.images, img["file_name"]))
        kinds[img["id"]] = kind
    tiny.save()
    return kinds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    tiny = write_tiny_coco(root, num_images=40, image_size=32, seed=3, num_classes=4)
    kinds = _mixed_formats(tiny)
    data = str(root / "shards")
    for split in ("train", "val"):
        build_split(tiny.annotations, tiny.images, split, data, shards=2, progress=False)
    run_dir = str(root / "run")
    args = ["train", "--data", data, "--model", "bce", "--epochs", "2", "--batch-size", "8"]
    assert cli_main([*args, "--image-size", "32", "--run-dir", run_dir]) == 0
    eval_json = str(root / "eval.json")
    assert cli_main(["evaluate", run_dir, "--data", data, "--json", eval_json]) == 0
    exported = str(root / "saved_models" / "tiny")
    assert cli_main(["export", run_dir, "--out", exported, "--no-explain"]) == 0
    with open(eval_json) as f:
        evaluation = json.load(f)
    return {
        "tiny": tiny,
        "kinds": kinds,
        "data": data,
        "run_dir": run_dir,
        "evaluation": evaluation,
        "saved_model": os.path.join(exported, "1"),
    }


def test_every_format_is_stored_byte_for_byte(run):
    tiny = run["tiny"]
    assert load_manifest(run["data"])["splits"]["val"]["reencoded"] == {}
    seen = set()
    for path in shard_paths(run["data"], "val"):
        for record in tf.data.TFRecordDataset(path):
            ex = schema.parse_example(record)
            image_id = int(ex[schema.IMAGE_ID])
            with open(tiny.path_of(image_id), "rb") as f:
                assert ex[schema.IMAGE_ENCODED].numpy() == f.read()
            seen.add(run["kinds"][image_id])
    assert seen == {"rgb_jpeg", "gray_jpeg", "png", "png_alpha", "gif"}


def test_saved_model_on_original_files_scores_as_evaluate(run):
    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.export.run import load_run

    model = load_run(run["run_dir"])["model"]
    evaluated = predict_split(model, run["data"], "val")  # evaluate's own scores
    serve = tf.saved_model.load(run["saved_model"]).signatures["serving_default"]
    files = []
    for image_id in evaluated["image_ids"]:
        with open(run["tiny"].path_of(int(image_id)), "rb") as f:
            files.append(f.read())
    served = np.concatenate(
        [
            serve(image_bytes=tf.constant(files[i : i + 16]))["scores"].numpy()
            for i in range(0, len(files), 16)
        ]
    )
    # Per image, to 1e-5: the same bytes through the same decode-and-resize.
    np.testing.assert_allclose(served, evaluated["scores"], atol=1e-5)
    # And the run's mAP from the SavedModel equals evaluate's.
    metrics = evaluate_predictions(evaluated["y_true"], served, served >= 0.5)
    assert abs(metrics["mAP"] - run["evaluation"]["mAP"]) <= 0.005
    assert run["evaluation"]["num_images"] == len(files) == 40
