"""The keras-tuner ``HyperModel``: a trial is a training config, trained like ``train``.

``build(hp)`` writes the trial's values into the base config
(:func:`kerasmlic.tuning.space.trial_config`) and builds the model the way
``kerasmlic train`` does (:func:`kerasmlic.training.setup.build_model`).
``fit(hp, model, ...)`` trains it with the objects ``train`` uses, made by
:mod:`kerasmlic.training.setup`: the same training stream, AdamW with
warm-up + cosine decay, class weighting for ``bce``, the NaN stop, and
``MultiLabelEvaluation``, which predicts the whole validation split after
every epoch and puts the package's own ``val_mAP``
(``kerasmlic.metrics.evaluate_predictions``) into the epoch logs: that is the
objective keras-tuner reads, not a streaming approximation.

A trial trains in one phase: ``train.freeze_encoder_epochs`` applies when the
best config is trained with ``kerasmlic train``.
"""

import keras_tuner
import tensorflow as tf

from kerasmlic.data.manifest import class_names
from kerasmlic.training import setup
from kerasmlic.training.builder import check_data, fit_verbosity
from kerasmlic.tuning import space as space_lib

OBJECTIVE = "val_mAP"
"""The metric every search maximises (written into the logs by ``MultiLabelEvaluation``)."""


def objective():
    """Return the search objective: ``val_mAP``, maximised.

    Returns:
        A ``keras_tuner.Objective``.
    """
    return keras_tuner.Objective(OBJECTIVE, direction="max")


def build_config_model(config, num_classes):
    """Build the model a training config names, seeded by ``train.seed``.

    Args:
        config: A resolved config.
        num_classes: Classes of the shards.

    Returns:
        An uncompiled kerasmlic model.
    """
    import keras

    keras.utils.set_random_seed(config["train"]["seed"])
    if config["train"]["deterministic"]:
        # Process-wide and left on: a study's trials all run deterministically.
        tf.config.experimental.enable_op_determinism()
    return setup.build_model(config, num_classes)


class KerasmlicHyperModel(keras_tuner.HyperModel):
    """Builds and trains one trial's model from the base config plus the trial's values.

    Args:
        base_config: The resolved base training config (``data.dir`` set).
        specs: The parsed search space (:func:`kerasmlic.tuning.space.parse_space`).
        strategy: Optional ``tf.distribute`` strategy the trial compiles under
            (give the tuner the same one: it builds the model under it).
        log: A ``print``-like function for progress lines.
    """

    def __init__(self, base_config, specs, *, strategy=None, log=print):
        super().__init__(name="kerasmlic")
        self.base_config = base_config
        self.specs = list(specs)
        self.strategy = strategy
        self.log = log
        self.data_dir, self.manifest, self.train_info = check_data(base_config)
        self.class_names = class_names(self.manifest)
        self._val_labels = None

    def declare_hyperparameters(self, hp):
        """Register the whole space (conditional entries included) on ``hp``.

        Args:
            hp: A ``keras_tuner.HyperParameters``.
        """
        space_lib.declare_space(hp, self.specs)

    def config_for(self, hp):
        """Return the training config of a trial.

        Args:
            hp: The trial's ``keras_tuner.HyperParameters``.

        Returns:
            A validated config dict.
        """
        space_lib.declare_space(hp, self.specs)
        return space_lib.trial_config(self.base_config, space_lib.active_values(hp, self.specs))

    def build(self, hp):
        """Build the trial's model with the registry's factory (not compiled).

        Args:
            hp: The trial's ``keras_tuner.HyperParameters``.

        Returns:
            A kerasmlic model.
        """
        config = self.config_for(hp)
        if config["train"]["mixed_precision"]:
            import keras

            # keras-tuner calls clear_session() before each build, which also
            # resets the dtype policy; ``tune`` restores the caller's at the end.
            keras.mixed_precision.set_global_policy("mixed_float16")
        return build_config_model(config, len(self.class_names))

    def _predict_val(self, config):
        from kerasmlic.data.pipeline import read_split_labels

        # Read once: every trial predicts the same split.
        if self._val_labels is None:
            self._val_labels = read_split_labels(self.data_dir, config["data"]["val_split"])
        return setup.val_predictor(config, self.data_dir, labels=self._val_labels)

    def fit(self, hp, model, *args, callbacks=None, epochs=1, initial_epoch=0, **kwargs):
        """Train the trial's model; ``val_mAP`` is in the logs of every epoch.

        Args:
            hp: The trial's ``keras_tuner.HyperParameters``.
            model: The model from :meth:`build` (Hyperband may have loaded an
                earlier trial's weights into it).
            *args: Unused (the data comes from the config).
            callbacks: keras-tuner's callbacks (they run after ours, so they
                see ``val_mAP``).
            epochs: Last epoch (Hyperband: cumulative epochs of the trial).
            initial_epoch: First epoch (Hyperband continues earlier trials).
            **kwargs: ``verbose`` is honoured; others are ignored.

        Returns:
            The ``History`` (keras-tuner picks the epoch with the best ``val_mAP``).

        Raises:
            keras_tuner.errors.FailedTrialError: The loss diverged (the trial
                fails, the search goes on).
        """
        from kerasmlic.training import callbacks as cb
        from kerasmlic.training.precise_bn import precise_batchnorm_callback

        config = self.config_for(hp)
        prepared = setup.prepare_training(
            config, model, (self.data_dir, self.manifest, self.train_info)
        )
        steps = prepared.steps_per_epoch
        setup.compile_model(
            model,
            config,
            steps,
            max(1, epochs - initial_epoch),
            loss=prepared.loss,
            strategy=self.strategy,
        )
        # Every epoch is scored (keras-tuner reads each), no model is kept.
        evaluation = setup.validation_callback(
            config, self.class_names, self._predict_val(config), every=1, log=self.log
        )
        verbose = kwargs.get("verbose", fit_verbosity(config["train"]["verbose"]))
        try:
            return model.fit(
                prepared.train_ds,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                callbacks=[
                    *setup.fit_callbacks(
                        evaluation,
                        precise_batchnorm_callback(config, prepared.train_ds, evaluation),
                    ),
                    *(callbacks or []),
                ],
                verbose=verbose,
                shuffle=False,
            )
        except cb.TrainingDiverged as e:
            raise keras_tuner.errors.FailedTrialError(str(e)) from None
        except tf.errors.DataLossError as e:
            # A corrupt shard fails every trial alike: stop the search at once (keras-tuner
            # re-raises fatal errors) so the CLI names the shard in one line.
            raise keras_tuner.errors.FatalRuntimeError(str(e)) from None
