"""Multi-worker training: a step driver over ``strategy.run`` for ``--strategy multiworker``.

Keras 3's ``model.fit`` fails under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585: "Attempt to convert a value (PerReplica...) to a
Tensor"), so multi-worker training runs its own loop, with the same models,
losses, optimiser, metrics and run directory as ``train(config)``:

- every worker reads ``TF_CONFIG``; the chief (task ``chief``, or ``worker`` 0
  when there is none) owns the run directory;
- the input is sharded across workers by file when every worker gets at least
  one shard file, by record otherwise (logged), and the global batch is split
  evenly between the replicas;
- each replica's loss is its mean loss divided by the replica count (the
  models' ``compute_loss`` and Keras losses do this), i.e. the sum of its
  per-example losses over the global batch; the optimiser all-reduces
  (sums) the gradients, so a step follows the global-batch mean;
- metrics are updated per replica and read in the cross-replica context,
  where their on-read variables sum across workers; BatchNorm moving
  statistics are averaged across workers at each epoch end, so all workers
  hold identical weights;
- after every epoch all workers save a ``tf.train.Checkpoint`` (model,
  optimiser, epoch): the chief into ``RUN_DIR/backup/multiworker``, the others
  into temporary folders they delete (TensorFlow's multi-worker pattern, as
  in ``BackupAndRestore``). A worker killed mid-training and restarted with
  the same command, together with the workers that failed with it, restores
  the chief's latest checkpoint and loses only the epoch in progress;
- ``train.freeze_encoder_epochs``: two phases as in ``train`` (encoder
  frozen at ``learning_rate``, then fine-tuned at ``fine_tune_learning_rate``,
  each with its own schedule); each phase compiles a fresh optimiser inside
  ``strategy.scope()``; a checkpoint is restored under the phase that saved
  it (the one its epoch ends in), so a restart inside phase 2 goes on with
  phase 2's optimiser and one at the boundary starts phase 2 afresh;
- validation is sharded: every worker predicts its share of the val split
  (by file or by record, :mod:`kerasmlic.training.sharded_eval`), one
  all-gather brings all shares to every worker, and the metrics are those of
  the whole split in record order, as one process would compute them;
- only the chief writes ``history.csv``, the best model, the evaluation and
  ``summary.json``;
- ``train.early_stopping_patience``: the chief decides after the validation
  pass and every worker learns the decision through one all-reduce per
  epoch, so all of them leave the loop after the same epoch;
- ``train.deterministic`` seeds every worker and turns on TensorFlow's
  deterministic ops, as in ``train``; each worker's input order is then
  fixed, so a rerun with the same cluster repeats the run;
- calibration (``evaluation.calibrate``) runs on the chief after training,
  on the train holdout (left out of every worker's stream) or on another split.
"""

import csv
import math
import os
import shutil
import signal
import tempfile
import time

from kerasmlic.errors import UsageError
from kerasmlic.evaluation.rundir import RunPaths, read_history
from kerasmlic.training import builder, rundir, setup
from kerasmlic.training import config as config_lib
from kerasmlic.training.finish import finish_run
from kerasmlic.training.strategy import multiworker_strategy

CHECKPOINT_FOLDER = "multiworker"
"""Subfolder of the run dir's ``backup/`` that holds the chief's checkpoints."""

KILL_HOOK_ENV = "KERASMLIC_TEST_KILL_AFTER_EPOCH"
"""Test hook: a worker with this set to N SIGKILLs itself one step into epoch N + 1."""


def is_chief(strategy):
    """Return True on the worker that writes the run directory.

    Args:
        strategy: A ``MultiWorkerMirroredStrategy``.

    Returns:
        True for task ``chief``, for ``worker`` 0 when the cluster has no
        chief, and for a single process without a cluster.
    """
    resolver = strategy.cluster_resolver
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if task_type in (None, "chief"):
        return True
    cluster = resolver.cluster_spec().as_dict() if resolver else {}
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def describe_sharding(num_files, num_workers, global_batch, num_replicas):
    """Return the input-sharding policy and the line that announces it.

    Args:
        num_files: Shard files of the training split.
        num_workers: Workers in the cluster.
        global_batch: Global batch size.
        num_replicas: Replicas in sync (all workers' devices).

    Returns:
        ``(policy, message)`` with policy ``"file"`` or ``"data"``.

    Raises:
        UsageError: The global batch does not split evenly between the replicas.
    """
    if global_batch % num_replicas:
        raise UsageError(
            f"batch size {global_batch} does not split evenly between {num_replicas} "
            f"replicas; use a multiple of {num_replicas}"
        )
    share = f"global batch {global_batch} = {num_replicas} x {global_batch // num_replicas}"
    if num_files >= num_workers:
        return "file", (
            f"input sharding: by file ({num_files} shard files over {num_workers} workers); {share}"
        )
    return "data", (
        f"input sharding: by data ({num_files} shard file(s) < {num_workers} workers, so every "
        f"worker reads every file and keeps 1 record in {num_workers}; rebuild with "
        f"--shards >= {num_workers} to shard by file); {share}"
    )


