import itertools

import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data import sequences, targets
from kerasmlic.errors import UsageError


def in_map(fn, *args):
    ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
    return next(iter(ds)).numpy()


def test_multi_hot_by_hand_eager_and_in_map():
    np.testing.assert_array_equal(targets.multi_hot([0, 2], 4).numpy(), [1, 0, 1, 0])
    np.testing.assert_array_equal(targets.multi_hot([3, 3, 1], 4).numpy(), [0, 1, 0, 1])
    empty = targets.multi_hot(tf.zeros([0], tf.int32), 3)
    assert empty.dtype == tf.float32
    np.testing.assert_array_equal(empty.numpy(), [0, 0, 0])
    mapped = in_map(lambda ids: targets.multi_hot(ids, 5), tf.constant([4, 0], tf.int64))
    np.testing.assert_array_equal(mapped, [1, 0, 0, 0, 1])


def test_class_ranks_by_hand():
    # counts [5, 1, 9]: most frequent first is class 2, 0, 1.
    np.testing.assert_array_equal(targets.class_ranks("frequent_first", [5, 1, 9]), [1, 2, 0])
    np.testing.assert_array_equal(targets.class_ranks("rare_first", [5, 1, 9]), [1, 0, 2])
    # Ties go to the lower class index.
    np.testing.assert_array_equal(targets.class_ranks("frequent_first", [3, 3, 1]), [0, 1, 2])
    np.testing.assert_array_equal(targets.class_ranks("rare_first", [3, 3, 1]), [1, 2, 0])
    names = ["zebra", "apple", "mango"]
    np.testing.assert_array_equal(targets.class_ranks("dictionary", class_names=names), [2, 0, 1])
    with pytest.raises(UsageError, match="label_counts"):
        targets.class_ranks("frequent_first")
    with pytest.raises(UsageError, match="no rank table"):
        targets.class_ranks("large_first", [1, 2])


IDS = tf.constant([0, 1, 2])
AREAS = tf.constant([0.5, 0.1, 0.3])
COUNTS = [5, 1, 9]
NAMES = ["zebra", "apple", "mango"]


@pytest.mark.parametrize(
    "order, table, expected",
    [
        ("frequent_first", targets.class_ranks("frequent_first", COUNTS), [2, 0, 1]),
        ("rare_first", targets.class_ranks("rare_first", COUNTS), [1, 0, 2]),
        ("dictionary", targets.class_ranks("dictionary", class_names=NAMES), [1, 2, 0]),
        ("large_first", None, [0, 2, 1]),
    ],
)
def test_order_labels_by_hand_eager_and_in_map(order, table, expected):
    eager = targets.order_labels(IDS, AREAS, order, table)
    assert eager.dtype == tf.int32
    np.testing.assert_array_equal(eager.numpy(), expected)
    mapped = in_map(lambda i, a: targets.order_labels(i, a, order, table), IDS, AREAS)
    np.testing.assert_array_equal(mapped, expected)
    # A subset keeps the same relative order.
    sub = targets.order_labels(tf.constant([0, 1]), tf.constant([0.5, 0.1]), order, table)
    np.testing.assert_array_equal(sub.numpy(), [c for c in expected if c in (0, 1)])


def test_large_first_breaks_area_ties_by_class_index():
    out = targets.order_labels(tf.constant([1, 4, 6]), tf.constant([0.2, 0.4, 0.2]), "large_first")
    np.testing.assert_array_equal(out.numpy(), [4, 1, 6])


def test_random_order_is_a_seeded_permutation_covering_all_orders():
    seen = set()
    for s in range(120):
        seed = tf.constant([s, 1])
        out = targets.order_labels(IDS, AREAS, "random", seed=seed).numpy()
        assert sorted(out) == [0, 1, 2]
        again = targets.order_labels(IDS, AREAS, "random", seed=seed).numpy()
        np.testing.assert_array_equal(out, again)
        seen.add(tuple(out))
    assert seen == set(itertools.permutations([0, 1, 2]))
    seed = tf.constant([7, 7])
    mapped = in_map(lambda i, a: targets.order_labels(i, a, "random", seed=seed), IDS, AREAS)
    np.testing.assert_array_equal(
        mapped, targets.order_labels(IDS, AREAS, "random", seed=seed).numpy()
    )
    assert sorted(targets.order_labels(IDS, AREAS, "random").numpy()) == [0, 1, 2]


def test_order_labels_errors():
    with pytest.raises(UsageError, match="unknown label order"):
        targets.order_labels(IDS, AREAS, "alphabetical")
    with pytest.raises(UsageError, match="rank_table"):
        targets.order_labels(IDS, AREAS, "frequent_first")


def test_label_sequence_padding_and_truncation():
    s, e = sequences.START, sequences.END
    np.testing.assert_array_equal(
        targets.label_sequence(tf.constant([2, 0]), 4).numpy(), [s, 5, 3, e, 0, 0]
    )
    np.testing.assert_array_equal(
        targets.label_sequence(tf.constant([4, 1, 3]), 2).numpy(), [s, 7, 4, e]
    )
    np.testing.assert_array_equal(
        targets.label_sequence(tf.constant([4, 1, 3]), 3).numpy(), [s, 7, 4, 6, e]
    )
    empty = targets.label_sequence(tf.zeros([0], tf.int32), 3)
    assert empty.dtype == tf.int32
    np.testing.assert_array_equal(empty.numpy(), [s, e, 0, 0, 0])


def test_label_sequence_in_map_on_variable_length_examples():
    ragged = tf.ragged.constant([[3], [0, 1, 2, 4], []], dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(ragged).map(lambda ids: targets.label_sequence(ids, 3))
    assert ds.element_spec.shape == (5,)
    got = np.stack([x.numpy() for x in ds])
    np.testing.assert_array_equal(got, [[1, 6, 2, 0, 0], [1, 3, 4, 5, 2], [1, 2, 0, 0, 0]])
