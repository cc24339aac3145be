"""``train_fit(config) -> run_dir``: training with ``model.fit`` (``default``, ``mirrored``).

:func:`kerasmlic.training.train` hands a config here unless it asks for
``train.strategy: multiworker`` (:mod:`kerasmlic.training.multiworker`).

Steps: resolve the config, check the shards, prepare (or resume) the run
directory, build the model under the distribution strategy, then fit in one
or two phases (encoder frozen for ``train.freeze_encoder_epochs``, then
fine-tuned), each with its own AdamW warm-up + cosine schedule and its own
``BackupAndRestore`` folder; ``train.early_stopping_patience`` ends the run
after that many validation passes without a val mAP gain (the best model is
kept, not restored into the last). After training: load the best model (by
val mAP), optionally calibrate per-class thresholds on data the validation
split never sees (``evaluation.calibration_split``: a held-out part of train
by default, see :mod:`kerasmlic.training.builder`), evaluate it on the
validation split, and write ``summary.json`` last (:mod:`kerasmlic.training.finish`,
shared with the multi-worker driver).
"""

import time

from kerasmlic.errors import UsageError
from kerasmlic.evaluation.rundir import RunPaths
from kerasmlic.training import builder, rundir, setup
from kerasmlic.training import config as config_lib
from kerasmlic.training.finish import finish_run


def train_fit(config, *, log=print):
    """Train a model from a config with ``model.fit``; return the run directory.

    Running the same config again after an interruption (even SIGKILL)
    continues from the last completed epoch.

    Args:
        config: A config dict (merged over ``config.DEFAULTS``), a YAML path,
            or None for the defaults (``data.dir`` must then come from somewhere).
        log: A ``print``-like function for progress lines.

    Returns:
        The run directory (str).

    Raises:
        UsageError: Bad config, missing data or split, a run dir that cannot be
            resumed, an image size the backbone rejects, a diverging loss, or
            ``train.strategy: multiworker`` (``kerasmlic.training.train`` runs
            that with the step driver).
    """
    config = builder.resolve(config)
    name = config["model"]["name"]
    if config["train"]["strategy"] == "multiworker":
        # Keras 3 model.fit fails under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585): the step driver runs it.
        raise UsageError(
            "train_fit does not run train.strategy=multiworker; kerasmlic.training.train "
            "hands it to the multi-worker step driver"
        )
    data_dir, manifest, train_info = builder.check_data(config)
    builder.check_options(config, manifest, data_dir)
    config["run_dir"] = config["run_dir"] or builder.default_run_dir(config)

    with setup.precision_policy(config), builder.determinism(config):
        # The model is built before the run dir is touched, so a config the
        # model rejects (e.g. an image size) leaves nothing half-made behind.
        strategy, model = _build(config, manifest)
        resuming = rundir.prepare_run_dir(config["run_dir"], config, data_dir, manifest)
        log(f"{'resuming' if resuming else 'training'} {name} in {config['run_dir']} on {data_dir}")
        data = (data_dir, manifest, train_info)
        return _train(config, strategy, model, setup.prepare_training(config, model, data), log)


def _build(config, manifest):
    from kerasmlic.training.strategy import make_strategy

    strategy = make_strategy(config["train"]["strategy"])
    return strategy, setup.build_model(config, len(manifest["classes"]), strategy=strategy)


def _train(config, strategy, model, prepared, log):
    from kerasmlic.models.encoders import set_encoder_trainable
    from kerasmlic.training import callbacks as cb
    from kerasmlic.training.precise_bn import precise_batchnorm_callback

    start_time = time.time()
    train_cfg, eval_cfg = config["train"], config["evaluation"]
    paths = RunPaths(config["run_dir"])
    names = prepared.class_names
    data_dir, train_ds = prepared.data_dir, prepared.train_ds
    steps_per_epoch = prepared.steps_per_epoch
    if builder.train_holdout(config) is not None:
        log(
            f"training on {prepared.num_train} of {prepared.train_info['num_examples']} train "
            f"images; the rest ({100 * eval_cfg['holdout_fraction']:g}%) is held out to "
            "calibrate thresholds"
        )
    evaluation = setup.validation_callback(
        config,
        names,
        setup.val_predictor(config, data_dir),
        best_path=paths.best,
        log=log,
        final_epoch=train_cfg["epochs"],
    )
    precise = precise_batchnorm_callback(config, train_ds, evaluation)
    state = rundir.read_state(paths.root)
    phases = builder.phase_plan(train_cfg, config_lib.model_settings(config))
    verbose = builder.fit_verbosity(train_cfg["verbose"])
    for index, (first, last, trainable) in enumerate(phases):
        if index < state["phases_done"] or state.get("stopped_early_at"):
            continue
        if index and index == state["phases_done"]:
            model.load_weights(paths.phase_weights(index - 1))
        if trainable is not None:
            set_encoder_trainable(model, trainable)
            log(
                f"phase {index + 1}: epochs {first + 1}-{last}, encoder "
                f"{'fine-tuned' if trainable else 'frozen'}"
            )
        setup.compile_model(
            model,
            config,
            steps_per_epoch,
            last - first,
            trainable=trainable,
            loss=prepared.loss,
            num_classes=len(names),
            strategy=strategy,
        )
        backup = paths.backup_dir(index)
        restart = rundir.backup_epoch(backup)
        rundir.trim_history(paths.history, first if restart is None else restart)
        if restart is not None:
            log(f"restoring the backup of epoch {restart} from {backup}")
        callbacks, stopper = setup.run_callbacks(
            config, evaluation, paths, index, precise_bn=precise, log=log
        )
        model._initial_epoch = None  # a restored epoch must not leak into the next phase
        model.fit(
            train_ds,
            epochs=last,
            initial_epoch=first,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles
        )
        cb.save_weights_atomic(model, paths.phase_weights(index))
        state = {"phases_done": index + 1}
        if stopper is not None and stopper.stopped_epoch is not None:
            # Later phases are skipped, on this call and on any resumed one.
            state["stopped_early_at"] = stopper.stopped_epoch
        rundir.write_state(paths.root, state)

    finish_run(
        model,
        config,
        paths,
        data_dir,
        names,
        evaluation,
        start_time,
        log=log,
        stopped_early_at=state.get("stopped_early_at"),
    )
    return paths.root
