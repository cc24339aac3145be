import os

import numpy as np
import pytest
import tensorflow as tf

from kerasmlic.data import manifest, pipeline, preprocessing, schema, sequences
from kerasmlic.errors import UsageError

CLASS_NAMES = ["zebra", "apple", "mango", "kite", "bus"]
NUM_CLASSES = len(CLASS_NAMES)
# Per split: list of shards, each a list of (image_id, label_ids, label_areas).
SPLITS = {
    "train": [
        [(1, [0, 2], [0.1, 0.5]), (2, [1], [0.3]), (3, [0, 1, 2, 3], [0.2, 0.1, 0.4, 0.3])],
        [(4, [2], [0.9]), (5, [0, 4], [0.05, 0.6]), (6, [2, 3], [0.3, 0.2])],
        [(7, [0, 2, 4], [0.3, 0.2, 0.1]), (8, [1, 2], [0.4, 0.4]), (9, [2], [0.7])],
        [(10, [0, 2], [0.6, 0.1]), (11, [3], [0.2]), (12, [2, 4], [0.3, 0.3])],
    ],
    "val": [
        [(101, [0, 1], [0.2, 0.3]), (102, [4], [0.5]), (103, [1, 2, 3], [0.1, 0.2, 0.3])],
        [(104, [3], [0.4]), (105, [0, 2], [0.3, 0.1]), (106, [2], [0.2]), (107, [1], [0.6])],
    ],
}
PNG_IDS = {6, 104}  # stored as PNG to check that the pipeline decodes them


def image_for(image_id):
    rng = np.random.default_rng(image_id)
    height, width = 24 + image_id % 5 * 4, 32 + image_id % 3 * 8
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 7 + image_id, y * 9, (x + y) * 3], axis=-1)
    return ((base + rng.integers(0, 20, base.shape)) % 256).astype(np.uint8)


def encoded_for(image_id):
    image = image_for(image_id)
    if image_id in PNG_IDS:
        return tf.io.encode_png(image).numpy()
    return tf.io.encode_jpeg(image, quality=95).numpy()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    splits = {}
    for split, shards in SPLITS.items():
        entries, counts, total = [], np.zeros(NUM_CLASSES, int), 0
        for i, shard in enumerate(shards):
            name = f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
            with tf.io.TFRecordWriter(os.path.join(out, name)) as writer:
                for image_id, ids, areas in shard:
                    h, w = image_for(image_id).shape[:2]
                    writer.write(
                        schema.make_example(
                            encoded_for(image_id), image_id, h, w, f"{image_id}.jpg",
                            ids, areas, [1] * len(ids),
                        )
                    )  # fmt: skip
                    counts[ids] += 1
            entries.append({"file": name, "num_examples": len(shard), "sha256": ""})
            total += len(shard)
        splits[split] = {"num_examples": total, "shards": entries, "label_counts": counts.tolist()}
    classes = [
        {"index": i, "coco_id": i + 1, "name": n, "supercategory": "x"}
        for i, n in enumerate(CLASS_NAMES)
    ]
    manifest.write_json_atomic(
        manifest.manifest_path(out), {"format_version": 1, "classes": classes, "splits": splits}
    )
    return str(out)


def examples(split):
    return [e for shard in SPLITS[split] for e in shard]


def expected_multi_hot(ids):
    hot = np.zeros(NUM_CLASSES, np.float32)
    hot[ids] = 1
    return hot


def collect(ds):
    images, hots, seqs, ids = [], [], [], []
    for batch in ds:
        images.append(batch[0].numpy())
        target = batch[1]
        if isinstance(target, dict):
            hots.append(target["multi_hot"].numpy())
            seqs.append(target["sequence"].numpy())
        else:
            hots.append(target.numpy())
        if len(batch) == 3:
            ids.append(batch[2].numpy())
    cat = lambda xs: np.concatenate(xs) if xs else None
    return cat(images), cat(hots), cat(seqs), cat(ids)


