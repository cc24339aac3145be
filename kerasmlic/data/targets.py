"""Training targets built in the graph: multi-hot vectors and label sequences.

Recurrent decoders learn a label *sequence*, so the labels of an image need an
order. The orders (``kerasmlic.data.sequences.LABEL_ORDERS``) are:

``frequent_first`` / ``rare_first``
    by the number of training images per class (``label_counts`` of the
    ``dataset.json`` split), most / least frequent first;
``dictionary``
    alphabetical by class name;
``large_first``
    by the label's area in *this* image (``label/areas``), largest first;
``random``
    a fresh random permutation per example (per epoch in the pipeline).

Ties are broken by class index. The first three orders are fixed per class, so
they come down to a per-class rank table (:func:`class_ranks`) that the graph
gathers from; everything after that is TensorFlow ops that run inside
``tf.data.Dataset.map``.
"""

import numpy as np
import tensorflow as tf

from kerasmlic.data import sequences
from kerasmlic.errors import UsageError

RANKED_ORDERS = ("frequent_first", "rare_first", "dictionary")
"""Orders given by a per-class rank table."""


def check_label_order(order):
    """Raise a clear error for an unknown label order.

    Args:
        order: The name to check.

    Raises:
        UsageError: ``order`` is not in ``sequences.LABEL_ORDERS``.
    """
    if order not in sequences.LABEL_ORDERS:
        choices = ", ".join(sequences.LABEL_ORDERS)
        raise UsageError(f"unknown label order {order!r}; choose from {choices}")


def multi_hot(label_ids, num_classes):
    """Turn a list of class indices into a multi-hot vector.

    Args:
        label_ids: 1-D int tensor of class indices (may be empty; repeats count once).
        num_classes: Number of classes ``C``.

    Returns:
        float32 tensor ``(C,)`` with 1 at each label, 0 elsewhere.
    """
    one_hot = tf.one_hot(tf.cast(label_ids, tf.int32), num_classes, dtype=tf.float32)
    return tf.minimum(tf.reduce_sum(one_hot, axis=0), 1.0)


def class_ranks(order, label_counts=None, class_names=None):
    """Return the per-class rank (0 comes first) of a fixed label order.

    Args:
        order: ``frequent_first``, ``rare_first`` or ``dictionary``.
        label_counts: Images per class in the training split (for the
            frequency orders).
        class_names: Class names in index order (for ``dictionary``).

    Returns:
        int32 numpy array ``(C,)``: ``ranks[c]`` is the position of class
        ``c`` in the order; ties are broken by class index.

    Raises:
        UsageError: Unknown order or missing counts / names.
    """
    if order in ("frequent_first", "rare_first"):
        if label_counts is None:
            raise UsageError(f"label order {order!r} needs the training split's label_counts")
        counts = np.asarray(label_counts, dtype=np.int64)
        key = -counts if order == "frequent_first" else counts
        by_rank = np.argsort(key, kind="stable")
    elif order == "dictionary":
        if class_names is None:
            raise UsageError("label order 'dictionary' needs the class names")
        by_rank = np.array(
            sorted(range(len(class_names)), key=lambda c: (class_names[c], c)), dtype=np.int64
        )
    else:
        raise UsageError(f"label order {order!r} has no rank table; use one of {RANKED_ORDERS}")
    ranks = np.empty(len(by_rank), dtype=np.int32)
    ranks[by_rank] = np.arange(len(by_rank), dtype=np.int32)
    return ranks


def order_labels(label_ids, label_areas, order, rank_table=None, seed=None):
    """Put one image's labels in sequence order (graph-safe).

    Args:
        label_ids: 1-D int tensor of class indices (``label/ids``, ascending).
        label_areas: 1-D float tensor, the area of each label in this image
            (``label/areas``, aligned with ``label_ids``).
        order: One of ``sequences.LABEL_ORDERS`` (a Python string).
        rank_table: int ``(C,)`` class ranks from :func:`class_ranks`; needed
            for ``frequent_first``, ``rare_first`` and ``dictionary``.
        seed: For ``random``: ``None`` (fresh draw) or a shape-``[2]`` int
            tensor for a repeatable stateless permutation.

    Returns:
        int32 tensor, ``label_ids`` reordered.

    Raises:
        UsageError: Unknown order or a missing rank table.
    """
    check_label_order(order)
    label_ids = tf.cast(label_ids, tf.int32)
    if order in RANKED_ORDERS:
        if rank_table is None:
            raise UsageError(f"label order {order!r} needs a rank_table (see class_ranks)")
        key = tf.gather(tf.cast(tf.convert_to_tensor(rank_table), tf.int32), label_ids)
        perm = tf.argsort(key, stable=True)
    elif order == "large_first":
        perm = tf.argsort(tf.cast(label_areas, tf.float32), direction="DESCENDING", stable=True)
    else:
        if seed is None:
            key = tf.random.uniform(tf.shape(label_ids))
        else:
            key = tf.random.stateless_uniform(tf.shape(label_ids), seed=seed)
        perm = tf.argsort(key)
    return tf.gather(label_ids, perm)


def label_sequence(ordered_ids, max_labels):
    """Build the decoder target ``[START, c+3, ..., END, PAD, ...]``.

    Args:
        ordered_ids: 1-D int tensor of class indices in sequence order.
        max_labels: Labels kept; longer lists are truncated (the END token
            always follows the last kept label).

    Returns:
        int32 tensor ``(max_labels + 2,)``.
    """
    tokens = tf.cast(ordered_ids[:max_labels], tf.int32) + sequences.NUM_SPECIAL
    seq = tf.concat([[sequences.START], tokens, [sequences.END]], axis=0)
    seq = tf.pad(seq, [[0, max_labels + 2 - tf.shape(seq)[0]]], constant_values=sequences.PAD)
    seq.set_shape([max_labels + 2])
    return seq
