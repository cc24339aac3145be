"""Validation sharded across the workers of a multi-worker run, gathered to all.

Each worker predicts its own share of the validation split with plain forward
passes, then one all-gather collective brings every worker's rows (with their
record positions and image ids) to every worker, which puts them back into
the split's record order (:func:`kerasmlic.data.pipeline.read_split_labels`)
and checks that every record came exactly once. The metrics are then computed
on the whole split, so the figures are those of a single process predicting
it alone.

The shares are fixed by the manifest, not by timing:

- **by file** when the split has at least as many shard files as workers:
  worker ``w`` reads files ``w, w + W, ...`` (manifest order) and nothing
  else; its records' positions follow from the per-file ``num_examples``;
- **by record** otherwise: every worker reads every file in order and keeps
  the records whose position modulo ``W`` is ``w`` (it decodes only those).

Workers predict different numbers of images; the gather pads each share to
the largest one (TensorFlow's uneven all-gather), so no worker needs to know
the others' counts and no worker runs a collective per batch.
"""

import time

import numpy as np

from kerasmlic.errors import UsageError


def worker_position(strategy):
    """Return this worker's index in the cluster and the number of workers.

    The chief (task ``chief``) is index 0 and the workers follow it; without a
    chief, ``worker`` ``i`` is index ``i``.

    Args:
        strategy: A ``MultiWorkerMirroredStrategy``.

    Returns:
        ``(index, count)``; ``(0, 1)`` for a single process without a cluster.
    """
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    chiefs = len(cluster.get("chief", []))
    count = max(1, chiefs + len(cluster.get("worker", [])))
    task_type = getattr(resolver, "task_type", None)
    task_id = int(getattr(resolver, "task_id", None) or 0)
    if task_type in (None, "chief"):
        return 0, count
    return chiefs + task_id, count


def shard_plan(record_counts, num_workers):
    """Divide a split's records between workers, deterministically.

    Args:
        record_counts: Records per shard file, in manifest order.
        num_workers: Workers sharing the split.

    Returns:
        ``(policy, positions)``: ``"file"`` or ``"data"`` (by record), and for
        each worker the int64 positions (in the split's record order) of the
        records it predicts, in the order it reads them. Every position
        ``0 .. N-1`` appears exactly once over all workers.

    Raises:
        UsageError: ``num_workers`` is not a positive integer.
    """
    if int(num_workers) < 1:
        raise UsageError(f"num_workers must be a positive integer, got {num_workers!r}")
    counts = [int(c) for c in record_counts]
    total = sum(counts)
    if len(counts) >= num_workers:
        starts = np.cumsum([0, *counts[:-1]], dtype=np.int64)
        positions = []
        for worker in range(num_workers):
            ranges = [
                np.arange(starts[f], starts[f] + counts[f], dtype=np.int64)
                for f in range(worker, len(counts), num_workers)
            ]
            positions.append(np.concatenate(ranges) if ranges else np.zeros(0, np.int64))
        return "file", positions
    return "data", [np.arange(w, total, num_workers, dtype=np.int64) for w in range(num_workers)]


def predict_shard(
    forward,
    data_dir,
    split,
    *,
    image_size,
    normalization,
    batch_size,
    num_classes,
    policy,
    num_workers,
    worker_index,
):
    """Predict one worker's share of a split with a model's forward pass.

    Args:
        forward: ``forward(images) -> {"scores", "predicted"}`` (a model in
            inference mode; no collective ops, so it runs on this worker alone).
        data_dir: Shard folder.
        split: Split name.
        image_size: The model's input side.
        normalization: The model's input normalisation.
        batch_size: Images per forward pass on this worker.
        num_classes: Classes (the width of empty outputs).
        policy: ``"file"`` or ``"data"``, from :func:`shard_plan`.
        num_workers: Workers sharing the split.
        worker_index: This worker's index.

    Returns:
        ``(image_ids, scores, predicted)`` numpy arrays of this worker's
        records, in the order of its :func:`shard_plan` positions.
    """
    import tensorflow as tf

    from kerasmlic.data.pipeline import make_dataset

    # One input pipeline per worker; the pipeline picks this worker's files or
    # records itself, in the eval mode's stable order.
    context = tf.distribute.InputContext(
        num_input_pipelines=num_workers, input_pipeline_id=worker_index, num_replicas_in_sync=1
    )
    ds = make_dataset(
        data_dir,
        split,
        image_size=image_size,
        batch_size=batch_size,
        training=False,
        normalization=normalization,
        drop_remainder=False,
        shard_policy=policy,
        input_context=context,
        with_ids=True,
    )
    ids, scores, predicted = [], [], []
    for images, _, batch_ids in ds:
        out = forward(images)
        ids.append(batch_ids.numpy())
        scores.append(np.asarray(out["scores"], np.float32))
        predicted.append(np.asarray(out["predicted"], np.float32))
    if not ids:
        empty = np.zeros((0, num_classes), np.float32)
        return np.zeros(0, np.int64), empty, empty.copy()
    return (
        np.concatenate(ids).astype(np.int64),
        np.concatenate(scores),
        np.concatenate(predicted),
    )


