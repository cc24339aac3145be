"""kerasmlic predict / export from a run directory, and the explanation maps.

Run directories are laid out as ``kerasmlic train`` writes them
(kerasmlic.evaluation.rundir) with tiny untrained models, so these tests do not
train.
"""

import argparse
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from kerasmlic.cli.serve import add_export_parser, add_predict_parser
from kerasmlic.data.preprocessing import decode_image, resize_image, to_model_input
from kerasmlic.errors import UsageError
from kerasmlic.export import export_run
from kerasmlic.export.explain import explain_labels, feature_grid, label_heatmaps
from kerasmlic.export.predict import predict_files
from kerasmlic.models.base import Thresholds
from kerasmlic.models.registry import build_model

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross"]
SIZE = 32


def _make_run(root, model, metrics):
    """A finished run directory as kerasmlic.training writes it."""
    os.makedirs(root)
    model.save(os.path.join(root, "best.keras"))
    config = {"model": {"name": model.registry_name}, "data": {"dir": "shards"}, "run_dir": root}
    with open(os.path.join(root, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    reference = {"path": "shards", "sha256": "0" * 64, "num_classes": 5, "class_names": CLASS_NAMES}
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(reference, f)
    with open(os.path.join(root, "eval_val.json"), "w") as f:
        json.dump({**metrics, "per_class": [{"name": n} for n in CLASS_NAMES]}, f)
    with open(os.path.join(root, "best.json"), "w") as f:
        json.dump({"epoch": 3, "val_mAP": metrics["mAP"]}, f)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    keras.utils.set_random_seed(1)
    root = tmp_path_factory.mktemp("runs")
    bce = build_model("bce", num_classes=5, image_size=SIZE)
    dense = bce.get_layer("logits")
    dense.kernel.assign(np.random.RandomState(1).normal(0, 2.0, dense.kernel.shape))
    (thresholds,) = [layer for layer in bce.layers if isinstance(layer, Thresholds)]
    thresholds.thresholds.assign(np.array([0.0, 0.5, 0.5, 0.5, 2.0], "float32"))
    seq = build_model("seq2seq_attention", num_classes=5, image_size=SIZE, max_labels=2)
    return {
        "bce": _make_run(str(root / "bce"), bce, {"mAP": 0.61, "OF1_top3": 0.52}),
        "seq": _make_run(str(root / "seq"), seq, {"mAP": 0.66, "OF1_top3": 0.55}),
        "models": {"bce": bce, "seq": seq},
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    paths = []
    for i, (h, w) in enumerate(((40, 30), (32, 32), (24, 56))):
        img = rng.randint(0, 80, (h, w, 3)).astype(np.uint8)
        img[h // 4 : h // 2, w // 4 : w // 2, i] = 250
        data = tf.io.encode_png(img) if i == 1 else tf.io.encode_jpeg(img)
        paths.append(str(folder / (f"img{i}.png" if i == 1 else f"img{i}.jpg")))
        with open(paths[-1], "wb") as f:
            f.write(data.numpy())
    bad = str(folder / "notes.jpg")
    with open(bad, "w") as f:
        f.write("this is text, not a JPEG")
    return {"good": paths, "bad": bad, "missing": str(folder / "missing.jpg")}


def _parser():
    parser = argparse.ArgumentParser(prog="kerasmlic")
    sub = parser.add_subparsers(dest="command")
    add_export_parser(sub)
    add_predict_parser(sub)
    return parser


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("saved_models") / "bce")
    args = _parser().parse_args(["export", runs["bce"], "--out", out])
    assert args.func(args) == 0
    return out


def test_export_run_writes_version_metrics_and_refuses_overwrite(runs, exported, capsys):
    version = os.path.join(exported, "1")
    assert os.path.isfile(os.path.join(version, "saved_model.pb"))
    with open(os.path.join(version, "assets", "metadata.json")) as f:
        meta = json.load(f)
    assert meta["model"] == "bce" and meta["metrics"] == {"mAP": 0.61, "OF1_top3": 0.52}
    assert meta["best_epoch"] == 3 and meta["run_dir"] == os.path.abspath(runs["bce"])
    assert meta["training_config"]["model"]["name"] == "bce"
    with open(os.path.join(version, "assets", "labels.txt")) as f:
        assert f.read().splitlines() == CLASS_NAMES
    with pytest.raises(UsageError, match="already exists"):
        export_run(runs["bce"], exported, version=1)
    with pytest.raises(UsageError, match="does not exist"):
        export_run(runs["bce"] + "-nope", exported)
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", runs["bce"], "--out", exported, "--version", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_predict_text_skips_bad_files_and_exits_2(runs, exported, images, capsys):
    good = images["good"]
    paths = [good[0], images["missing"], images["bad"], good[1], good[2]]
    args = _parser().parse_args(["predict", exported, *paths])
    assert args.func(args) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert errors == [
        f"kerasmlic predict: {images['missing']}: No such file or directory",
        f"kerasmlic predict: {images['bad']}: not a JPEG, PNG, GIF, BMP or WebP image",
    ]
    lines = captured.out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == good
    for line in lines:
        # Thresholds 0.0 and 2.0 in the graph: class 0 always, class 4 never.
        assert "circle" in line and "cross" not in line
        names = [item.split(" ")[0] for item in line.split(": ", 1)[1].split(", ")]
        scores = [float(item.split(" ")[1]) for item in line.split(": ", 1)[1].split(", ")]
        assert scores == sorted(scores, reverse=True) and len(names) == len(set(names))
    assert predict_files(exported, good) == 0
    capsys.readouterr()
    # A bare .keras file: class names from the dataset.json beside it.
    assert predict_files(os.path.join(runs["bce"], "best.keras"), good[:1]) == 0
    from_keras = capsys.readouterr().out.strip()
    labels = lambda line: [item.split(" ")[0] for item in line.split(": ", 1)[1].split(", ")]  # noqa: E731
    assert labels(from_keras) == labels(lines[0])


def test_json_from_saved_model_matches_run_dir_and_keras(runs, exported, images, capsys):
    good = images["good"]
    assert predict_files(exported, good, json_output=True) == 0
    served = json.loads(capsys.readouterr().out)
    assert predict_files(runs["bce"], good, json_output=True) == 0
    local = json.loads(capsys.readouterr().out)
    assert served["model"] == local["model"] == "bce" and served["errors"] == []
    model = runs["models"]["bce"]
    for path, a, b in zip(good, served["predictions"], local["predictions"], strict=True):
        assert a["image"] == b["image"] == path
        assert [e["label"] for e in a["labels"]] == [e["label"] for e in b["labels"]]
        np.testing.assert_allclose(
            [e["score"] for e in a["labels"]], [e["score"] for e in b["labels"]], atol=1e-5
        )
        with open(path, "rb") as f:
            pixels = resize_image(decode_image(tf.constant(f.read())), SIZE)
        ref = model(to_model_input(pixels[None], model.normalization), training=False)
        expected = np.flatnonzero(np.asarray(ref["predicted"])[0])
        assert sorted(e["id"] for e in a["labels"]) == expected.tolist()
        assert a["labels"][0]["label"] == CLASS_NAMES[a["labels"][0]["id"]]
        np.testing.assert_allclose(
            a["top"]["score"], float(np.max(np.asarray(ref["scores"]))), atol=1e-5
        )


def test_a_keras_file_from_before_format_versions_predicts_the_same(runs, images, capsys):
    from test_pixel_normalization import _drop_pixel_normalization, _rewrite

    # The run's model as version 1 wrote it: no format_version, no layer entry.
    folder = runs["bce"]
    old = os.path.join(folder, "v1.keras")
    _rewrite(os.path.join(folder, "best.keras"), old, lambda c: c.pop("format_version"),
             _drop_pixel_normalization)  # fmt: skip
    try:
        assert predict_files(old, images["good"], json_output=True) == 0
        from_old = json.loads(capsys.readouterr().out)["predictions"]
    finally:
        os.remove(old)
    assert predict_files(os.path.join(folder, "best.keras"), images["good"], json_output=True) == 0
    current = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["labels"] for p in from_old] == [p["labels"] for p in current]
    assert [p["top"] for p in from_old] == [p["top"] for p in current]


def test_bad_model_dir_and_no_images(tmp_path, images, exported):
    with pytest.raises(UsageError, match="does not exist"):
        predict_files(str(tmp_path / "nothing"), images["good"])
    with pytest.raises(UsageError, match="neither a SavedModel"):
        predict_files(str(tmp_path), images["good"])
    with pytest.raises(UsageError, match="no image files"):
        predict_files(exported, [])


@pytest.mark.parametrize("source", ["bce", "seq", "saved_model"])
def test_explain_writes_one_png_per_image(runs, exported, images, tmp_path, source, capsys):
    out = tmp_path / "explain"
    paths = [*images["good"], images["missing"]]
    model_dir = exported if source == "saved_model" else runs[source]
    assert predict_files(model_dir, paths, json_output=True, explain_dir=str(out)) == 2
    doc = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out)) == ["img0.png", "img1.png", "img2.png"]
    for prediction in doc["predictions"]:
        png = prediction["explain"]
        with open(png, "rb") as f:
            picture = tf.io.decode_png(f.read()).numpy()
        panels = max(len(prediction["labels"]), 1) + 1
        assert picture.shape[1] > 150 * panels  # one panel per label plus the input
        assert picture.std() > 10  # not a blank image
    assert doc["errors"][0]["image"] == images["missing"]


