"""Shared test helper for every registered model (keras-hub style battery).

- :func:`tiny_task`: a separable multi-label task in memory (class k present
  iff a blob of colour k is somewhere in the image).
- :func:`tiny_dataset`: the same as a ``tf.data.Dataset`` of
  ``(images, targets)`` shaped like the pipeline's batches.
- :func:`run_model_battery`: build, fit (finite, falling loss), evaluate,
  predict (output contract), config round trip, ``.keras`` round trip,
  ``tf.function`` (+ XLA) inference, one ``mixed_float16`` train step.
- :func:`learns_tiny_task`: held-out mAP after a short fit.
"""

import json
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import average_precision_score

from kerasmlic.data import sequences as seq
from kerasmlic.models.registry import build_model, get_model_class

BATTERY_IMAGE_SIZE = 32
BATTERY_NUM_CLASSES = 5
BATTERY_BATCH = 4

# Distinct, saturated colours; further classes take evenly spaced hues.
_PALETTE = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 0.5, 0.0),
    (1.0, 1.0, 1.0),
)


def _colour(k, num_classes):
    if num_classes <= len(_PALETTE):
        return np.array(_PALETTE[k], np.float32)
    import colorsys

    return np.array(colorsys.hsv_to_rgb(k / num_classes, 1.0, 1.0), np.float32)


def _order_labels(labels, label_order, frequency):
    if label_order == "dictionary":
        return sorted(labels)
    if label_order == "rare_first":
        return sorted(labels, key=lambda c: (frequency[c], c))
    # frequent_first (default): most frequent class first, ties by index.
    return sorted(labels, key=lambda c: (-frequency[c], c))


