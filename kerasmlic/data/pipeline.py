"""The tf.data input pipeline: TFRecord shards to ``(images, targets)`` batches.

Training mode reads the shards in parallel (``interleave``), shuffles the
records, parses them, decodes each JPEG (only its random crop when cropping,
at a reduced DCT scale where the image or crop is 2, 4 or 8 times the target
side), resizes once and flips at random, then batches and prefetches.
Evaluation mode reads the shards one after another in manifest order, decodes
each full image at full scale and resizes it, so every pass yields the same
images in the same order: the order :func:`read_split_labels` returns.

Images leave the pipeline as uint8 pixels for kerasmlic models
(``normalization=None`` or ``"raw"``; the model normalises inside itself, on
the accelerator), or as float32 normalised images for a plain Keras model that
names its scaling (``normalization="unit"``...).

Distribution: under ``strategy.distribute_datasets_from_function`` pass the
``input_context`` and this pipeline shards itself (by file or by record) and
batches the per-replica share of ``batch_size``; under
``strategy.experimental_distribute_dataset`` the chosen policy is written to
``tf.data.Options`` and TensorFlow shards. File sharding with fewer shard
files than input pipelines would leave some workers without data (a hang in
synchronous training), so it is refused with a :class:`UsageError`.
"""

import json
import math
import os

import numpy as np
import tensorflow as tf

from kerasmlic.data import manifest as manifest_lib
from kerasmlic.data import preprocessing, schema, sequences, targets
from kerasmlic.data.augment import Augmentation, batch_augmenter
from kerasmlic.errors import UsageError

SHARD_POLICIES = ("auto", "file", "data", "off")
"""``auto``: by file when every worker gets a file, else by record."""

READ_CYCLE = 16
"""Shard files read at once in training mode (fixed, so record order can be too)."""

DEFAULT_SHUFFLE_BUFFER = 1024
"""Encoded records held for shuffling (about 160 KB each for COCO JPEGs)."""

_AUTO_SHARD = {
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}


def workers_from_tf_config():
    """Return the number of workers (chief included) that ``TF_CONFIG`` names.

    Returns:
        The worker count, 1 without a ``TF_CONFIG`` cluster.
    """
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except ValueError:
        raise UsageError("TF_CONFIG is not valid JSON") from None
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def resolve_shard_policy(policy, num_files, num_workers, split="train"):
    """Pick how a split is divided between input pipelines.

    Args:
        policy: One of :data:`SHARD_POLICIES`.
        num_files: Shard files in the split.
        num_workers: Input pipelines (workers) that share the split.
        split: Split name, for the error message.

    Returns:
        ``"file"``, ``"data"`` or ``"off"``.

    Raises:
        UsageError: Unknown policy, or ``file`` with fewer files than workers.
    """
    if policy not in SHARD_POLICIES:
        raise UsageError(
            f"unknown shard_policy {policy!r}; choose from {', '.join(SHARD_POLICIES)}"
        )
    if policy == "auto":
        return "file" if num_files >= num_workers else "data"
    if policy == "file" and num_files < num_workers:
        raise UsageError(
            f"split {split!r} has {num_files} shard files but {num_workers} workers: "
            f"rebuild with --shards >= {num_workers} or use shard_policy='data'"
        )
    return policy


def split_size(data_dir, split):
    """Return the number of examples in a built split (from ``dataset.json``).

    Args:
        data_dir: Folder written by ``kerasmlic build``.
        split: Split name.

    Returns:
        The example count.
    """
    manifest = manifest_lib.load_manifest(data_dir)
    return int(manifest_lib.split_info(manifest, split, data_dir)["num_examples"])


def _split_files(data_dir, split, manifest):
    files = manifest_lib.shard_paths(data_dir, split, manifest)
    if not files:
        raise UsageError(f"split {split!r} in {data_dir!r} has no shard files")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise UsageError(f"shard file {missing[0]!r} listed in dataset.json is missing")
    return files


def _rank_table(manifest, label_order, order_split, data_dir):
    if label_order not in targets.RANKED_ORDERS:
        return None
    if label_order == "dictionary":
        return targets.class_ranks(label_order, class_names=manifest_lib.class_names(manifest))
    if order_split not in manifest.get("splits", {}):
        raise UsageError(
            f"label order {label_order!r} ranks classes by split {order_split!r}, "
            f"which is not built in {data_dir!r}: build it or pass order_split"
        )
    counts = manifest_lib.split_info(manifest, order_split, data_dir).get("label_counts")
    if counts is None or len(counts) != len(manifest["classes"]):
        raise UsageError(f"split {order_split!r} in {data_dir!r} has no usable label_counts")
    return targets.class_ranks(label_order, label_counts=counts)