def merge_shards(positions, image_ids, scores, predicted, expected_ids):
    """Put gathered rows back into the split's record order; check the cover.

    Args:
        positions: (M,) int64 record positions of the gathered rows.
        image_ids: (M,) int64 image ids of the rows.
        scores: (M, C) scores.
        predicted: (M, C) predicted label sets.
        expected_ids: (N,) image ids of the split in record order
            (``read_split_labels``).

    Returns:
        ``(scores, predicted)`` as (N, C) arrays in record order.

    Raises:
        UsageError: Some record is missing, repeated or out of range, or an
            image id is not the one at its position (the shards do not match
            their manifest).
    """
    positions = np.asarray(positions, np.int64)
    n = len(expected_ids)
    valid = positions.size == n and bool(np.all((positions >= 0) & (positions < n)))
    if valid:
        valid = bool(np.all(np.bincount(positions, minlength=n) == 1))
    if not valid:
        raise UsageError(
            f"sharded validation gathered {positions.size} rows for {n} images, not each "
            "image once: the shard files do not match dataset.json (run `kerasmlic verify`)"
        )
    order = np.empty(n, np.int64)
    order[positions] = np.arange(n)
    if not np.array_equal(np.asarray(image_ids, np.int64)[order], np.asarray(expected_ids)):
        raise UsageError(
            "sharded validation: image ids are not in the order of dataset.json's shards "
            "(run `kerasmlic verify`)"
        )
    return np.asarray(scores)[order], np.asarray(predicted)[order]


class ShardedValidation:
    """``predict_fn(model)`` of the validation callback, sharded across workers.

    Every worker must call it at the same epochs (it runs one collective); all
    of them get the whole split's predictions back, in record order.

    Args:
        strategy: The ``MultiWorkerMirroredStrategy`` the model was built under.
        data_dir: Shard folder.
        split: The validation split.
        batch_size: Images per forward pass on each worker.
        log: A ``print``-like function (the chief's) for the sharding line.
    """

    def __init__(self, strategy, data_dir, split, *, batch_size, log=print):
        from kerasmlic.data.manifest import load_manifest, split_info
        from kerasmlic.data.pipeline import read_split_labels

        self.strategy = strategy
        self.data_dir = data_dir
        self.split = split
        self.batch_size = batch_size
        self.index, self.num_workers = worker_position(strategy)
        manifest = load_manifest(data_dir)
        counts = [s["num_examples"] for s in split_info(manifest, split, data_dir)["shards"]]
        self.policy, plans = shard_plan(counts, self.num_workers)
        self.positions = plans[self.index]
        self.labels = read_split_labels(data_dir, split)
        self.num_classes = self.labels["multi_hot"].shape[1]
        self.seconds = None
        self._model = None
        self._forward = None
        self._gather = None
        how = "by file" if self.policy == "file" else "by record"
        log(
            f"validation sharding: {how} ({len(counts)} shard file(s), "
            f"{len(self.labels['image_ids'])} images over {self.num_workers} worker(s); "
            f"this worker predicts {len(self.positions)})"
        )

    def _gather_fn(self):
        import tensorflow as tf

        strategy = self.strategy
        local_replicas = max(1, len(strategy.extended.worker_devices))
        c = self.num_classes
        signature = [
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None, c], tf.float32),
            tf.TensorSpec([None, c], tf.float32),
        ]

        # Traced once (shapes vary by worker, hence the signature): collective
        # keys are handed out at trace time, in the same order on every worker.
        @tf.function(input_signature=signature, autograph=False)
        def gather(positions, ids, scores, predicted):
            def replica_fn(*values):
                context = tf.distribute.get_replica_context()
                # Every local replica (GPU) gets this worker's rows; only the
                # first sends them, so each row is gathered once.
                replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
                rows = tf.where(tf.equal(replica % local_replicas, 0), tf.shape(values[0])[0], 0)
                return context.all_gather([tf.identity(v[:rows]) for v in values], axis=0)

            result = strategy.run(replica_fn, args=(positions, ids, scores, predicted))
            return strategy.experimental_local_results(result)[0]

        return gather

    def __call__(self, model):
        """Predict this worker's share, gather all shares, return the whole split.

        Args:
            model: The model being trained (built under the strategy).

        Returns:
            ``(y_true, scores, predicted)`` numpy arrays over the split, in
            record order (``predict_fn``'s contract).
        """
        import tensorflow as tf

        from kerasmlic.evaluation.predict import model_image_size

        start = time.time()
        if self._model is not model:
            # One trace per model, reused by every evaluation epoch; plain
            # forward passes run no collective, so shares may differ in size.
            self._model = model
            self._forward = tf.function(lambda x: model(x, training=False), autograph=False)
        ids, scores, predicted = predict_shard(
            self._forward,
            self.data_dir,
            self.split,
            image_size=model_image_size(model),
            normalization=getattr(model, "normalization", None),
            batch_size=self.batch_size,
            num_classes=self.num_classes,
            policy=self.policy,
            num_workers=self.num_workers,
            worker_index=self.index,
        )
        # A count that differs from the plan is not raised here: this worker
        # would leave the others waiting in the gather. Marked rows (-1) fail
        # merge_shards on every worker alike.
        positions = np.full(len(ids), -1, np.int64)
        known = min(len(ids), len(self.positions))
        positions[:known] = self.positions[:known]
        if self._gather is None:
            self._gather = self._gather_fn()
        gathered = [t.numpy() for t in self._gather(positions, ids, scores, predicted)]
        scores, predicted = merge_shards(*gathered, self.labels["image_ids"])
        self.seconds = time.time() - start
        return self.labels["multi_hot"], scores, predicted