def test_grad_cam_of_a_linear_head_is_the_class_activation_map(runs, tmp_path):
    # scores = sigmoid(W^T mean(F) + b): the gradient w.r.t. F is w_c times a
    # positive constant, so Grad-CAM reduces to CAM (Zhou et al. 2016):
    # relu(F . w_c), scaled to a peak of 1.
    from kerasmlic.models.encoders import get_encoder

    model = runs["models"]["bce"]
    images = tf.random.stateless_uniform((2, SIZE, SIZE, 3), seed=[1, 2], maxval=255.0)
    classes = [[0, 3, 2], [2, 1, 4]]
    _, cams, from_attention = label_heatmaps(model, images, classes)
    assert cams.shape == (2, 3, *feature_grid(model)) and not np.any(from_attention)
    feature_map, _ = get_encoder(model)(images, training=False)
    kernel = np.asarray(model.get_layer("logits").kernel)
    for b in range(2):
        for j, c in enumerate(classes[b]):
            cam = np.maximum(np.asarray(feature_map[b]) @ kernel[:, c], 0)
            np.testing.assert_allclose(cams[b, j], cam / cam.max(), atol=1e-4)
    # Explaining leaves the model as it was: it saves the same weights.
    model.save(tmp_path / "after.keras")
    reloaded = keras.saving.load_model(tmp_path / "after.keras", compile=False)
    assert len(reloaded.weights) == len(model.weights)