def dct_can_reduce(info, image_size, min_fraction=1.0):
    """Whether any image of a split can be decoded at a reduced DCT scale for ``image_size``.

    The DCT rule (``preprocessing.dct_ratio_index``) reduces only an image (or
    crop) whose shorter side is at least ``2 * min_fraction * image_size``. A
    split built with ``--max-side M`` below that has none, so its
    training map skips the header read and the branches that choose the
    scale, which cost about 0.1 ms per image where nothing is reduced (one
    thread, 640-px JPEGs at 448 px, best of 15: ``decode_for_size`` 1.43 ms
    against ``decode_image`` 1.33 ms; measured at load 7 on 2 shared cores,
    so indicative). Where images are reduced the saving is larger (see
    ``benchmarks/input_pipeline.py --ops``).

    Args:
        info: The split's ``dataset.json`` entry.
        image_size: The training image side.
        min_fraction: The rule's ``min_fraction`` (``make_dataset``'s
            ``dct_min_fraction``).

    Returns:
        False when the split's recorded ``max_side`` rules a reduction out,
        else True.
    """
    max_side = (info.get("options") or {}).get("max_side")
    threshold = math.ceil(2 * image_size * min_fraction - 1e-9)
    return not (max_side and int(max_side) < threshold)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


def _read_records(files, training, keep_order, seed, num_parallel_calls):
    """Serialized examples of ``files``: in file order, or interleaved for training."""
    if not training:
        # One file after another keeps the order of read_split_labels on any machine.
        return tf.data.TFRecordDataset(files, buffer_size=8 << 20)
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if not keep_order:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return files_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), READ_CYCLE),
        num_parallel_calls=num_parallel_calls,
        deterministic=keep_order,
    )