def test_eval_order_is_stable_and_matches_read_split_labels(data_dir):
    kwargs = dict(image_size=16, batch_size=3, training=False, with_ids=True)
    ds = pipeline.make_dataset(data_dir, "val", **kwargs)
    first, second = collect(ds), collect(ds)
    np.testing.assert_array_equal(first[3], [101, 102, 103, 104, 105, 106, 107])
    np.testing.assert_array_equal(first[3], second[3])
    np.testing.assert_array_equal(first[0], second[0])
    assert [b[0].shape[0] for b in ds] == [3, 3, 1]  # no drop_remainder in eval
    labels = pipeline.read_split_labels(data_dir, "val")
    np.testing.assert_array_equal(labels["image_ids"], first[3])
    np.testing.assert_array_equal(labels["multi_hot"], first[1])
    np.testing.assert_array_equal(pipeline.read_split_ids(data_dir, "val"), first[3])
    for row, (image_id, ids, areas) in enumerate(examples("val")):
        np.testing.assert_array_equal(labels["multi_hot"][row], expected_multi_hot(ids))
        expected_areas = np.zeros(NUM_CLASSES, np.float32)
        expected_areas[ids] = areas
        np.testing.assert_allclose(labels["label_areas"][row], expected_areas)
        assert labels["image_ids"][row] == image_id


def test_eval_images_are_the_whole_image_resized_png_included(data_dir):
    images, _, _, ids = collect(
        pipeline.make_dataset(
            data_dir, "val", image_size=16, batch_size=4, training=False, with_ids=True,
            normalization="raw",
        )
    )  # fmt: skip
    for image, image_id in zip(images, ids, strict=True):
        expected = preprocessing.preprocess_for_eval(encoded_for(image_id), 16, "raw").numpy()
        np.testing.assert_allclose(image, expected, atol=1e-4)
    assert images.dtype == np.uint8
    png = images[list(ids).index(104)]
    exact = preprocessing.quantize_pixels(preprocessing.resize_image(image_for(104), 16)).numpy()
    np.testing.assert_array_equal(png, exact)


@pytest.mark.parametrize("training", [False, True])
def test_default_normalization_gives_uint8_pixels(data_dir, training):
    # The default path is the one kerasmlic models take (they normalise inside).
    ds = pipeline.make_dataset(data_dir, "val", image_size=16, batch_size=4, training=training)
    assert ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[0].shape[1:] == (16, 16, 3)
    images = collect(ds)[0]
    assert images.dtype == np.uint8 and images.std() > 10
    named = pipeline.make_dataset(
        data_dir, "val", image_size=16, batch_size=4, training=False, normalization="unit"
    )
    assert named.element_spec[0].dtype == tf.float32
    if not training:
        np.testing.assert_allclose(collect(named)[0], images / 255.0, atol=0.5 / 255 + 1e-6)


def test_training_dct_scaling_is_a_switch(data_dir):
    # The fixture's images are 24-40 px: at 8 px every one decodes at a reduced scale.
    common = dict(
        image_size=8, batch_size=12, training=True, with_ids=True, seed=0,
        augment={"crop_scale": [1, 1], "flip": False},
    )  # fmt: skip
    off = collect(pipeline.make_dataset(data_dir, "train", dct_scaling=False, **common))
    on = collect(pipeline.make_dataset(data_dir, "train", **common))
    evaluated = {
        i: preprocessing.preprocess_for_eval(encoded_for(i), 8).numpy() for i in range(1, 13)
    }
    for image, image_id in zip(off[0], off[3], strict=True):
        np.testing.assert_array_equal(image, evaluated[image_id])
    assert any(
        not np.array_equal(image, evaluated[image_id])
        for image, image_id in zip(on[0], on[3], strict=True)
        if image_id not in PNG_IDS
    )


@pytest.mark.parametrize(
    "mode, lo, hi", [("unit", 0, 1), ("symmetric", -1, 1), ("caffe", -124, 152), ("raw", 0, 255)]
)
def test_training_shapes_dtypes_ranges_and_labels(data_dir, mode, lo, hi):
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=20, batch_size=5, training=True, normalization=mode,
        seed=1, with_ids=True,
    )  # fmt: skip
    assert ds.element_spec[0].shape == (5, 20, 20, 3)  # drop_remainder by default in training
    batches = list(ds)
    assert len(batches) == 2
    images, hots, _, ids = collect(batches)
    assert images.dtype == (np.uint8 if mode == "raw" else np.float32)
    assert hots.dtype == np.float32
    assert lo - 1e-4 <= images.min() and images.max() <= hi + 1e-4
    assert images.astype(np.float32).std() > 0.05 * (hi - lo)
    assert len(set(ids)) == 10 and set(ids) <= set(range(1, 13))
    by_id = {i: labels for i, labels, _ in examples("train")}
    for hot, image_id in zip(hots, ids, strict=True):
        np.testing.assert_array_equal(hot, expected_multi_hot(by_id[image_id]))


