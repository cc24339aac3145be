"""The serving graph: encoded bytes (or uint8 images) in, ranked labels out.

Everything here is TensorFlow ops around the Keras model's own call, so the
functions trace into a SavedModel that TF Serving (or plain
``tf.saved_model.load``) runs with no kerasmlic code: decoding
(:func:`kerasmlic.data.preprocessing.decode_image`), resizing, normalisation,
the model's decoding loop (greedy or beam, as configured), its calibrated
thresholds (the ``Thresholds`` layer weight) and the class names (a string
constant) all end up in the graph.

Outputs of every serving function (DESIGN.md → Export):

- ``scores``: ``(B, C)`` float32 per-class scores;
- ``label_ids``: ``(B, L)`` int32 class indices of the predicted labels, in
  descending score order, padded with ``-1``; ``L`` is the largest label count
  in the batch (0 for an empty batch);
- ``labels``: ``(B, L)`` string class names matching ``label_ids``, padded
  with ``""``;
- ``num_labels``: ``(B,)`` int32 number of predicted labels per image.
"""

import tensorflow as tf

from kerasmlic.data.preprocessing import decode_image, normalize, resize_image

BYTES_INPUT = "image_bytes"
"""Input name of the ``serving_default`` signature (DESIGN.md)."""

IMAGES_INPUT = "images"
"""Input name of the ``serving_images`` signature (uint8 ``(B, H, W, 3)``)."""

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
EXPLAIN_SIGNATURE = "explain"
"""Signature with heat maps per label (:mod:`kerasmlic.export.explain`)."""

OUTPUT_KEYS = ("scores", "label_ids", "labels", "num_labels")

# Leading bytes of the formats tf.io.decode_image reads. Checking them first
# turns garbage input into an error that names the input and the element,
# instead of libjpeg's "Unknown image file format".
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def model_image_size(model):
    """Return the square input side a model expects.

    Args:
        model: A kerasmlic model (``image_size`` in its config) or any Keras
            model with a ``(None, S, S, 3)`` input.

    Returns:
        The side ``S`` as a Python int.
    """
    config = getattr(model, "_kerasmlic_config", None) or {}
    if config.get("image_size"):
        return int(config["image_size"])
    shape = model.inputs[0].shape
    return int(shape[1])


def model_normalization(model):
    """Return the normalisation name a model expects (``"unit"`` by default).

    Args:
        model: A kerasmlic model (``model.normalization``) or a plain Keras model.

    Returns:
        One of ``kerasmlic.data.preprocessing.NORMALIZATIONS``.
    """
    return getattr(model, "normalization", None) or "unit"


def is_image_bytes(image_bytes):
    """Return whether a scalar string starts like a JPEG, PNG, GIF or BMP file.

    Args:
        image_bytes: Scalar ``tf.string``.

    Returns:
        Scalar bool tensor.
    """
    checks = [tf.strings.substr(image_bytes, 0, len(m)) == m for m in _MAGIC]
    return tf.reduce_any(tf.stack(checks))


def decode_batch(image_bytes, size):
    """Decode and resize a batch of encoded images, checking each one.

    Args:
        image_bytes: ``(B,)`` ``tf.string`` of JPEG or PNG bytes.
        size: Output side in pixels.

    Returns:
        float32 ``(B, size, size, 3)`` on 0-255.

    Raises:
        tf.errors.InvalidArgumentError: (at run time) an element is not an
            image; the message names ``image_bytes`` and the element's index.
    """
    indices = tf.range(tf.size(image_bytes, out_type=tf.int32))

    def one(args):
        data, index = args
        message = tf.strings.format(
            BYTES_INPUT + "[{}] is not a JPEG or PNG image ({} bytes)",
            (index, tf.strings.length(data)),
        )
        check = tf.debugging.Assert(is_image_bytes(data), [message], name="check_image_bytes")
        with tf.control_dependencies([check]):
            image = decode_image(tf.identity(data))
        return resize_image(image, size)

    return tf.map_fn(
        one,
        (image_bytes, indices),
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
    )


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

    def run_model(pixels):
        outputs = model(normalize(pixels, normalization), training=False)
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
        return when_not_empty(image_bytes, lambda b: run_model(decode_batch(b, size)))

    def serve_images(images):
        return when_not_empty(images, lambda x: run_model(resize_image(x, size)))

    return {
        BYTES_SIGNATURE: (serve_bytes, [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]),
        IMAGES_SIGNATURE: (
            serve_images,
            [tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
        ),
    }