def tiny_task(
    num_examples=64,
    image_size=32,
    num_classes=5,
    seed=0,
    with_sequences=False,
    max_labels=4,
    label_order="frequent_first",
):
    """Return a separable multi-label task as numpy arrays.

    Every image is a dark noisy background split into a 2x2 grid; each present
    class paints a square blob of its colour in its own cell (random size and
    position inside the cell). Each class is present with probability 0.4, at
    least one and at most ``min(max_labels, 4)`` labels per image.

    Args:
        num_examples: Number of images.
        image_size: Square image side (pixels).
        num_classes: Number of classes.
        seed: RNG seed.
        with_sequences: Also return label sequences (token scheme of
            ``kerasmlic.data.sequences``).
        max_labels: Sequence capacity (sequence length ``max_labels + 2``).
        label_order: ``frequent_first``, ``rare_first`` or ``dictionary``
            (class index order) for the sequences.

    Returns:
        ``(images float32 (N,S,S,3) in [0,1], multi_hot float32 (N,C))`` and,
        with ``with_sequences``, ``sequences int32 (N, max_labels + 2)`` too.
    """
    rng = np.random.default_rng(seed)
    cap = min(max_labels, 4)
    images = rng.uniform(0.0, 0.15, (num_examples, image_size, image_size, 3)).astype(np.float32)
    multi_hot = np.zeros((num_examples, num_classes), np.float32)
    half = image_size // 2
    for i in range(num_examples):
        present = np.flatnonzero(rng.random(num_classes) < 0.4)
        if present.size == 0:
            present = rng.choice(num_classes, 1)
        if present.size > cap:
            present = rng.choice(present, cap, replace=False)
        cells = rng.permutation(4)[: present.size]
        for k, cell in zip(present, cells, strict=True):
            size = rng.integers(max(2, half // 2), half + 1)
            y0 = (cell // 2) * half + rng.integers(0, half - size + 1)
            x0 = (cell % 2) * half + rng.integers(0, half - size + 1)
            images[i, y0 : y0 + size, x0 : x0 + size] = _colour(k, num_classes)
            multi_hot[i, k] = 1.0
    if not with_sequences:
        return images, multi_hot
    frequency = multi_hot.sum(axis=0)
    sequences = np.full((num_examples, max_labels + 2), seq.PAD, np.int32)
    for i in range(num_examples):
        labels = _order_labels(np.flatnonzero(multi_hot[i]).tolist(), label_order, frequency)
        tokens = [seq.START, *(seq.class_to_token(c) for c in labels[:max_labels]), seq.END]
        sequences[i, : len(tokens)] = tokens
    return images, multi_hot, sequences


def normalize_images(images, normalization):
    """Map [0, 1] images to an encoder's normalisation (see ``encoder_normalization``).

    Args:
        images: float32 ``(..., 3)`` in [0, 1].
        normalization: ``unit``, ``symmetric``, ``raw``, ``caffe`` or ``imagenet``.

    Returns:
        The normalised float32 array.
    """
    if normalization == "unit":
        return images
    if normalization == "symmetric":
        return images * 2.0 - 1.0
    if normalization == "raw":
        return images * 255.0
    if normalization == "caffe":
        return images[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], np.float32)
    if normalization == "imagenet":
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        return (images - mean) / std
    raise ValueError(f"unknown normalization {normalization!r}")


def tiny_dataset(
    num_examples=64,
    image_size=32,
    num_classes=5,
    seed=0,
    with_sequences=False,
    max_labels=4,
    label_order="frequent_first",
    batch_size=4,
    normalization="unit",
    repeat=False,
    shuffle=False,
):
    """Return the tiny task as a ``tf.data.Dataset`` of ``(images, targets)``.

    Targets are the multi-hot tensor, or with ``with_sequences`` the pipeline's
    dict ``{"multi_hot", "sequence"}``.

    Args:
        num_examples: Number of images.
        image_size: Square image side.
        num_classes: Number of classes.
        seed: RNG seed.
        with_sequences: Targets as a dict with label sequences.
        max_labels: Sequence capacity.
        label_order: Sequence order (see :func:`tiny_task`).
        batch_size: Batch size.
        normalization: Input normalisation of the model's encoder.
        repeat: Repeat forever.
        shuffle: Shuffle every epoch (seeded).

    Returns:
        A batched ``tf.data.Dataset``.
    """
    arrays = tiny_task(
        num_examples, image_size, num_classes, seed, with_sequences, max_labels, label_order
    )
    images = normalize_images(arrays[0], normalization)
    if with_sequences:
        targets = {"multi_hot": arrays[1], "sequence": arrays[2]}
    else:
        targets = arrays[1]
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle:
        ds = ds.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size)


def _dataset_for(
    model, num_examples, seed, num_classes, image_size, batch_size=BATTERY_BATCH, **kwargs
):
    # Sequence models size their targets by their own max_labels option.
    max_labels = model.get_config().get("max_labels") or 4
    return tiny_dataset(
        num_examples,
        image_size,
        num_classes,
        seed,
        with_sequences=getattr(model, "uses_sequences", False),
        max_labels=max_labels,
        batch_size=batch_size,
        normalization=model.normalization,
        **kwargs,
    )


def check_output_contract(outputs, num_examples, num_classes):
    """Assert the model output dict contract on numpy or tensor outputs.

    Args:
        outputs: The model's output dict.
        num_examples: Expected batch dimension.
        num_classes: Expected C.
    """
    outputs = {k: np.asarray(v) for k, v in outputs.items()}
    assert {"scores", "predicted"} <= set(outputs), sorted(outputs)
    scores, predicted = outputs["scores"], outputs["predicted"]
    assert scores.shape == (num_examples, num_classes), scores.shape
    assert scores.dtype == np.float32, scores.dtype
    assert np.all(np.isfinite(scores))
    assert scores.min() >= 0.0 and scores.max() <= 1.0, (scores.min(), scores.max())
    assert predicted.shape == (num_examples, num_classes)
    assert predicted.dtype == np.float32
    assert set(np.unique(predicted)) <= {0.0, 1.0}
    if "sequence" in outputs:
        sequence = outputs["sequence"]
        assert sequence.dtype == np.int32, sequence.dtype
        assert sequence.ndim == 2 and sequence.shape[0] == num_examples
        assert sequence.min() >= 0 and sequence.max() < num_classes + seq.NUM_SPECIAL
    if "attention" in outputs:
        attention = outputs["attention"]
        assert attention.dtype == np.float32, attention.dtype
        assert attention.ndim == 3 and attention.shape[0] == num_examples
        assert np.all(np.isfinite(attention)) and attention.min() >= 0.0


def _predict_dict(model, x):
    return {k: np.asarray(v) for k, v in model.predict(x, verbose=0).items()}


def _call_dict(model, x):
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}