def test_training_reads_every_record_including_png_and_augments(data_dir):
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=12, batch_size=4, training=True, drop_remainder=False,
        with_ids=True, normalization="raw", augment={"crop_scale": [0.25, 1]},
    )  # fmt: skip
    _, _, _, ids = collect(ds)
    assert sorted(ids) == list(range(1, 13))
    assert ds.options().deterministic is False
    # An augmented view differs from the plain resize (a crop and/or a flip).
    eval_image = preprocessing.preprocess_for_eval(encoded_for(6), 12, "raw").numpy()
    views = [img for img, i in zip(*collect(ds)[::3], strict=True) if i == 6]
    views += [img for img, i in zip(*collect(ds)[::3], strict=True) if i == 6]
    assert any(np.abs(v.astype(int) - eval_image).max() > 1 for v in views)


def test_dct_scaling_is_skipped_where_max_side_rules_every_reduction_out():
    assert pipeline.dct_can_reduce({"options": {"max_side": 512}}, 224)  # 512 >= 2 x 224
    assert not pipeline.dct_can_reduce({"options": {"max_side": 512}}, 448)
    assert not pipeline.dct_can_reduce({"options": {"max_side": 447}}, 224)
    assert pipeline.dct_can_reduce({"options": {"max_side": None}}, 448)  # unknown sizes
    assert pipeline.dct_can_reduce({}, 448)
    # With the rule's min_fraction: ceil(2 * 224 * 0.9) = 404.
    assert pipeline.dct_can_reduce({"options": {"max_side": 404}}, 224, 0.9)
    assert not pipeline.dct_can_reduce({"options": {"max_side": 403}}, 224, 0.9)


def test_training_dct_min_fraction_reduces_images_just_short_of_twice_the_side(data_dir):
    # Ids 5 and 10 are 24 px high: at 13 px, 1/2 keeps 12 px (0.92 of 13), so the
    # min_fraction 0.9 reduces them and 1.0 (the default) decodes them at full scale.
    common = dict(
        image_size=13, batch_size=12, training=True, with_ids=True, seed=0,
        augment={"crop_scale": [1, 1], "flip": False},
    )  # fmt: skip
    exact = collect(pipeline.make_dataset(data_dir, "train", **common))
    near = collect(pipeline.make_dataset(data_dir, "train", dct_min_fraction=0.9, **common))
    for images, ids, equal in ((exact[0], exact[3], True), (near[0], near[3], False)):
        for image, image_id in zip(images, ids, strict=True):
            if image_id in (5, 10):
                evaluated = preprocessing.preprocess_for_eval(encoded_for(image_id), 13).numpy()
                assert np.array_equal(image, evaluated) is equal, image_id


def test_parse_example_keeps_only_the_keys_asked_for():
    record = schema.make_example(b"jpeg", 7, 4, 5, "a.jpg", [1, 3], [0.5, 0.25], [1, 2])
    keys = [schema.IMAGE_ENCODED, schema.LABEL_IDS]
    mapped = tf.data.Dataset.from_tensors(record).map(lambda s: schema.parse_example(s, keys))
    for parsed in (schema.parse_example(tf.constant(record), keys), next(iter(mapped))):
        assert sorted(parsed) == sorted(keys)
        assert parsed[schema.LABEL_IDS].dtype == tf.int32
        np.testing.assert_array_equal(parsed[schema.LABEL_IDS], [1, 3])
        assert parsed[schema.IMAGE_ENCODED].numpy() == b"jpeg"
    full = schema.parse_example(tf.constant(record))
    assert set(full) == set(schema.FEATURE_SPEC)
    np.testing.assert_allclose(full[schema.LABEL_AREAS], [0.5, 0.25])


def test_repeat_runs_past_one_epoch(data_dir):
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=8, batch_size=4, training=True, repeat=True
    )
    assert len(list(ds.take(7))) == 7  # an epoch has 3 batches