def make_dataset(
    data_dir,
    split,
    *,
    image_size,
    batch_size,
    training,
    normalization=None,
    label_order=None,
    max_labels=None,
    seed=None,
    shuffle_buffer=None,
    repeat=False,
    drop_remainder=None,
    num_parallel_calls=tf.data.AUTOTUNE,
    shard_policy="auto",
    input_context=None,
    num_workers=None,
    order_split="train",
    with_ids=False,
    augment=None,
    holdout=None,
    antialias=False,
    dct_method="",
    dct_scaling=True,
    dct_min_fraction=preprocessing.DCT_MIN_FRACTION,
):
    """Build the ``tf.data`` pipeline over a split's TFRecord shards.

    Args:
        data_dir: Folder written by ``kerasmlic build`` (shards + dataset.json).
        split: Split name, e.g. ``"train"`` or ``"val"``.
        image_size: Output side in pixels.
        batch_size: Global batch size; with ``input_context`` each pipeline
            batches its per-replica share.
        training: Augment (random resized crop, flip), shuffle and read
            non-deterministically (deterministically when TensorFlow shards
            the output by record: ``shard_policy`` resolving to ``data``, more
            than one worker, no ``input_context``); else decode and resize
            whole images in a stable order.
        normalization: ``None`` (default) or ``"raw"``: images are uint8
            pixels 0-255, for models that normalise inside themselves (every
            kerasmlic model: pass ``model.normalization``, which is
            ``"raw"``); one of ``preprocessing.NORMALIZATIONS`` else: float32
            images scaled that way (plain Keras models).
        label_order: ``None`` for multi-hot targets only, else one of
            ``sequences.LABEL_ORDERS`` to add a label sequence.
        max_labels: Sequence length minus 2 (default
            ``sequences.DEFAULT_MAX_LABELS``); longer label lists are truncated.
        seed: Seeds shuffling and augmentation. Each pass over the dataset
            replays the same stream of augmentation draws, and the reshuffled
            order hands each image different ones; in training mode the order
            can still vary with thread timing. ``None``: fresh draws.
        shuffle_buffer: Records in the shuffle buffer (training); default
            ``min(DEFAULT_SHUFFLE_BUFFER, split size)``.
        repeat: Repeat forever (use with ``steps_per_epoch``).
        drop_remainder: Drop a last partial batch; default True when training.
        num_parallel_calls: Parallelism of reads, maps and batching.
        shard_policy: One of :data:`SHARD_POLICIES` (see :func:`resolve_shard_policy`).
        input_context: ``tf.distribute.InputContext`` from
            ``strategy.distribute_datasets_from_function``.
        num_workers: Workers sharing the data when there is no input context;
            default from ``TF_CONFIG`` (1 without one).
        order_split: Split whose ``label_counts`` rank the frequency orders.
        with_ids: Also yield the image ids, as ``(images, targets, ids)``
            (not for ``model.fit``, which reads a third item as weights).
        augment: Training augmentation: an
            :class:`~kerasmlic.data.augment.Augmentation`, a config's
            ``data.augment`` dict, or ``"none"``; default ``Augmentation()``.
            Ignored in evaluation mode.
        holdout: ``None``, or ``(part, fraction)`` to keep only part of the
            split, chosen by a hash of the image id (the same on every
            machine and pass): ``("rest", f)`` drops the held-out fraction
            ``f`` (training when thresholds are calibrated on a train
            holdout), ``("heldout", f)`` keeps only it. See :func:`in_holdout`.
        antialias: Antialiased resizing (slower, sharper for big shrinks).
        dct_method: libjpeg IDCT for training crops (``""``, ``"INTEGER_FAST"``,
            ``"INTEGER_ACCURATE"``).
        dct_scaling: Training only: decode a JPEG at a reduced DCT scale where
            the image (or its crop) is at least 2, 4 or 8 times ``image_size``
            (``preprocessing.preprocess_for_train``). Evaluation always
            decodes at full scale, as the exported model does.
        dct_min_fraction: Share of ``image_size`` a reduced decode's shorter
            side keeps (``preprocessing.DCT_MIN_FRACTION`` by default; 1 never
            stretches an axis).

    Returns:
        A ``tf.data.Dataset`` of ``(images, targets)``: images ``(B, S, S, 3)``,
        uint8 or float32 (see ``normalization``); targets a float32 multi-hot
        ``(B, C)``, or with a ``label_order`` a dict ``{"multi_hot": (B, C)
        float32, "sequence": (B, max_labels + 2) int32}``.

    Raises:
        UsageError: Missing folder, split or shard files, bad arguments, or
            file sharding with fewer files than workers.
    """
    _check_positive_int("image_size", image_size)
    _check_positive_int("batch_size", batch_size)
    preprocessing.check_normalization(normalization)
    augmentation = Augmentation() if augment is None else Augmentation.from_config(augment)
    batch_ops = batch_augmenter(augmentation, seed) if training else None
    # Batch-level ops work on 0-255 pixels, so records stay uint8 pixels until
    # after them.
    record_normalization = None if batch_ops is not None else normalization
    if label_order is not None:
        targets.check_label_order(label_order)
        max_labels = sequences.DEFAULT_MAX_LABELS if max_labels is None else max_labels
        _check_positive_int("max_labels", max_labels)
    manifest = manifest_lib.load_manifest(data_dir)
    info = manifest_lib.split_info(manifest, split, data_dir)
    dct_scaling = dct_scaling and dct_can_reduce(info, image_size, dct_min_fraction)
    files = _split_files(data_dir, split, manifest)
    num_classes = len(manifest["classes"])
    rank_table = _rank_table(manifest, label_order, order_split, data_dir)

    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    else:
        num_pipelines = num_workers if num_workers is not None else workers_from_tf_config()
        pipeline_id = None
    _check_positive_int("num_workers", num_pipelines)
    policy = resolve_shard_policy(shard_policy, len(files), num_pipelines, split)
    if input_context is not None and policy == "file" and num_pipelines > 1:
        files = files[pipeline_id::num_pipelines]

    # Record sharding keeps records whose position modulo the worker count is this
    # worker's, so every worker must see the records in the same order.
    shard_records_here = input_context is not None and policy == "data" and num_pipelines > 1
    tf_shards_records = input_context is None and policy == "data" and num_pipelines > 1
    keep_order = not training or tf_shards_records
    ordered_read = keep_order or shard_records_here
    records = _read_records(files, training, ordered_read, seed, num_parallel_calls)
    if shard_records_here:
        records = records.shard(num_pipelines, pipeline_id)
    if holdout is not None:
        part, fraction = _check_holdout(holdout)
        keep_heldout = part == "heldout"
        # Only the id is parsed here: the map below parses the whole example.
        records = records.filter(
            lambda s: tf.equal(
                in_holdout(tf.io.parse_single_example(s, _ID_SPEC)[schema.IMAGE_ID], fraction),
                keep_heldout,
            )
        )

    def make_targets(example, order_seed):
        hot = targets.multi_hot(example[schema.LABEL_IDS], num_classes)
        if label_order is None:
            return hot
        ordered = targets.order_labels(
            example[schema.LABEL_IDS],
            example[schema.LABEL_AREAS],
            label_order,
            rank_table,
            seed=order_seed,
        )
        return {"multi_hot": hot, "sequence": targets.label_sequence(ordered, max_labels)}

    def output(image, example, order_seed):
        result = (image, make_targets(example, order_seed))
        return result + (example[schema.IMAGE_ID],) if with_ids else result

    op_seed = None if seed is None else seed + (pipeline_id or 0)
    # Only the features the maps use are parsed (a few microseconds per record less).
    keys = [schema.IMAGE_ENCODED, schema.LABEL_IDS]
    if label_order is not None:
        keys.append(schema.LABEL_AREAS)
    train_keys = keys + [schema.IMAGE_ID] if with_ids else keys
    eval_keys = keys + [schema.IMAGE_ID]

    def train_map(serialized):
        example = schema.parse_example(serialized, train_keys)
        # A per-example seed pair from a stateful draw: zipping in a Dataset.random
        # stream would hide the shard files from TensorFlow's file auto-sharding.
        seed_pair = tf.random.uniform([2], 0, 2**62, dtype=tf.int64, seed=op_seed)
        image_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
        image = preprocessing.preprocess_for_train(
            example[schema.IMAGE_ENCODED],
            image_size,
            record_normalization,
            seed=image_seed,
            scale=augmentation.crop_scale,
            ratio=augmentation.crop_ratio,
            flip=augmentation.flip,
            antialias=antialias,
            dct_method=dct_method,
            dct_scaling=dct_scaling,
            dct_min_fraction=dct_min_fraction,
        )
        return output(image, example, order_seed)

    def eval_map(serialized):
        example = schema.parse_example(serialized, eval_keys)
        image = preprocessing.preprocess_for_eval(
            example[schema.IMAGE_ENCODED], image_size, normalization, antialias
        )
        # A random order in evaluation is drawn from the image id: the same every pass.
        order_seed = tf.stack([example[schema.IMAGE_ID], tf.constant(seed or 0, tf.int64)])
        return output(image, example, order_seed)

    if training:
        num_examples = int(info.get("num_examples") or DEFAULT_SHUFFLE_BUFFER)
        buffer = shuffle_buffer or min(DEFAULT_SHUFFLE_BUFFER, max(1, num_examples))
        # When TensorFlow shards the output by record, all workers shuffle alike.
        shuffle_seed = (seed or 0) if tf_shards_records else seed
        records = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
        if repeat:
            records = records.repeat()
        ds = records.map(train_map, num_parallel_calls=num_parallel_calls, deterministic=keep_order)
    else:
        if repeat:
            records = records.repeat()
        ds = records.map(eval_map, num_parallel_calls=num_parallel_calls, deterministic=True)

    drop = training if drop_remainder is None else drop_remainder
    # A plain batch after the parallel map lets tf.data fuse the two (map_and_batch
    # fusion), which cost ~5% less CPU per image than a parallel batch here.
    ds = ds.batch(batch_size, drop_remainder=drop)
    if batch_ops is not None:

        def augment_batch(images, *rest):
            images = preprocessing.to_model_input(batch_ops(images), normalization)
            return (images, *rest)

        ds = ds.map(augment_batch, num_parallel_calls=num_parallel_calls, deterministic=keep_order)
    ds = ds.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = keep_order
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.map_and_batch_fusion = True
    # With an input context the pipeline has sharded itself above.
    options.experimental_distribute.auto_shard_policy = (
        _AUTO_SHARD["off"] if input_context is not None else _AUTO_SHARD[policy]
    )
    return ds.with_options(options)


