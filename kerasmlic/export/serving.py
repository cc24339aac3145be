"""The serving graph: encoded bytes (or uint8 images) in, ranked labels out.

Everything here is TensorFlow ops around the Keras model's own call, so the
functions trace into a SavedModel that TF Serving (or plain
``tf.saved_model.load``) runs with no kerasmlic code: decoding and resizing
(:func:`kerasmlic.data.preprocessing.preprocess_for_eval`, the evaluation
pipeline's own path, to uint8 pixels), the model's normalisation (its first
layer), its decoding loop (greedy or beam, as configured), its calibrated
thresholds (the ``Thresholds`` layer weight) and the class names (a string
constant) all end up in the graph.

Outputs of every serving function (docs/design.md → Export):

- ``scores``: ``(B, C)`` float32 per-class scores;
- ``label_ids``: ``(B, L)`` int32 class indices of the predicted labels, in
  descending score order, padded with ``-1``; ``L`` is the largest label count
  in the batch (0 for an empty batch);
- ``labels``: ``(B, L)`` string class names matching ``label_ids``, padded
  with ``""``;
- ``num_labels``: ``(B,)`` int32 number of predicted labels per image.
"""

import tensorflow as tf

from kerasmlic.data.preprocessing import (
    emits_pixels,
    preprocess_for_eval,
    resize_image,
    to_model_input,
)

BYTES_INPUT = "image_bytes"
"""Input name of the ``serving_default`` signature (docs/design.md)."""

IMAGES_INPUT = "images"
"""Input name of the ``serving_images`` signature (uint8 ``(B, H, W, 3)``)."""

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
EXPLAIN_SIGNATURE = "explain"
"""Signature with heat maps per label (:mod:`kerasmlic.export.explain`)."""

OUTPUT_KEYS = ("scores", "label_ids", "labels", "num_labels")

# Leading bytes of the formats tf.io.decode_image reads; they only choose the
# wording of the error for an element that fails to decode.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")

FORMATS = "JPEG, PNG, GIF, BMP or WebP"
"""What the serving graph decodes, for messages."""


def model_image_size(model):
    """Return the square input side a model expects.

    Args:
        model: A kerasmlic model (``image_size`` in its config) or any Keras
            model with a ``(None, S, S, 3)`` input.

    Returns:
        The side ``S`` as a Python int.
    """
    config = getattr(model, "options", None) or {}
    if config.get("image_size"):
        return int(config["image_size"])
    shape = model.inputs[0].shape
    return int(shape[1])


def model_normalization(model):
    """Return what the graph applies before the model (``"unit"`` by default).

    Args:
        model: A kerasmlic model (``model.normalization``: ``"raw"``, the
            model normalises its uint8 pixels itself) or a plain Keras model.

    Returns:
        One of ``kerasmlic.data.preprocessing.NORMALIZATIONS``.
    """
    return getattr(model, "normalization", None) or "unit"


def is_image_bytes(image_bytes):
    """Return whether strings start like a JPEG, PNG, GIF, BMP or WebP file.

    Args:
        image_bytes: ``tf.string`` tensor of any shape.

    Returns:
        A bool tensor of the same shape.
    """
    # Padding keeps substr's position in range for strings shorter than a header.
    padded = image_bytes + tf.constant(b"\0" * 12)
    checks = [tf.strings.substr(padded, 0, len(m)) == m for m in _MAGIC]
    webp = tf.logical_and(
        tf.strings.substr(padded, 0, 4) == b"RIFF",
        tf.strings.substr(padded, 8, 4) == b"WEBP",
    )
    return tf.reduce_any(tf.stack([*checks, webp]), axis=0)