def test_sequences_follow_the_label_order(data_dir):
    # Train counts per class: [5, 3, 9, 3, 3] -> frequent_first = 2, 0, 1, 3, 4.
    s, e = sequences.START, sequences.END
    ds = pipeline.make_dataset(
        data_dir, "val", image_size=8, batch_size=8, training=False,
        label_order="frequent_first", max_labels=2, with_ids=True,
    )  # fmt: skip
    assert ds.element_spec[1]["sequence"].shape == (None, 4)
    _, hots, seqs, ids = collect(ds)
    assert seqs.dtype == np.int32
    # 103 has labels {1, 2, 3}: frequent order 2, 1, 3 truncated to two labels.
    np.testing.assert_array_equal(seqs[list(ids).index(103)], [s, 2 + 3, 1 + 3, e])
    np.testing.assert_array_equal(seqs[list(ids).index(102)], [s, 4 + 3, e, 0])
    np.testing.assert_array_equal(hots[list(ids).index(103)], expected_multi_hot([1, 2, 3]))
    rare = collect(
        pipeline.make_dataset(
            data_dir, "val", image_size=8, batch_size=8, training=False,
            label_order="rare_first", max_labels=3,
        )
    )[2]  # fmt: skip
    np.testing.assert_array_equal(rare[2], [s, 1 + 3, 3 + 3, 2 + 3, e])
    large = collect(
        pipeline.make_dataset(
            data_dir, "val", image_size=8, batch_size=8, training=False, label_order="large_first"
        )
    )[2]  # fmt: skip
    assert large.shape == (7, sequences.DEFAULT_MAX_LABELS + 2)
    np.testing.assert_array_equal(large[2, :5], [s, 3 + 3, 2 + 3, 1 + 3, e])


def test_random_order_sequences_are_permutations_in_training(data_dir):
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=8, batch_size=4, training=True, label_order="random",
        max_labels=5, with_ids=True, drop_remainder=False, seed=3,
    )  # fmt: skip
    by_id = {i: labels for i, labels, _ in examples("train")}
    orders_of_3 = set()
    # Each pass replays the same draws and the reshuffle hands them out anew, so a
    # pass repeats image 3's first order by chance (42 of 420 passes measured, and
    # 4 passes once all agreed in CI): with 8, all agree with odds of 0.1**7 if the
    # passes are independent.
    for _ in range(8):
        _, _, seqs, ids = collect(ds)
        for seq, image_id in zip(seqs, ids, strict=True):
            k = len(by_id[image_id])
            assert seq[0] == sequences.START and seq[k + 1] == sequences.END
            assert sorted(seq[1 : k + 1] - 3) == by_id[image_id]
            if image_id == 3:
                orders_of_3.add(tuple(seq[1:5]))
    assert len(orders_of_3) > 1  # the permutation changes from pass to pass


def test_usage_errors(data_dir, tmp_path):
    common = dict(image_size=8, batch_size=2, training=False)
    with pytest.raises(UsageError, match="split 'test' not found"):
        pipeline.make_dataset(data_dir, "test", **common)
    with pytest.raises(UsageError, match="does not exist"):
        pipeline.make_dataset(str(tmp_path / "nope"), "val", **common)
    with pytest.raises(UsageError, match="unknown normalization"):
        pipeline.make_dataset(data_dir, "val", normalization="torch", **common)
    with pytest.raises(UsageError, match="unknown label order"):
        pipeline.make_dataset(data_dir, "val", label_order="size", **common)
    with pytest.raises(UsageError, match="batch_size must be a positive integer"):
        pipeline.make_dataset(data_dir, "val", image_size=8, batch_size=0, training=False)
    with pytest.raises(UsageError, match="unknown shard_policy"):
        pipeline.make_dataset(data_dir, "val", shard_policy="row", **common)
    assert pipeline.split_size(data_dir, "train") == 12


def context(num_pipelines, pipeline_id, replicas=None):
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=replicas or num_pipelines,
    )


def ids_of(data_dir, split, ctx, policy, batch_size=4, training=False):
    ds = pipeline.make_dataset(
        data_dir, split, image_size=8, batch_size=batch_size, training=training,
        input_context=ctx, shard_policy=policy, with_ids=True, drop_remainder=False,
    )  # fmt: skip
    return [int(i) for batch in ds for i in batch[2].numpy()]


def test_file_sharding_with_too_few_files_is_refused(data_dir):
    with pytest.raises(UsageError, match="split 'val' has 2 shard files but 4 workers"):
        pipeline.make_dataset(
            data_dir, "val", image_size=8, batch_size=4, training=False,
            input_context=context(4, 0), shard_policy="file",
        )  # fmt: skip
    with pytest.raises(UsageError, match="--shards >= 3"):
        pipeline.make_dataset(
            data_dir, "val", image_size=8, batch_size=4, training=True, num_workers=3,
            shard_policy="file",
        )  # fmt: skip