def _assert_same_predictions(a, b, atol=1e-5):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, err_msg=key)


def prebuild(model, dataset):
    """Create the optimizer and metric variables before ``fit``.

    Without a distribution strategy, Keras 3's TF trainer creates them inside
    the first trace of the train function, and ``tf.function`` then traces it
    a second time; building them first halves the tracing time (measured:
    label_query fit 53 s -> 31 s on a loaded 2-core machine).

    Args:
        model: A compiled model.
        dataset: Its training dataset (one batch is used, eagerly).
    """
    model.optimizer.build(model.trainable_variables)
    x, y = next(iter(dataset))
    model.compute_metrics(x, y, model(x, training=False))


def _held_out_map(model, image_size, num_classes, num_test=128):
    test_x, test_y = tiny_task(num_test, image_size, num_classes, seed=123)[:2]
    scores = np.asarray(
        model.predict(normalize_images(test_x, model.normalization), verbose=0)["scores"]
    )
    return mean_average_precision(test_y, scores)


def _mixed_precision_step(name, num_classes, image_size, learning_rate, options):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build_model(name, num_classes=num_classes, image_size=image_size, **options)
        # run_eagerly: the real Keras train_step (loss scaling included) without
        # paying for a second graph trace; the graph path is checked above.
        mixed.compile(optimizer=keras.optimizers.Adam(learning_rate), run_eagerly=True)
        batch_x, batch_y = next(iter(_dataset_for(mixed, 4, 0, num_classes, image_size)))
        step = mixed.train_on_batch(batch_x, batch_y, return_dict=True)
        assert np.isfinite(step["loss"]), step
        out = mixed(batch_x, training=False)
        assert out["scores"].dtype == "float32", out["scores"].dtype
        check_output_contract(
            {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}, 4, num_classes
        )
    finally:
        keras.config.set_dtype_policy(previous)