def _write_history_row(path, epoch, logs):
    """Append a ``CSVLogger``-style row (``epoch`` then sorted keys), written atomically."""
    keys = sorted(logs)
    rows = []
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    if not rows:
        rows = [["epoch", *keys]]
    header = rows[0]
    rows.append([str(epoch)] + [_csv_value(logs.get(key)) for key in header[1:]])
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, path)


def _csv_value(value):
    if value is None:
        return ""
    return repr(float(value))


def train_multiworker(config, *, log=print):
    """Train a resolved config with ``MultiWorkerMirroredStrategy``; return the run dir.

    Every worker runs the same command (same config, its own ``TF_CONFIG``).
    Rerunning it after a worker was killed resumes from the chief's last
    checkpoint.

    Args:
        config: A config dict or YAML path (resolved with ``builder.resolve``)
            with ``train.strategy == "multiworker"``.
        log: A ``print``-like function for progress lines.

    Returns:
        The run directory on the chief; on other workers the temporary folder
        they wrote to (already deleted).

    Raises:
        UsageError: Unsupported options, missing data, a batch that does not
            split evenly, a diverging loss.
    """
    config = builder.resolve(config)
    train_cfg = config["train"]
    if train_cfg["strategy"] != "multiworker":
        raise UsageError("train_multiworker needs train.strategy=multiworker")
    name = config["model"]["name"]
    data_dir, manifest, train_info = builder.check_data(config)
    builder.check_options(config, manifest, data_dir)
    config["run_dir"] = config["run_dir"] or builder.default_run_dir(config)
    # Checks above run no TF op: collective ops must be configured before the first.
    strategy = multiworker_strategy()
    chief = is_chief(strategy)
    run_dir = config["run_dir"]
    # Non-chief workers write to a private temporary folder (TF's multi-worker
    # checkpointing pattern) and read only the chief's checkpoints.
    work_dir = run_dir if chief else tempfile.mkdtemp(prefix="kerasmlic-worker-")
    say = log if chief else (lambda *a, **k: None)
    try:
        with setup.precision_policy(config), builder.determinism(config):
            model = setup.build_model(config, len(manifest["classes"]), strategy=strategy)
            if chief:
                resuming = rundir.prepare_run_dir(run_dir, config, data_dir, manifest)
                say(f"{'resuming' if resuming else 'training'} {name} in {run_dir} on {data_dir}")
            _run(config, strategy, model, data_dir, manifest, train_info, chief, work_dir, say)
        return run_dir if chief else work_dir
    finally:
        if not chief:
            shutil.rmtree(work_dir, ignore_errors=True)


def _make_train_step(strategy, model, optimizer, metrics):
    """A ``tf.function`` of one global step; made per phase, for its optimiser."""
    import tensorflow as tf

    from kerasmlic.models.base import split_targets

    teacher_forced = getattr(model, "teacher_forced", None)
    # Collected now: the phase fixed which variables train.
    variables = model.trainable_variables

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            if teacher_forced is not None:
                y_pred, _ = teacher_forced(x, y, training=True)
            else:
                y_pred = model(x, training=True)
            # Already divided by the replica count: the global-batch mean once summed.
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        multi_hot, _ = split_targets(y)
        for metric in metrics:
            metric.update_state(multi_hot, y_pred["scores"])
        return loss

    @tf.function(autograph=False)
    def train_step(iterator):
        x, y = next(iterator)
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def _make_statistics_sync(strategy, model):
    """``sync()``: average BatchNorm moving statistics across workers (one collective)."""
    import tensorflow as tf

    # Chosen before a phase freezes the encoder, so its kernels are not averaged
    # with the statistics (they are identical everywhere anyway).
    statistics = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    @tf.function(autograph=False)
    def mean_statistics():
        def replica_fn():
            values = [tf.identity(v.value) for v in statistics]
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.MEAN, values)

        return strategy.run(replica_fn)

    def sync():
        # Each worker's BatchNorm moving statistics follow its own share of the
        # batch and Keras 3 keeps them apart (as under MirroredStrategy, see
        # callbacks.average_replica_statistics): average them across workers so
        # every worker evaluates and saves the same model.
        if not statistics:
            return
        means = strategy.experimental_local_results(mean_statistics())[0]
        for variable, mean in zip(statistics, means, strict=True):
            inner = getattr(variable, "value", variable)
            for component in getattr(inner, "values", None) or [inner]:
                component.assign(mean)

    return sync


