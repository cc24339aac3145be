"""SavedModel export for TF Serving (kerasmlic.export).

Tiny models (tiny encoder, 32 px, 5 classes, untrained weights with a spread
linear head) keep this file to a few exports. Tolerance for "SavedModel scores
== Keras scores": 1e-5 absolute. Both sides see bit-identical pixels: PNG is
lossless (the Keras side uses the original uint8 array, no decoder at all) and
for JPEG the Keras side decodes with the same ``tf.io.decode_image`` kernel.
The remaining gap is float32 rounding from graph rewrites (op fusion, another
batch size), observed ~1e-7. Label sets must match exactly.
"""

import base64
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data.preprocessing import (
    decode_image,
    normalize,
    preprocess_for_eval,
    quantize_pixels,
    resize_image,
    to_model_input,
)
from kerasmlic.errors import UsageError
from kerasmlic.export import export_saved_model
from kerasmlic.export import saved_model as sm
from kerasmlic.export.rest import request_body
from kerasmlic.export.serving import decode_batch, rank_labels
from kerasmlic.export.warmup import WARMUP_FILE, read_warmup_requests
from kerasmlic.models.base import Thresholds
from kerasmlic.models.registry import build_model

CLASS_NAMES = ["red", "green", "blue", "yellow", "cyan"]
SIZE = 32
ATOL = 1e-5
BIN = os.path.dirname(sys.executable)