def decode_batch(image_bytes, size, normalization="raw"):
    """Decode and resize a batch of encoded images; a bad one fails the batch, by index.

    Each element goes through ``preprocess_for_eval``, the evaluation
    pipeline's own function, so the SavedModel scores a file exactly as
    ``evaluate`` scores the same bytes in a shard. The elements are decoded
    in a ``tf.data`` pipeline whose ``ignore_errors`` drops an element that
    fails; a missing element then fails the whole request (as TF Serving does
    for one bad image) with an ``INVALID_ARGUMENT`` that names
    ``image_bytes[i]`` and why — a graph cannot catch the decoder's own error,
    which does not say which element.

    Args:
        image_bytes: ``(B,)`` ``tf.string`` of encoded images.
        size: Output side in pixels.
        normalization: ``"raw"`` or None (uint8 pixels, for a model that
            normalises itself), or a named scaling (float32), as
            ``preprocess_for_eval``.

    Returns:
        ``(B, size, size, 3)``: uint8 pixels, or float32 normalised.

    Raises:
        tf.errors.InvalidArgumentError: (at run time) an element is not an
            image, or cannot be decoded (truncated or corrupt); the message
            names ``image_bytes[i]`` for the first such element.
    """
    count = tf.size(image_bytes, out_type=tf.int64)
    indices = tf.range(count)

    def one(data, index):
        return preprocess_for_eval(data, size, normalization), index

    decoded = (
        tf.data.Dataset.from_tensor_slices((image_bytes, indices))
        .map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(tf.maximum(count, 1))
    )
    dtype = tf.uint8 if emits_pixels(normalization) else tf.float32
    nothing = tf.data.Dataset.from_tensors(
        (tf.zeros([0, size, size, 3], dtype), tf.zeros([0], tf.int64))
    )
    images, kept = decoded.concatenate(nothing).take(1).get_single_element()

    present = tf.reduce_any(tf.equal(indices[:, tf.newaxis], kept[tf.newaxis, :]), axis=1)
    missing = tf.boolean_mask(indices, tf.logical_not(present))

    def describe_first_missing():
        first = missing[0]
        data = tf.gather(image_bytes, first)
        reason = tf.where(
            is_image_bytes(data),
            "cannot be decoded (a truncated or corrupt image)",
            f"is not a {FORMATS} image",
        )
        return tf.strings.join(
            [
                f"{BYTES_INPUT}[",
                tf.strings.as_string(first),
                "] ",
                reason,
                " (",
                tf.strings.as_string(tf.strings.length(data)),
                " bytes); the request holds ",
                tf.strings.as_string(count),
                " images",
            ]
        )

    message = tf.cond(tf.size(missing) > 0, describe_first_missing, lambda: tf.constant(""))
    check = tf.debugging.Assert(tf.size(missing) == 0, [message], name="check_image_bytes")
    with tf.control_dependencies([check]):
        images = tf.identity(images)
    return tf.ensure_shape(images, [None, size, size, 3])


def rank_labels(scores, predicted, class_names):
    """Turn scores and a predicted 0/1 set into ranked, padded label outputs.

    Args:
        scores: ``(B, C)`` float scores.
        predicted: ``(B, C)`` 0/1 (float or bool) predicted label set.
        class_names: ``(C,)`` string tensor.

    Returns:
        A dict with ``scores`` (float32), ``label_ids`` (int32, ``-1``-padded),
        ``labels`` (string, ``""``-padded) and ``num_labels`` (int32), the
        labels of each image in descending score order.
    """
    scores = tf.cast(scores, tf.float32)
    chosen = tf.cast(predicted, tf.bool)
    num_labels = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1)
    # Scores lie in [0, 1], so -1 puts every unchosen class after the chosen ones.
    keyed = tf.where(chosen, scores, -1.0)
    order = tf.argsort(keyed, axis=1, direction="DESCENDING", stable=True, name="rank_labels")
    # The extra 0 keeps reduce_max defined on an empty batch.
    width = tf.reduce_max(tf.concat([num_labels, [0]], axis=0))
    order = tf.cast(order[:, :width], tf.int32)
    valid = tf.range(width)[tf.newaxis, :] < num_labels[:, tf.newaxis]
    label_ids = tf.where(valid, order, -1)
    labels = tf.where(valid, tf.gather(class_names, order), "")
    return {"scores": scores, "label_ids": label_ids, "labels": labels, "num_labels": num_labels}


def _empty_outputs(num_classes):
    return {
        "scores": tf.zeros([0, num_classes], tf.float32),
        "label_ids": tf.zeros([0, 0], tf.int32),
        "labels": tf.zeros([0, 0], tf.string),
        "num_labels": tf.zeros([0], tf.int32),
    }


def make_serving_functions(model, class_names):
    """Build the two serving functions around a Keras model.

    Args:
        model: A kerasmlic model (output dict with ``scores`` and ``predicted``).
        class_names: The C class names, in class-index order.

    Returns:
        A dict signature name → ``(function, input_signature)``:
        ``serving_default`` takes ``image_bytes`` ``(B,)`` tf.string;
        ``serving_images`` takes ``images`` uint8 ``(B, H, W, 3)`` (any size,
        resized in the graph). Both return the outputs in the module docstring.
    """
    size = model_image_size(model)
    normalization = model_normalization(model)
    num_classes = len(class_names)
    names = tf.constant(list(class_names), tf.string)

    def run_model(images):
        outputs = model(images, training=False)
        ranked = rank_labels(outputs["scores"], outputs["predicted"], names)
        ranked["scores"] = tf.ensure_shape(ranked["scores"], [None, num_classes])
        return ranked

    def when_not_empty(batch, run):
        # An empty request skips the model: some decoding loops (beam search
        # reshapes, gathers) are not written for a zero batch.
        return tf.cond(
            tf.shape(batch)[0] > 0, lambda: run(batch), lambda: _empty_outputs(num_classes)
        )

    def serve_bytes(image_bytes):
        return when_not_empty(
            image_bytes, lambda b: run_model(decode_batch(b, size, normalization))
        )

    def serve_images(images):
        return when_not_empty(
            images, lambda x: run_model(to_model_input(resize_image(x, size), normalization))
        )

    return {
        BYTES_SIGNATURE: (serve_bytes, [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]),
        IMAGES_SIGNATURE: (
            serve_images,
            [tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
        ),
    }