def run_model_battery(
    name,
    *,
    image_size=BATTERY_IMAGE_SIZE,
    num_classes=BATTERY_NUM_CLASSES,
    jit_compile=True,
    mixed_precision=True,
    epochs=3,
    learning_rate=3e-3,
    learn=False,
    num_train=16,
    **options,
):
    """Run the shared battery on a registered model; raises AssertionError on failure.

    Steps: build through ``build_model``; fit ``epochs`` over ``num_train``
    images (batch 4) with finite, falling loss; ``evaluate`` with a compiled
    metric; ``predict`` on tf.data (output contract);
    ``get_config``/``from_config`` round trip (same config, JSON-able, same
    outputs with copied weights); ``.keras`` save/load (safe mode) with
    identical outputs; inference traced under ``tf.function`` without
    AutoGraph (and with ``jit_compile=True``) matching ``predict``; under
    ``mixed_float16`` a fresh model compiles, takes a train step with finite
    loss and returns float32 scores (the global policy is restored).

    Args:
        name: Registry name.
        image_size: Image side (default 32).
        num_classes: Number of classes (default 5).
        jit_compile: Also trace inference with XLA (False where XLA lacks an op).
        mixed_precision: Run the ``mixed_float16`` step.
        epochs: Fit epochs.
        learning_rate: Adam learning rate.
        learn: Also measure held-out mAP after the fit (pass a larger
            ``num_train``/``epochs`` to make it a learning test; this shares
            the model and its traces with the battery).
        num_train: Training images.
        **options: Model options passed to ``build_model``.

    Returns:
        A dict: ``losses`` (per-epoch training loss), ``seconds`` (per phase)
        and, with ``learn``, ``mAP`` (held-out, chance ~0.45).
    """
    seconds = {}
    clock = [time.perf_counter()]

    def lap(phase):
        now = time.perf_counter()
        seconds[phase] = round(now - clock[0], 2)
        clock[0] = now

    keras.utils.set_random_seed(0)
    model = build_model(name, num_classes=num_classes, image_size=image_size, **options)
    assert isinstance(model, get_model_class(name))
    train = _dataset_for(model, num_train, 0, num_classes, image_size, shuffle=True)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc")],
    )
    prebuild(model, train)
    lap("build")
    history = model.fit(train, epochs=epochs, verbose=0, shuffle=False).history
    fit_losses = [float(v) for v in history["loss"]]
    assert all(np.isfinite(fit_losses)), fit_losses
    assert fit_losses[-1] < fit_losses[0], f"loss did not fall: {fit_losses}"
    lap("fit")
    evaluated = model.evaluate(train.take(2), verbose=0, return_dict=True)
    assert np.isfinite(evaluated["loss"]) and 0.0 <= evaluated["auc"] <= 1.0, evaluated
    lap("evaluate")

    test = _dataset_for(model, 8, 1, num_classes, image_size)
    x = next(iter(test))[0]
    predictions = _predict_dict(model, test)
    check_output_contract(predictions, 8, num_classes)
    result = {"losses": fit_losses}
    if learn:
        result["mAP"] = _held_out_map(model, image_size, num_classes)
    lap("predict")

    # Config round trip: the same config, JSON-able, same function with copied weights.
    config = model.get_config()
    json.dumps(config)
    clone = model.__class__.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    first = {k: v[: x.shape[0]] for k, v in predictions.items()}
    # Eager calls (no retracing) keep the battery fast.
    eager = _call_dict(model, x)
    _assert_same_predictions(eager, first)
    _assert_same_predictions(_call_dict(clone, x), eager, atol=1e-6)
    lap("config")

    # .keras round trip in safe mode.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert loaded.__class__ is model.__class__
    assert loaded.get_config() == config
    _assert_same_predictions(_call_dict(loaded, x), eager, atol=1e-6)
    lap("save_load")

    # Inference traced under tf.function without AutoGraph (the export path),
    # optionally compiled with XLA.
    traced = tf.function(lambda images: model(images, training=False), autograph=False)
    _assert_same_predictions({k: v.numpy() for k, v in traced(x).items()}, first)
    lap("tf_function")
    if jit_compile:
        xla = tf.function(
            lambda images: model(images, training=False), jit_compile=True, autograph=False
        )
        xla_out = {k: v.numpy() for k, v in xla(x).items()}
        check_output_contract(xla_out, x.shape[0], num_classes)
        np.testing.assert_allclose(xla_out["scores"], first["scores"], atol=1e-4)
        lap("xla")

    if mixed_precision:
        _mixed_precision_step(name, num_classes, image_size, learning_rate, options)
        lap("mixed_float16")
    result["seconds"] = seconds
    return result


def mean_average_precision(multi_hot, scores):
    """Return the mean over classes with a positive of sklearn's average precision.

    Args:
        multi_hot: ``(N, C)`` ground truth.
        scores: ``(N, C)`` scores.

    Returns:
        A float in [0, 1].
    """
    keep = multi_hot.sum(axis=0) > 0
    return float(average_precision_score(multi_hot[:, keep], scores[:, keep], average="macro"))


def learns_tiny_task(
    name,
    *,
    epochs=8,
    num_train=256,
    num_test=128,
    batch_size=16,
    learning_rate=3e-3,
    image_size=BATTERY_IMAGE_SIZE,
    num_classes=BATTERY_NUM_CLASSES,
    **options,
):
    """Fit a model briefly on the tiny task and return its held-out mAP.

    Chance mAP on this task is about the label frequency (~0.45).

    Args:
        name: Registry name.
        epochs: Training epochs.
        num_train: Training images.
        num_test: Held-out images (a different seed).
        batch_size: Batch size.
        learning_rate: Adam learning rate.
        image_size: Image side.
        num_classes: Number of classes.
        **options: Model options.

    Returns:
        Held-out mAP (float).
    """
    keras.utils.set_random_seed(0)
    model = build_model(name, num_classes=num_classes, image_size=image_size, **options)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    train = _dataset_for(
        model, num_train, 0, num_classes, image_size, batch_size=batch_size, shuffle=True
    )
    prebuild(model, train)
    model.fit(train, epochs=epochs, verbose=0, shuffle=False)
    return _held_out_map(model, image_size, num_classes, num_test)
