"""Serving under load: one loaded SavedModel, concurrent clients, bad and odd requests.

TF Serving's own server binary is not installable here; the loaded signature
is the graph it runs, so N client threads call one ``tf.saved_model.load``-ed
``serving_default`` at once, with bad requests (not an image, empty bytes, a
truncated JPEG) and odd valid ones (1x1, 4000x3000, grayscale, PNG with alpha,
GIF, WebP) interleaved with ordinary ones.
"""

import io
import random
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerasmlic.export import export_saved_model
from kerasmlic.models.registry import build_model

SIZE = 32
CLASS_NAMES = ["person", "bicycle", "car", "motorcycle", "airplane"]
THREADS = 8
ATOL = 1e-5


def _encode(img, fmt="JPEG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _picture(w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
    return grid.resize((w, h), Image.Resampling.BILINEAR).convert(mode)


def _valid_images():
    ordinary = {f"ordinary{i}": _encode(_picture(40 + 7 * i, 30 + 5 * i, i)) for i in range(6)}
    rgba = _picture(50, 40, 20).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((50, 40)))
    odd = {
        "1x1": _encode(_picture(1, 1, 21)),
        "4000x3000": _encode(_picture(4000, 3000, 22), quality=80),
        "grayscale": _encode(_picture(60, 45, 23, "L")),
        "png_alpha": _encode(rgba, "PNG"),
        "gif": _encode(_picture(30, 30, 24, "P"), "GIF"),
        "webp": _encode(_picture(30, 20, 25), "WEBP"),
    }
    return {**ordinary, **odd}


def _bad_images():
    whole = _encode(
        Image.fromarray(np.random.default_rng(30).integers(0, 256, (64, 64, 3), np.uint8))
    )
    return {
        "not_an_image": (b"this is not an image" * 5, "is not a JPEG, PNG, GIF, BMP or WebP image"),
        "empty": (b"", "is not a JPEG, PNG, GIF, BMP or WebP image"),
        "truncated_jpeg": (whole[: len(whole) // 2], "cannot be decoded"),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = build_model("bce", num_classes=len(CLASS_NAMES), image_size=SIZE)
    dense = model.get_layer("logits")
    rng = np.random.RandomState(0)
    dense.kernel.assign(rng.normal(0, 2.0, dense.kernel.shape).astype("float32"))
    path = export_saved_model(
        model, str(tmp_path_factory.mktemp("load") / "m"), class_names=CLASS_NAMES, explain=False
    )
    return tf.saved_model.load(path)


def _requests(valid, bad, count, seed):
    """Requests of 1-4 images; about one in three holds exactly one bad image."""
    rng = random.Random(seed)
    names = list(valid)
    requests = []
    for _ in range(count):
        items = [rng.choice(names) for _ in range(rng.randint(1, 4))]
        bad_at = None
        if rng.random() < 0.35:
            bad_at = rng.randrange(len(items) + 1)
            items.insert(bad_at, rng.choice(list(bad)))
        requests.append((items, bad_at))
    # Every odd and every bad kind appears at least once, alone.
    requests += [([n], None) for n in names if not n.startswith("ordinary")]
    requests += [([b], 0) for b in bad]
    rng.shuffle(requests)
    return requests


def test_concurrent_clients_get_the_scores_each_image_gets_alone(served):
    serve = served.signatures["serving_default"]
    valid, bad = _valid_images(), _bad_images()
    alone = {n: serve(image_bytes=tf.constant([b]))["scores"].numpy()[0] for n, b in valid.items()}
    # The odd images are scored, not refused, and differ from one another.
    assert all(s.shape == (len(CLASS_NAMES),) and np.isfinite(s).all() for s in alone.values())
    requests = _requests(valid, bad, 48, seed=0)
    results = [None] * len(requests)

    def client(worker):
        for k in range(worker, len(requests), THREADS):
            items, _ = requests[k]
            data = [valid[n] if n in valid else bad[n][0] for n in items]
            try:
                results[k] = serve(image_bytes=tf.constant(data))
            except tf.errors.InvalidArgumentError as e:
                results[k] = e

    threads = [threading.Thread(target=client, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)

    num_bad = 0
    for (items, bad_at), result in zip(requests, results, strict=True):
        if bad_at is None:
            assert not isinstance(result, Exception), (items, result)
            want = np.stack([alone[n] for n in items])
            np.testing.assert_allclose(result["scores"].numpy(), want, atol=ATOL, err_msg=items)
            assert result["num_labels"].shape == (len(items),)
        else:
            num_bad += 1
            assert isinstance(result, tf.errors.InvalidArgumentError), (items, result)
            kind = items[bad_at]
            assert f"image_bytes[{bad_at}] {bad[kind][1]}" in result.message, result.message
            assert f"the request holds {len(items)} images" in result.message
    assert num_bad >= len(bad)

    # Still serving, with the same answers.
    after = serve(image_bytes=tf.constant([valid["ordinary0"], valid["grayscale"]]))
    np.testing.assert_allclose(
        after["scores"].numpy(), np.stack([alone["ordinary0"], alone["grayscale"]]), atol=ATOL
    )


def test_a_request_with_two_bad_images_names_the_first(served):
    serve = served.signatures["serving_default"]
    good = _valid_images()["ordinary1"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is not a JPEG"):
        serve(image_bytes=tf.constant([good, b"", good, b"junk"]))