def _images(seed=0, n=4):
    """uint8 images of different sizes, with coloured blocks so models see structure."""
    rng = np.random.RandomState(seed)
    images = []
    for i in range(n):
        h, w = 32 + 8 * i, 48 - 4 * i
        img = rng.randint(0, 60, (h, w, 3)).astype(np.uint8)
        y, x = rng.randint(0, h // 2), rng.randint(0, w // 2)
        img[y : y + h // 2, x : x + w // 2, i % 3] = 230
        images.append(img)
    return images


def _png(img):
    return tf.io.encode_png(img).numpy()


def _jpeg(img):
    return tf.io.encode_jpeg(img, quality=90).numpy()


def _keras_outputs(model, pixels_uint8):
    """The Keras model on the serving preprocessing of decoded uint8 images."""
    x = tf.stack([resize_image(tf.constant(p), SIZE) for p in pixels_uint8])
    out = model(to_model_input(x, model.normalization), training=False)
    return {k: np.asarray(v) for k, v in out.items()}


def _expected_label_ids(scores, predicted):
    """Predicted classes per image, by descending score (ties: lower index first)."""
    rows = []
    for s, p in zip(scores, predicted, strict=True):
        ids = np.flatnonzero(p > 0.5)
        rows.append(list(ids[np.argsort(-s[ids], kind="stable")]))
    return rows


def _trim(label_ids, num_labels):
    return [
        list(row[:n]) for row, n in zip(np.asarray(label_ids), np.asarray(num_labels), strict=True)
    ]


def _spread_bce(model, seed=0):
    """Give the untrained linear head spread-out scores and 'calibrated' thresholds."""
    rng = np.random.RandomState(seed)
    dense = model.get_layer("logits")
    dense.kernel.assign(rng.normal(0, 2.0, dense.kernel.shape).astype("float32"))
    # Class 0 always predicted, class 1 never: shows the thresholds are in the graph.
    (thresholds,) = [layer for layer in model.layers if isinstance(layer, Thresholds)]
    thresholds.thresholds.assign(np.array([0.0, 1.5, 0.5, 0.4, 0.6], "float32"))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """bce and seq2seq_attention (greedy, beam-3 with the same weights), exported once."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("saved_models")
    bce = _spread_bce(build_model("bce", num_classes=5, image_size=SIZE))
    greedy = build_model("seq2seq_attention", num_classes=5, image_size=SIZE, decoding="greedy")
    beam = build_model(
        "seq2seq_attention", num_classes=5, image_size=SIZE, decoding="beam", beam_width=3
    )
    beam.set_weights(greedy.get_weights())
    models = {"bce": bce, "greedy": greedy, "beam": beam}
    # The explain signature (gradient graph) is exported for bce only: it
    # doubles a sequence model's export time; test_predict covers its maps.
    paths = {
        name: export_saved_model(
            m, str(root / name), class_names=CLASS_NAMES, explain=name == "bce"
        )
        for name, m in models.items()
    }
    return {"models": models, "paths": paths, "root": root}


@pytest.fixture(scope="module")
def loaded_bce(exports):
    return tf.saved_model.load(exports["paths"]["bce"])


# --- the ranking op ---------------------------------------------------------


def test_rank_labels_hand_worked_eager_and_in_tf_data():
    scores = np.array([[0.9, 0.2, 0.7, 0.6], [0.1, 0.3, 0.2, 0.4], [0.5, 0.8, 0.5, 0.1]], "f4")
    predicted = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], "f4")
    names = tf.constant(["a", "b", "c", "d"])
    expected_ids = [[0, 2, 3], [-1, -1, -1], [0, 2, -1]]  # tie 0.5/0.5: lower index first
    expected_labels = [[b"a", b"c", b"d"], [b"", b"", b""], [b"a", b"c", b""]]

    out = rank_labels(scores, predicted, names)
    assert out["label_ids"].dtype == tf.int32 and out["num_labels"].dtype == tf.int32
    assert out["label_ids"].numpy().tolist() == expected_ids
    assert out["labels"].numpy().tolist() == expected_labels
    assert out["num_labels"].numpy().tolist() == [3, 0, 2]
    np.testing.assert_array_equal(out["scores"].numpy(), scores)

    ds = tf.data.Dataset.from_tensor_slices((scores, predicted)).batch(3)
    (mapped,) = list(ds.map(lambda s, p: rank_labels(s, p, names)))
    assert mapped["label_ids"].numpy().tolist() == expected_ids
    assert mapped["labels"].numpy().tolist() == expected_labels

    empty = rank_labels(np.zeros((0, 4), "f4"), np.zeros((0, 4), "f4"), names)
    assert empty["label_ids"].shape == (0, 0) and empty["num_labels"].shape == (0,)


def test_decode_batch_eager_and_in_tf_data():
    pixels = _images(seed=6, n=3)
    encoded = [_png(p) for p in pixels]
    resized = [resize_image(tf.constant(p), SIZE) for p in pixels]
    expected = np.stack([quantize_pixels(r).numpy() for r in resized])
    eager = decode_batch(tf.constant(encoded), SIZE)
    assert eager.shape == (3, SIZE, SIZE, 3) and eager.dtype == tf.uint8
    np.testing.assert_array_equal(eager.numpy(), expected)
    # Each element is exactly what the evaluation pipeline makes of the same bytes.
    for row, data in zip(eager.numpy(), encoded, strict=True):
        np.testing.assert_array_equal(row, preprocess_for_eval(data, SIZE).numpy())
    ds = tf.data.Dataset.from_tensor_slices(encoded).batch(3)
    (mapped,) = list(ds.map(lambda b: decode_batch(b, SIZE)))
    np.testing.assert_array_equal(mapped.numpy(), expected)
    # A plain Keras model naming its scaling gets float32 normalised images.
    unit = decode_batch(tf.constant(encoded), SIZE, "unit")
    assert unit.dtype == tf.float32
    np.testing.assert_allclose(unit.numpy(), normalize(np.stack(resized), "unit"), atol=1e-7)
    empty = decode_batch(tf.constant([], tf.string), SIZE)
    assert empty.shape == (0, SIZE, SIZE, 3) and empty.dtype == tf.uint8
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"image_bytes\[2\] is not a JPEG, PNG"
    ):
        decode_batch(tf.constant([encoded[0], encoded[1], b"GIF? no"]), SIZE)


# --- layout, versions, assets -----------------------------------------------


def test_layout_versions_and_assets(exports, tmp_path):
    path = exports["paths"]["bce"]
    assert os.path.basename(path) == "1"
    assert sorted(os.listdir(path)) == [
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "saved_model.pb",
        "variables",
    ]
    # TF Serving warm-up: one PredictionLog per batch size, run by the loaded signature.
    requests = read_warmup_requests(os.path.join(path, "assets.extra", WARMUP_FILE))
    assert [(sig, inputs["image_bytes"].shape) for sig, inputs in requests] == [
        ("serving_default", (1,)),
        ("serving_default", (8,)),
    ]
    loaded = tf.saved_model.load(path)
    for sig, inputs in requests:
        out = loaded.signatures[sig](image_bytes=tf.constant(inputs["image_bytes"]))
        assert out["scores"].shape == (len(inputs["image_bytes"]), 5)
    with open(os.path.join(path, "assets", "labels.txt")) as f:
        assert f.read().splitlines() == CLASS_NAMES
    with open(os.path.join(path, "assets", "metadata.json")) as f:
        meta = json.load(f)
    assert meta["model"] == "bce" and meta["num_classes"] == 5 and meta["image_size"] == SIZE
    assert meta["normalization"] == exports["models"]["bce"].normalization == "raw"
    assert meta["pixel_normalization"] == "unit"  # applied inside the model
    assert meta["format_version"] == meta["config"]["format_version"] == 2
    assert meta["config"]["encoder"] == "tiny" and meta["version"] == 1
    assert meta["export_device"] == "no GPU visible"
    for key in ("kerasmlic_version", "tensorflow_version", "export_date", "signatures"):
        assert meta[key]
    with open(os.path.join(exports["paths"]["beam"], "assets", "metadata.json")) as f:
        beam_meta = json.load(f)
    assert beam_meta["decoding"] == "beam" and beam_meta["beam_width"] == 3
    assert "explain" in meta["signatures"] and "explain" not in beam_meta["signatures"]

    # Versions: next free integer, no overwrite, positive integers only.
    model = exports["models"]["bce"]
    base = str(tmp_path / "m")
    os.makedirs(os.path.join(base, "7"))
    os.makedirs(os.path.join(base, "notes"))
    path = export_saved_model(model, base, class_names=CLASS_NAMES, explain=False)
    assert os.path.basename(path) == "8"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    with pytest.raises(UsageError, match="already exists"):
        export_saved_model(model, base, class_names=CLASS_NAMES, version=8)
    for bad in (0, -2, "3", 2.0):
        with pytest.raises(UsageError, match="positive integer"):
            export_saved_model(model, base, class_names=CLASS_NAMES, version=bad)
    with pytest.raises(UsageError, match="5 classes but 4 class names"):
        export_saved_model(model, base, class_names=CLASS_NAMES[:4])
    assert sorted(os.listdir(base)) == ["7", "8", "notes"]  # no temp folder left
    assert sm.existing_versions(base) == [7, 8]


def test_gpu_only_ops_are_detected_and_refused(exports, tmp_path, monkeypatch):
    from tensorflow.core.protobuf import saved_model_pb2

    assert sm.gpu_only_ops(exports["paths"]["beam"]) == []
    proto = saved_model_pb2.SavedModel()
    node = proto.meta_graphs.add().graph_def.library.function.add().node_def.add()
    node.name, node.op = "rnn", "CudnnRNNV3"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "saved_model.pb").write_bytes(proto.SerializeToString())
    assert sm.gpu_only_ops(str(fake)) == ["CudnnRNNV3"]

    monkeypatch.setattr(sm, "gpu_only_ops", lambda path: ["CudnnRNNV3"])
    base = tmp_path / "refused"
    with pytest.raises(UsageError, match="GPU-only ops.*CUDA_VISIBLE_DEVICES=-1"):
        export_saved_model(
            exports["models"]["bce"], str(base), class_names=CLASS_NAMES, explain=False
        )
    assert os.listdir(base) == []  # neither a version nor a temp folder


def test_cpu_only_tracing_switches_off_keras_cudnn_probe(monkeypatch):
    # No GPU here: fake one to check the mechanics of the guard used when an
    # export runs in a process that already sees a GPU.
    import importlib

    keras_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

    real = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config,
        "list_logical_devices",
        lambda kind=None: ["/device:GPU:0"] if kind == "GPU" else real(kind),
    )
    assert keras_rnn._is_gpu_available()  # Keras would pick its cuDNN kernels
    with sm.cpu_only_tracing() as note:
        assert note.startswith("GPU visible") and not keras_rnn._is_gpu_available()
        assert tf.constant(1.0).device.endswith("CPU:0")
    assert keras_rnn._is_gpu_available()  # restored
    monkeypatch.setattr(tf.config, "list_logical_devices", real)
    with sm.cpu_only_tracing() as note:
        assert note == "no GPU visible"


# --- subprocess checks: saved_model_cli and a fresh process without kerasmlic ---

_FRESH_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class _BlockKerasmlic:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "kerasmlic":
                raise ImportError("kerasmlic is blocked in this process")
            return None

    sys.meta_path.insert(0, _BlockKerasmlic())
    try:
        import kerasmlic  # noqa: F401
        sys.exit("kerasmlic is importable")
    except ImportError:
        pass
    import numpy as np
    import tensorflow as tf

    request = json.load(open(sys.argv[1]))
    out = {}
    for name, path in request["models"].items():
        serve = tf.saved_model.load(path).signatures["serving_default"]
        for kind in ("png", "jpeg"):
            data = [open(p, "rb").read() for p in request[kind]]
            result = serve(image_bytes=tf.constant(data))
            for key, value in result.items():
                out[f"{name}/{kind}/{key}"] = value.numpy()
    np.savez(sys.argv[2], **out)
    assert not [m for m in sys.modules if m.split(".")[0] == "kerasmlic"]
    print("ok")
    """
)


class _Background:
    """Subprocesses started together: each spends most of its time importing TF."""

    def __init__(self):
        self.procs = {}
        self.results = {}

    def start(self, key, argv, cwd=None):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
        self.procs[key] = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self, key):
        if key not in self.results:
            out, err = self.procs[key].communicate(timeout=300)
            self.results[key] = (self.procs[key].returncode, out, err)
        return self.results[key]

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def background(exports, tmp_path_factory):
    work = tmp_path_factory.mktemp("subprocesses")
    cli = os.path.join(BIN, "saved_model_cli")
    jobs = _Background()
    jobs.start("show", [cli, "show", "--dir", exports["paths"]["bce"], "--all"])

    # saved_model_cli loads --inputs .npy files with allow_pickle, so an object
    # array of bytes feeds a tf.string input.
    run_pixels = _images(seed=1, n=2)
    run_encoded = [_jpeg(p) for p in run_pixels]
    np.save(work / "in.npy", np.array(run_encoded, dtype=object))
    jobs.start(
        "run",
        [
            cli, "run", "--dir", exports["paths"]["bce"], "--tag_set", "serve",
            "--signature_def", "serving_default",
            "--inputs", f"image_bytes={work / 'in.npy'}", "--outdir", str(work / "run_out"),
        ],
    )  # fmt: skip

    fresh_pixels = _images(seed=2, n=3)
    files = {"png": [], "jpeg": []}
    for i, img in enumerate(fresh_pixels):
        for kind, encode in (("png", _png), ("jpeg", _jpeg)):
            path = work / f"img{i}.{kind}"
            path.write_bytes(encode(img))
            files[kind].append(str(path))
    (work / "request.json").write_text(json.dumps({"models": exports["paths"], **files}))
    (work / "fresh.py").write_text(_FRESH_SCRIPT)
    elsewhere = work / "elsewhere"  # cwd outside the repository
    elsewhere.mkdir()
    jobs.start(
        "fresh",
        [sys.executable, "-I", str(work / "fresh.py"), "../request.json", "../fresh_out.npz"],
        cwd=elsewhere,
    )
    yield {
        "jobs": jobs,
        "work": work,
        "run_encoded": run_encoded,
        "fresh_pixels": fresh_pixels,
        "fresh_files": files,
    }
    jobs.stop()