def _make_stop_vote(strategy):
    """``vote(flag) -> bool``: True on every worker when any worker says stop."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def agree_to_stop(flag):
        def replica_fn():
            # tf.identity places the flag on the replica's device for the collective.
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

        return strategy.run(replica_fn)

    def vote(says_stop):
        flag = tf.constant(1.0 if says_stop else 0.0)
        return float(strategy.experimental_local_results(agree_to_stop(flag))[0]) > 0

    return vote


def _run(config, strategy, model, data_dir, manifest, train_info, chief, work_dir, log):
    import tensorflow as tf

    from kerasmlic.data.manifest import shard_paths
    from kerasmlic.data.pipeline import workers_from_tf_config
    from kerasmlic.models.encoders import set_encoder_trainable
    from kerasmlic.training import callbacks as cb
    from kerasmlic.training.sharded_eval import ShardedValidation

    start_time = time.time()
    train_cfg, data_cfg, eval_cfg = config["train"], config["data"], config["evaluation"]
    paths = RunPaths(config["run_dir"])
    global_batch = data_cfg["batch_size"]
    epochs = train_cfg["epochs"]
    num_workers = workers_from_tf_config()
    num_files = len(shard_paths(data_dir, data_cfg["train_split"], manifest))
    policy, message = describe_sharding(
        num_files, num_workers, global_batch, strategy.num_replicas_in_sync
    )
    log(message)
    # Global batches: experimental_distribute_dataset rebatches them per replica.
    prepared = setup.prepare_training(
        config,
        model,
        (data_dir, manifest, train_info),
        shard_policy=policy,
        num_workers=num_workers,
    )
    names, steps_per_epoch = prepared.class_names, prepared.steps_per_epoch
    iterator = iter(strategy.experimental_distribute_dataset(prepared.train_ds))
    phases = builder.phase_plan(train_cfg, config_lib.model_settings(config))

    with strategy.scope():
        metrics = builder.fit_metrics(len(names))
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # The epoch early stopping ended the run after (0: not stopped).
        stopped_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="stopped_early_at")
    chief_ckpt_dir = os.path.join(paths.root, "backup", CHECKPOINT_FOLDER)
    ckpt_dir = chief_ckpt_dir if chief else os.path.join(work_dir, "ckpt")
    latest = tf.train.latest_checkpoint(chief_ckpt_dir)
    if latest:
        # The epoch says which phase resumes; its weights and optimiser are
        # restored once that phase's optimiser is built.
        tf.train.Checkpoint(epoch=epoch_var, stopped=stopped_var).restore(latest).expect_partial()
    start_epoch = int(epoch_var.numpy())
    if latest:
        log(f"restored checkpoint {latest}: resuming after epoch {start_epoch}")
    if chief:
        rundir.trim_history(paths.history, start_epoch)

    sync_statistics = _make_statistics_sync(strategy, model)
    stop_everywhere = _make_stop_vote(strategy)

    @tf.function(autograph=False)
    def read_metrics():
        return {metric.name: metric.result() for metric in metrics}

    # Every worker predicts its share of the val split and gets the whole
    # split's scores back; only the chief saves the best model and logs.
    validation = ShardedValidation(
        strategy, data_dir, data_cfg["val_split"], batch_size=eval_cfg["batch_size"], log=log
    )
    evaluation = setup.validation_callback(
        config,
        names,
        validation,
        best_path=paths.best if chief else None,
        log=log,
        final_epoch=epochs,
    )
    evaluation.set_model(model)
    if chief:
        evaluation.on_train_begin()
    patience = train_cfg["early_stopping_patience"]
    counter = None
    if patience:
        waited = 0
        if chief:
            history = read_history(paths.history)
            waited = cb.evaluations_without_gain(history, evaluation.best_epoch)
        counter = cb.PatienceCounter(patience, waited)
    kill_after = os.environ.get(KILL_HOOK_ENV)
    stopped_at = int(stopped_var.numpy()) or None
    # The checkpoint is restored in the configuration of the phase that saved
    # it (its trainability and optimiser: the model tracks its optimiser, so
    # its weights cannot be restored alone under another phase's compile);
    # a checkpoint from a phase's last epoch is then followed by the next phase.
    saved_in = None
    if latest:
        saved_in = next((i for i, (a, b, _) in enumerate(phases) if a < start_epoch <= b), None)
    for index, (first, last, trainable) in enumerate(phases):
        trains = stopped_at is None and start_epoch < last
        if not trains and index != saved_in:
            continue
        if trainable is not None:
            set_encoder_trainable(model, trainable)
            if trains:
                log(
                    f"phase {index + 1}: epochs {first + 1}-{last}, encoder "
                    f"{'fine-tuned' if trainable else 'frozen'}"
                )
        # A fresh optimiser over this phase's trainable variables, with the
        # phase's own schedule, created in the scope so its slots mirror.
        optimizer = setup.compile_model(
            model,
            config,
            steps_per_epoch,
            last - first,
            trainable=trainable,
            loss=prepared.loss,
            strategy=strategy,
            step_driver=True,
        )
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=epoch_var, stopped=stopped_var
        )
        manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
        if index == saved_in:
            checkpoint.restore(latest).expect_partial()
        train_step = _make_train_step(strategy, model, optimizer, metrics)
        end = last if trains else first  # a phase restored only to be left trains no epoch
        for epoch in range(max(first, start_epoch), end):
            epoch_start = time.time()
            for metric in metrics:
                metric.reset_state()
            total = 0.0
            for step in range(steps_per_epoch):
                if kill_after is not None and epoch == int(kill_after) and step == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                value = float(train_step(iterator))
                if not math.isfinite(value):
                    raise cb.TrainingDiverged(
                        f"loss is {value} at epoch {epoch + 1} step {step + 1}; lower the "
                        f"learning rate or check the data"
                    )
                total += value
            sync_statistics()
            logs = {"loss": total / steps_per_epoch}
            # Read in the strategy's cross-replica context, where the metrics'
            # on-read variables sum across all workers (a collective: every worker reads).
            with strategy.scope():
                logs.update({k: float(v) for k, v in read_metrics().items()})
            logs["learning_rate"] = float(keras_lr(optimizer))
            if len(phases) > 1:
                logs["phase"] = index + 1
            # Every worker takes part (the validation gather is a collective).
            validation.seconds = None
            evaluation.on_epoch_end(epoch, logs)
            # The sharded pass's own time (predict and gather), NaN when it did not run.
            logs["val_seconds"] = float("nan") if validation.seconds is None else validation.seconds
            if chief:
                logs["epoch_seconds"] = time.time() - epoch_start
                _write_history_row(paths.history, epoch, logs)
            log(
                f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} "
                f"({logs.get('epoch_seconds', time.time() - epoch_start):.1f}s)"
            )
            # The row goes before the checkpoint: a kill in between leaves a row
            # that trim_history drops on resume, never a missing one. Every worker
            # saves (the save is collective); only the chief's copy is kept.
            stop = False
            if counter is not None:
                improved = chief and evaluation.best_epoch == epoch + 1
                stop = stop_everywhere(chief and counter.update(logs, improved))
            if stop:
                stopped_at = epoch + 1
                stopped_var.assign(stopped_at)
                log(
                    f"early stop after epoch {epoch + 1}: no val mAP gain in {patience} "
                    f"evaluation(s) (best {evaluation.best_epoch})"
                )
            epoch_var.assign(epoch + 1)
            manager.save(checkpoint_number=epoch + 1)
            if stop:
                break
        if chief:
            cb.save_weights_atomic(model, paths.phase_weights(index))
            state = {"phases_done": index + 1}
            if stopped_at is not None:
                state["stopped_early_at"] = stopped_at
            rundir.write_state(paths.root, state)

    if not chief:
        return True
    finish_run(
        model,
        config,
        paths,
        config["data"]["dir"],
        names,
        evaluation,
        start_time,
        log=log,
        stopped_early_at=stopped_at,
        strategy="multiworker",
    )
    return True


def keras_lr(optimizer):
    """Return the optimiser's current learning rate as a float.

    Args:
        optimizer: A Keras optimiser (a schedule is evaluated at its iteration).

    Returns:
        The learning rate.
    """
    import numpy as np

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(np.asarray(inner.learning_rate))
