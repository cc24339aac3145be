"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests``.

TF Serving runs the requests in this file when it loads a version, before the
version takes traffic, so the first real request does not pay for graph
optimisation and kernel set-up. The file is a TFRecord of
``tensorflow.serving.PredictionLog`` protos. The ``tensorflow_serving``
Python package is not a dependency, so the few messages needed are written
here in protobuf wire format (field numbers from ``tensorflow_serving/apis``):

- ``PredictionLog``: ``predict_log = 6``;
- ``PredictLog``: ``request = 1``;
- ``PredictRequest``: ``model_spec = 1``, ``inputs = 2`` (map entries:
  ``key = 1``, ``value = 2``, a ``tensorflow.TensorProto``);
- ``ModelSpec``: ``name = 1``, ``signature_name = 3``.

:func:`read_warmup_requests` parses the same subset back (for tests and checks).
"""

import os

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 8)
"""Batch sizes of the warm-up requests (one record each)."""

_LENGTH_DELIMITED = 2


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, payload):
    """One length-delimited field (a string, bytes or an embedded message)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def prediction_log(inputs, *, model_name, signature_name):
    """Serialise a ``PredictionLog`` holding one ``PredictRequest``.

    Args:
        inputs: ``{input name: TensorProto}`` (``tf.make_tensor_proto`` results).
        model_name: ``ModelSpec.name`` (TF Serving's model name).
        signature_name: ``ModelSpec.signature_name``.

    Returns:
        The serialised proto (``bytes``).
    """
    spec = _field(1, model_name) + _field(3, signature_name)
    request = _field(1, spec)
    for name in sorted(inputs):
        entry = _field(1, name) + _field(2, inputs[name].SerializeToString())
        request += _field(2, entry)
    return _field(6, _field(1, request))


def _read_varint(data, pos):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data):
    """``(number, bytes)`` of each length-delimited field of a message."""
    pos, out = 0, []
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        if key & 7 != _LENGTH_DELIMITED:
            raise ValueError(f"unexpected wire type {key & 7} in a warm-up record")
        length, pos = _read_varint(data, pos)
        out.append((key >> 3, data[pos : pos + length]))
        pos += length
    return out


def read_warmup_requests(path):
    """Parse a warm-up file written by :func:`write_warmup_requests`.

    Args:
        path: The ``tf_serving_warmup_requests`` file.

    Returns:
        A list of ``(signature_name, {input name: numpy array})``.
    """
    import tensorflow as tf

    requests = []
    for record in tf.data.TFRecordDataset(path):
        (log,) = [v for n, v in _fields(record.numpy()) if n == 6]
        (request,) = [v for n, v in _fields(log) if n == 1]
        signature, inputs = "", {}
        for number, value in _fields(request):
            if number == 1:
                signature = dict(_fields(value)).get(3, b"").decode("utf-8")
            elif number == 2:
                entry = dict(_fields(value))
                proto = tf.make_tensor_proto(0)
                proto.ParseFromString(entry[2])
                inputs[entry[1].decode("utf-8")] = tf.make_ndarray(proto)
        requests.append((signature, inputs))
    return requests


def write_warmup_requests(saved_model_dir, *, image_size, model_name):
    """Write warm-up requests for ``serving_default`` into a SavedModel folder.

    One request per batch size in :data:`WARMUP_BATCH_SIZES`, each of gray
    JPEG images of the model's input size.

    Args:
        saved_model_dir: The version folder being written.
        image_size: The model's input side in pixels.
        model_name: TF Serving's model name (the base folder's name).

    Returns:
        The path of the written file.
    """
    import tensorflow as tf

    from kerasmlic.export.serving import BYTES_INPUT, BYTES_SIGNATURE

    gray = tf.fill([image_size, image_size, 3], tf.constant(128, tf.uint8))
    jpeg = tf.io.encode_jpeg(gray).numpy()
    folder = os.path.join(saved_model_dir, WARMUP_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for batch in WARMUP_BATCH_SIZES:
            proto = tf.make_tensor_proto([jpeg] * batch, dtype=tf.string, shape=[batch])
            writer.write(
                prediction_log(
                    {BYTES_INPUT: proto}, model_name=model_name, signature_name=BYTES_SIGNATURE
                )
            )
    return path