def test_saved_model_cli_show_lists_the_signatures(background):
    returncode, out, err = background["jobs"].result("show")
    assert returncode == 0, err
    default = out[out.index("signature_def['serving_default']") :]
    default = default[: default.index("Method name is")]
    assert "inputs['image_bytes']" in default and "dtype: DT_STRING" in default
    assert "shape: (-1)" in default
    for key, dtype, shape in (
        ("scores", "DT_FLOAT", "(-1, 5)"),
        ("label_ids", "DT_INT32", "(-1, -1)"),
        ("labels", "DT_STRING", "(-1, -1)"),
        ("num_labels", "DT_INT32", "(-1)"),
    ):
        block = default[default.index(f"outputs['{key}']") :].split("name:")[0]
        assert dtype in block and shape in block, key
    explain = out[out.index("signature_def['explain']") :]
    for key in ("image_bytes", "heatmaps", "explained_ids", "heatmap_sources"):
        assert f"['{key}']" in explain.split("signature_def[")[1]
    images = out[out.index("signature_def['serving_images']") :]
    assert "inputs['images']" in images and "DT_UINT8" in images
    assert "shape: (-1, -1, -1, 3)" in images


def test_saved_model_cli_run_on_jpeg_bytes(exports, background):
    returncode, out, err = background["jobs"].result("run")
    assert returncode == 0, err
    assert "Result for output key labels" in out
    out_dir = background["work"] / "run_out"
    scores = np.load(out_dir / "scores.npy")
    decoded = [decode_image(tf.constant(e)).numpy() for e in background["run_encoded"]]
    ref = _keras_outputs(exports["models"]["bce"], decoded)
    np.testing.assert_allclose(scores, ref["scores"], atol=ATOL)
    ids = _trim(np.load(out_dir / "label_ids.npy"), np.load(out_dir / "num_labels.npy"))
    assert ids == _expected_label_ids(ref["scores"], ref["predicted"])
    labels = np.load(out_dir / "labels.npy", allow_pickle=True)
    assert [[CLASS_NAMES[i] for i in row] for row in ids] == [
        [b.decode() for b in row if b] for row in labels
    ]
    assert all(0 in row and 1 not in row for row in ids)  # thresholds 0.0 and 1.5