HOLDOUT_PARTS = ("rest", "heldout")
"""The two parts of a split :func:`in_holdout` divides."""

_HOLDOUT_BUCKETS = 10_000


def _check_holdout(holdout):
    try:
        part, fraction = holdout
    except (TypeError, ValueError):
        raise UsageError(f"holdout must be (part, fraction), got {holdout!r}") from None
    if part not in HOLDOUT_PARTS:
        raise UsageError(f"holdout part must be one of {', '.join(HOLDOUT_PARTS)}, got {part!r}")
    if not 0 < float(fraction) < 1:
        raise UsageError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    return part, float(fraction)


def in_holdout(image_ids, fraction):
    """Whether images belong to the held-out fraction of their split.

    The choice hashes the image id (FarmHash of its decimal text), so it is the
    same on every machine, pass and shard layout, and about ``fraction`` of
    any split's images are held out.

    Args:
        image_ids: int64 tensor (or array) of image ids, any shape.
        fraction: Held-out fraction in (0, 1).

    Returns:
        A bool tensor of the same shape.

    Example:
        >>> held = in_holdout(tf.range(1000, dtype=tf.int64), 0.1)  # ~100 True
    """
    text = tf.strings.as_string(tf.cast(image_ids, tf.int64))
    bucket = tf.strings.to_hash_bucket_fast(text, _HOLDOUT_BUCKETS)
    return bucket < int(round(float(fraction) * _HOLDOUT_BUCKETS))