def test_attention_maps_follow_the_emitting_step(runs):
    model = runs["models"]["seq"]
    images = tf.random.stateless_uniform((2, SIZE, SIZE, 3), seed=[3, 4], maxval=255.0)
    out = model(images, training=False)
    sequence, attention = np.asarray(out["sequence"]), np.asarray(out["attention"])
    h, w = feature_grid(model)
    class_ids = [[int(t) - 3 for t in row if t >= 3] for row in sequence]
    assert any(class_ids), "the untrained decoder emitted no label"
    maps = explain_labels(model, images, class_ids)
    for b, ids in enumerate(class_ids):
        for j, c in enumerate(ids):
            heat, method = maps[b][j]
            step = list(sequence[b]).index(c + 3)
            row = attention[b, step].reshape(h, w)
            assert method == "attention"
            np.testing.assert_allclose(heat, row / row.max(), atol=1e-6)
    # A class the decoder did not emit falls back to Grad-CAM.
    missing = [next(c for c in range(5) if c not in ids) for ids in class_ids]
    fallback = explain_labels(model, images, [[c] for c in missing])
    assert [m[0][1] for m in fallback] == ["grad-cam", "grad-cam"]
    assert all(0.0 <= m[0][0].min() and m[0][0].max() <= 1.0 for m in fallback)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_predict_turns_exif_rotated_photos_upright_before_scoring(
    exported, tmp_path, orientation, capsys
):
    from PIL import Image

    rng = np.random.RandomState(7)
    upright = rng.randint(0, 80, (24, 40, 3)).astype(np.uint8)
    upright[4:12, 5:20, 0] = 250
    # What a phone writes: the sensor's pixels plus a tag saying how to turn them.
    stored = {3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}
    stored = np.ascontiguousarray(stored[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    phone = str(tmp_path / "phone.png")
    Image.fromarray(stored).save(phone, exif=exif.tobytes())
    plain = str(tmp_path / "upright.png")
    Image.fromarray(upright).save(plain)

    assert predict_files(exported, [phone, plain], json_output=True) == 0
    got = json.loads(capsys.readouterr().out)["predictions"]
    # Same labels in the same order; the scores agree to float32 rounding (the
    # two rows of one batch may take different vectorised kernel paths).
    phone_labels, upright_labels = got[0]["labels"], got[1]["labels"]
    assert [(x["id"], x["label"]) for x in phone_labels] == [
        (x["id"], x["label"]) for x in upright_labels
    ]
    np.testing.assert_allclose(
        [x["score"] for x in phone_labels], [x["score"] for x in upright_labels], atol=1e-5
    )
    assert got[0]["top"]["id"] == got[1]["top"]["id"]
    assert got[0]["top"]["score"] == pytest.approx(got[1]["top"]["score"], abs=1e-5)

    # The SavedModel itself ignores EXIF, like TensorFlow's decoders: the raw
    # file scores as the sideways pixels.
    loaded = tf.saved_model.load(os.path.join(exported, "1"))
    serve = loaded.signatures["serving_default"]
    raw = serve(image_bytes=tf.constant([open(phone, "rb").read()]))["scores"].numpy()
    sideways = serve(image_bytes=tf.constant([tf.io.encode_png(stored).numpy()]))
    np.testing.assert_allclose(raw, sideways["scores"].numpy(), atol=1e-6)
    assert abs(got[0]["top"]["score"] - float(raw[0, got[0]["top"]["id"]])) > 1e-4