def test_fresh_process_without_kerasmlic_matches_keras(exports, background):
    returncode, out, err = background["jobs"].result("fresh")
    assert returncode == 0 and "ok" in out, err[-3000:]
    served = np.load(background["work"] / "fresh_out.npz", allow_pickle=True)
    files = background["fresh_files"]
    for name, model in exports["models"].items():
        for kind in ("png", "jpeg"):
            if kind == "png":
                decoded = background["fresh_pixels"]  # lossless: the original arrays
            else:
                decoded = [decode_image(tf.constant(open(p, "rb").read())) for p in files[kind]]
            ref = _keras_outputs(model, [np.asarray(d) for d in decoded])
            got = {k: served[f"{name}/{kind}/{k}"] for k in ("scores", "label_ids", "num_labels")}
            np.testing.assert_allclose(got["scores"], ref["scores"], atol=ATOL, err_msg=name)
            ids = _trim(got["label_ids"], got["num_labels"])
            assert ids == _expected_label_ids(ref["scores"], ref["predicted"]), (name, kind)
            labels = served[f"{name}/{kind}/labels"]
            assert labels.shape == got["label_ids"].shape
            assert [
                [b.decode() for b in row[:n]]
                for row, n in zip(labels, got["num_labels"], strict=True)
            ] == [[CLASS_NAMES[i] for i in row] for row in ids]
            if name != "bce":  # the decoded sequence holds the same label set
                seq_sets = [sorted(int(t) - 3 for t in row if t >= 3) for row in ref["sequence"]]
                assert [sorted(r) for r in ids] == seq_sets
    # Padding: -1 ids and "" labels after num_labels.
    ids, n = served["bce/png/label_ids"], served["bce/png/num_labels"]
    assert all((row[k:] == -1).all() for row, k in zip(ids, n, strict=True))
    assert all((row[k:] == b"").all() for row, k in zip(served["bce/png/labels"], n, strict=True))