_LABEL_SPEC = {key: schema.FEATURE_SPEC[key] for key in (schema.IMAGE_ID, schema.LABEL_IDS)}
_ID_SPEC = {schema.IMAGE_ID: schema.FEATURE_SPEC[schema.IMAGE_ID]}
_LABEL_SPEC[schema.LABEL_AREAS] = schema.FEATURE_SPEC[schema.LABEL_AREAS]


def read_split_labels(data_dir, split, holdout=None):
    """Read a split's image ids, multi-hot labels and label areas in eval order.

    The order is that of ``make_dataset(..., training=False)`` without
    sharding: the shards in manifest order, records in file order.

    Args:
        data_dir: Folder written by ``kerasmlic build``.
        split: Split name.
        holdout: ``None`` or ``(part, fraction)``, as :func:`make_dataset`.

    Returns:
        A dict with ``image_ids`` int64 ``(N,)``, ``multi_hot`` float32
        ``(N, C)`` and ``label_areas`` float32 ``(N, C)`` (0 where absent).
    """
    manifest = manifest_lib.load_manifest(data_dir)
    files = _split_files(data_dir, split, manifest)
    num_classes = len(manifest["classes"])
    ds = tf.data.TFRecordDataset(files, buffer_size=8 << 20).batch(1024)
    ds = ds.map(lambda s: tf.io.parse_example(s, _LABEL_SPEC))
    ids, hots, areas = [], [], []
    for batch in ds:
        batch_ids = batch[schema.IMAGE_ID].numpy()
        rows = batch[schema.LABEL_IDS].indices.numpy()[:, 0]
        cols = batch[schema.LABEL_IDS].values.numpy()
        # Ids and areas are aligned per example, so their sparse values align too.
        area_values = batch[schema.LABEL_AREAS].values.numpy()
        hot = np.zeros((len(batch_ids), num_classes), np.float32)
        area = np.zeros((len(batch_ids), num_classes), np.float32)
        hot[rows, cols] = 1.0
        area[rows, cols] = area_values
        if holdout is not None:
            part, fraction = _check_holdout(holdout)
            keep = in_holdout(batch_ids, fraction).numpy() == (part == "heldout")
            batch_ids, hot, area = batch_ids[keep], hot[keep], area[keep]
        ids.append(batch_ids)
        hots.append(hot)
        areas.append(area)
    if not ids:
        empty = np.zeros((0, num_classes), np.float32)
        return {"image_ids": np.zeros((0,), np.int64), "multi_hot": empty, "label_areas": empty}
    return {
        "image_ids": np.concatenate(ids),
        "multi_hot": np.concatenate(hots),
        "label_areas": np.concatenate(areas),
    }


def read_split_ids(data_dir, split, holdout=None):
    """Return a split's image ids in eval order (see :func:`read_split_labels`).

    Args:
        data_dir: Folder written by ``kerasmlic build``.
        split: Split name.
        holdout: ``None`` or ``(part, fraction)``, as :func:`make_dataset`.

    Returns:
        int64 numpy array ``(N,)``.
    """
    return read_split_labels(data_dir, split, holdout)["image_ids"]