def test_file_sharding_splits_whole_files_disjointly(data_dir):
    shard_ids = [{e[0] for e in shard} for shard in SPLITS["train"]]
    got = [set(ids_of(data_dir, "train", context(2, p), "file", training=True)) for p in (0, 1)]
    assert got[0] == shard_ids[0] | shard_ids[2]
    assert got[1] == shard_ids[1] | shard_ids[3]


@pytest.mark.parametrize("policy", ["data", "auto"])
def test_data_sharding_covers_the_split_once(data_dir, policy):
    # 4 pipelines over 2 val files: auto falls back to record sharding.
    parts = [ids_of(data_dir, "val", context(4, p), policy) for p in range(4)]
    assert sorted(sum(parts, [])) == list(range(101, 108))
    assert all(len(p) in (1, 2) for p in parts)


def test_data_sharding_in_training_covers_the_split_once(data_dir):
    # Each pipeline shuffles on its own after taking its records: still a partition.
    parts = [ids_of(data_dir, "train", context(5, p), "auto", 5, True) for p in range(5)]
    assert sorted(sum(parts, [])) == list(range(1, 13))


def test_per_replica_batch_and_autoshard_options(data_dir):
    ds = pipeline.make_dataset(
        data_dir, "train", image_size=8, batch_size=4, training=True,
        input_context=context(1, 0, replicas=2),
    )  # fmt: skip
    assert ds.element_spec[0].shape[0] == 2
    policy = tf.data.experimental.AutoShardPolicy
    assert ds.options().experimental_distribute.auto_shard_policy == policy.OFF
    common = dict(image_size=8, batch_size=4, training=True)
    ds = pipeline.make_dataset(data_dir, "train", num_workers=4, **common)
    assert ds.options().experimental_distribute.auto_shard_policy == policy.FILE
    ds = pipeline.make_dataset(data_dir, "train", num_workers=5, **common)
    assert ds.options().experimental_distribute.auto_shard_policy == policy.DATA
    ds = pipeline.make_dataset(data_dir, "train", shard_policy="data", **common)
    assert ds.options().experimental_distribute.auto_shard_policy == policy.DATA


def test_workers_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert pipeline.workers_from_tf_config() == 1
    monkeypatch.setenv(
        "TF_CONFIG", '{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {}}'
    )
    assert pipeline.workers_from_tf_config() == 3


def tf_autoshard_ids(ds, num_workers, index):
    """Apply TensorFlow's own auto-shard rewrite (what experimental_distribute_dataset does)."""
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    sharded = _AutoShardDataset(ds, num_workers, index)
    return [int(i) for batch in sharded for i in batch[2].numpy()]


@pytest.mark.parametrize("num_workers, expected_policy", [(2, "FILE"), (5, "DATA")])
def test_tensorflow_autoshard_of_a_training_dataset_is_a_partition(
    data_dir, num_workers, expected_policy
):
    def worker_dataset():
        # Each worker builds its own pipeline (a shared one would share shuffle state).
        return pipeline.make_dataset(
            data_dir, "train", image_size=8, batch_size=2, training=True,
            num_workers=num_workers, with_ids=True, drop_remainder=False,
        )  # fmt: skip

    ds = worker_dataset()
    policy = ds.options().experimental_distribute.auto_shard_policy
    assert policy == getattr(tf.data.experimental.AutoShardPolicy, expected_policy)
    # Record sharding needs the same order on every worker, so the pipeline keeps order.
    assert ds.options().deterministic is (expected_policy == "DATA")
    parts = [tf_autoshard_ids(worker_dataset(), num_workers, i) for i in range(num_workers)]
    assert sorted(sum(parts, [])) == list(range(1, 13))


def test_frequency_order_needs_the_order_split(data_dir):
    with pytest.raises(UsageError, match="ranks classes by split 'test'"):
        pipeline.make_dataset(
            data_dir, "val", image_size=8, batch_size=2, training=False,
            label_order="rare_first", order_split="test",
        )  # fmt: skip
    # The dictionary order needs no counts.
    ds = pipeline.make_dataset(
        data_dir, "val", image_size=8, batch_size=8, training=False, label_order="dictionary",
        max_labels=3, order_split="test",
    )  # fmt: skip
    seqs = collect(ds)[2]
    # 103 has labels 1 (apple), 2 (mango), 3 (kite): apple, kite, mango.
    np.testing.assert_array_equal(seqs[2], [1, 1 + 3, 3 + 3, 2 + 3, 2])