# --- TF Serving's REST payload ----------------------------------------------


def tf_serving_rest_predict(signature, body):
    """Decode a REST body as TF Serving does, run the signature, encode the answer.

    TF Serving (row format, one input): each instance is the input's value, or
    a one-key object naming it; ``{"b64": ...}`` becomes the bytes of a
    DT_STRING element. Outputs come back as one object per instance; string
    outputs as UTF-8 text.
    """
    (name, spec), = signature.structured_input_signature[1].items()  # fmt: skip
    values = []
    for instance in json.loads(body)["instances"]:
        if isinstance(instance, dict) and set(instance) == {name}:
            instance = instance[name]
        if isinstance(instance, dict) and set(instance) == {"b64"}:
            instance = base64.b64decode(instance["b64"])
        values.append(instance)
    outputs = signature(**{name: tf.constant(values, dtype=spec.dtype)})

    def plain(v):
        return v.decode("utf-8") if isinstance(v, bytes) else v

    rows = [
        {key: np.vectorize(plain, otypes=[object])(value.numpy()[i]).tolist()
         if value.dtype == tf.string else value.numpy()[i].tolist()
         for key, value in outputs.items()}
        for i in range(len(values))
    ]  # fmt: skip
    return json.dumps({"predictions": rows})


def test_rest_request_body_matches_the_signature(exports, loaded_bce):
    pixels = _images(seed=3, n=3)
    encoded = [_jpeg(p) for p in pixels]
    signature = loaded_bce.signatures["serving_default"]
    direct = signature(image_bytes=tf.constant(encoded))
    for input_name in (None, "image_bytes"):
        body = request_body(encoded, input_name=input_name)
        instance = json.loads(body)["instances"][0]
        b64 = instance["b64"] if input_name is None else instance["image_bytes"]["b64"]
        assert base64.b64decode(b64) == encoded[0]
        answer = json.loads(tf_serving_rest_predict(signature, body))["predictions"]
        assert len(answer) == 3
        for i, row in enumerate(answer):
            assert set(row) == {"scores", "label_ids", "labels", "num_labels"}
            np.testing.assert_allclose(row["scores"], direct["scores"].numpy()[i], atol=1e-7)
            assert row["label_ids"] == direct["label_ids"].numpy()[i].tolist()
            n = row["num_labels"]
            assert row["labels"][:n] == [CLASS_NAMES[j] for j in row["label_ids"][:n]]


