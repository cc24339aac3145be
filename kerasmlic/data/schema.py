"""The TFRecord schema: one ``tf.train.Example`` per image (see docs/design.md).

Writers (``build``, tests) call :func:`make_example`; readers (the tf.data
pipeline) call :func:`parse_example`. Both sides import the keys from here so
the schema lives in one place.
"""

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_ID = "image/id"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_FILENAME = "image/filename"
LABEL_IDS = "label/ids"
LABEL_AREAS = "label/areas"
LABEL_INSTANCES = "label/instances"

FEATURE_SPEC = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    IMAGE_ID: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_IDS: tf.io.VarLenFeature(tf.int64),
    LABEL_AREAS: tf.io.VarLenFeature(tf.float32),
    LABEL_INSTANCES: tf.io.VarLenFeature(tf.int64),
}


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def make_example(
    encoded, image_id, height, width, filename, label_ids, label_areas, label_instances
):
    """Serialise one image and its labels as a ``tf.train.Example``.

    Args:
        encoded: JPEG bytes of the image.
        image_id: COCO image id.
        height: Image height in pixels (of ``encoded``).
        width: Image width in pixels (of ``encoded``).
        filename: The image's ``file_name`` in the annotations.
        label_ids: Contiguous class indices, ascending, no repeats.
        label_areas: Per label, summed instance area divided by image area.
        label_instances: Per label, the number of instances.

    Returns:
        The serialised example (``bytes``).

    Example:
        >>> data = make_example(jpeg, 42, 64, 64, "a.jpg", [0, 3], [0.1, 0.02], [1, 2])
    """
    label_ids = [int(v) for v in label_ids]
    if label_ids != sorted(set(label_ids)):
        raise ValueError(f"label_ids must be ascending and unique, got {label_ids}")
    if not len(label_ids) == len(label_areas) == len(label_instances):
        raise ValueError("label_ids, label_areas and label_instances differ in length")
    if isinstance(filename, str):
        filename = filename.encode("utf-8")
    feature = {
        IMAGE_ENCODED: _bytes([encoded]),
        IMAGE_ID: _ints([image_id]),
        IMAGE_HEIGHT: _ints([height]),
        IMAGE_WIDTH: _ints([width]),
        IMAGE_FILENAME: _bytes([filename]),
        LABEL_IDS: _ints(label_ids),
        LABEL_AREAS: _floats(label_areas),
        LABEL_INSTANCES: _ints(label_instances),
    }
    # deterministic: map keys sorted, so the same example gives the same bytes in every
    # process (shard checksums stay reproducible across workers and reruns).
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def parse_example(serialized, keys=None):
    """Parse one serialised example into dense tensors (graph-safe).

    Args:
        serialized: A scalar ``tf.string`` tensor.
        keys: The schema keys to parse, or ``None`` for all of them. A map
            that needs only a few (the training pipeline: the image and its
            label ids) parses less per record.

    Returns:
        A dict with the requested keys; the ``label/*`` entries are dense 1-D
        tensors (``label/ids`` as int32).
    """
    spec = FEATURE_SPEC if keys is None else {key: FEATURE_SPEC[key] for key in keys}
    parsed = tf.io.parse_single_example(serialized, spec)
    for key in (LABEL_IDS, LABEL_AREAS, LABEL_INSTANCES):
        if key in parsed:
            parsed[key] = tf.sparse.to_dense(parsed[key])
    if LABEL_IDS in parsed:
        parsed[LABEL_IDS] = tf.cast(parsed[LABEL_IDS], tf.int32)
    return parsed