# --- bad and empty input -----------------------------------------------------


def test_bad_bytes_name_the_input_then_the_model_still_answers(loaded_bce):
    serve = loaded_bce.signatures["serving_default"]
    good = _png(_images(seed=4, n=1)[0])
    before = serve(image_bytes=tf.constant([good]))
    for bad in (b"not an image at all", b""):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is not a JPEG"):
            serve(image_bytes=tf.constant([good, bad]))
    after = serve(image_bytes=tf.constant([good]))
    np.testing.assert_array_equal(after["scores"].numpy(), before["scores"].numpy())
    assert after["labels"].numpy().tolist() == before["labels"].numpy().tolist()


@pytest.mark.parametrize("name", ["bce", "beam"])
def test_empty_batch_gives_empty_outputs(exports, name):
    loaded = tf.saved_model.load(exports["paths"][name])
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    assert out["scores"].shape == (0, 5) and out["scores"].dtype == tf.float32
    assert out["label_ids"].shape == (0, 0) and out["label_ids"].dtype == tf.int32
    assert out["labels"].shape == (0, 0) and out["labels"].dtype == tf.string
    assert out["num_labels"].shape == (0,) and out["num_labels"].dtype == tf.int32
    images = loaded.signatures["serving_images"](images=tf.zeros([0, 20, 30, 3], tf.uint8))
    assert images["scores"].shape == (0, 5) and images["label_ids"].shape == (0, 0)


def test_uint8_signature_matches_bytes_signature(loaded_bce):
    img = _images(seed=5, n=1)[0]
    by_bytes = loaded_bce.signatures["serving_default"](image_bytes=tf.constant([_png(img)] * 2))
    by_pixels = loaded_bce.signatures["serving_images"](images=tf.constant(np.stack([img] * 2)))
    np.testing.assert_allclose(by_pixels["scores"], by_bytes["scores"], atol=ATOL)
    assert by_pixels["label_ids"].numpy().tolist() == by_bytes["label_ids"].numpy().tolist()
