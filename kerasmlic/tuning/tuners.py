"""The four keras-tuner tuners, with what kerasmlic adds to each.

- The space is declared in one pass (every conditional entry registered,
  no model built) instead of keras-tuner's build-until-all-conditions-seen.
- Each trial folder gets ``kerasmlic_trial.json``: which tuner (process) ran
  it, its pid and host, the trial's training config, status and duration
  (in distributed tuning, this is how the chief knows who ran what).
- A :class:`~kerasmlic.errors.UsageError` inside a trial (a value the model
  rejects) stops the search with that one line instead of being retried as
  a crashed trial; a diverging loss fails only that trial.
- The chief of a distributed search serves the oracle with
  :func:`kerasmlic.tuning.distributed.serve_oracle`.
"""

import json
import os
import socket
import time

import keras_tuner

from kerasmlic.data.manifest import write_json_atomic
from kerasmlic.errors import UsageError
from kerasmlic.tuning import distributed
from kerasmlic.tuning.hypermodel import objective

TUNERS = ("hyperband", "random", "bayesian", "grid")
"""``--tuner`` choices; ``hyperband`` is the default; ``grid`` tries every combination
(of ``choice`` entries) once, e.g. the learning rates of ``kerasmlic reproduce``."""

TRIAL_RECORD = "kerasmlic_trial.json"
"""Per-trial record written beside keras-tuner's ``trial.json``."""


class TrialUsageError(UsageError, keras_tuner.errors.FatalError):
    """A trial's config was rejected: stops the search (keras-tuner does not retry it)."""


class _KerasmlicTuner:
    """Mixin for a keras-tuner tuner class (see the module docstring)."""

    _log = staticmethod(print)

    def _populate_initial_space(self):
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def search(self, *fit_args, **fit_kwargs):
        """Run trials (single process or worker), or serve the oracle (chief).

        Args:
            *fit_args: Passed to ``run_trial``.
            **fit_kwargs: Passed to ``run_trial`` (``epochs``, ``verbose``).
        """
        if distributed.role() == "chief":
            if "verbose" in fit_kwargs:
                self.oracle.verbose = fit_kwargs["verbose"]
            self.save()
            distributed.serve_oracle(self.oracle, log=self._log)
            return
        super().search(*fit_args, **fit_kwargs)

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # keras-tuner imports tensorboard for every trial on the TF backend, and
        # TensorFlow 2.21 no longer installs it; it is only needed to patch a
        # TensorBoard callback, which kerasmlic's trials do not pass.
        if any(type(c).__name__ == "TensorBoard" for c in callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)

    def _write_record(self, trial, **fields):
        path = os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_RECORD)
        record = {}
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                record = {}
        record.update(fields)
        write_json_atomic(path, record)

    def on_trial_begin(self, trial):
        """Record which tuner runs the trial, and its training config."""
        super().on_trial_begin(trial)
        self._trial_start = time.time()
        config = None
        try:
            config = self.hypermodel.config_for(trial.hyperparameters.copy())
        except UsageError:
            pass  # run_trial reports it
        self._write_record(
            trial,
            trial_id=trial.trial_id,
            tuner_id=self.tuner_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            status="RUNNING",
            config=config,
        )

    def run_trial(self, trial, *fit_args, **fit_kwargs):
        """Run the trial; a rejected config stops the search with one line."""
        try:
            return super().run_trial(trial, *fit_args, **fit_kwargs)
        except (keras_tuner.errors.FailedTrialError, keras_tuner.errors.FatalError):
            raise
        except UsageError as e:
            raise TrialUsageError(f"trial {trial.trial_id}: {e}") from None

    def on_trial_end(self, trial):
        """Record the trial's status and duration, then let the oracle score it."""
        self._write_record(
            trial,
            status=str(trial.status),
            seconds=round(time.time() - getattr(self, "_trial_start", time.time()), 1),
            message=_last_line(trial.message),
        )
        super().on_trial_end(trial)


def _last_line(text):
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else None


class HyperbandTuner(_KerasmlicTuner, keras_tuner.Hyperband):
    """keras-tuner's Hyperband with kerasmlic's additions."""


class RandomTuner(_KerasmlicTuner, keras_tuner.RandomSearch):
    """keras-tuner's RandomSearch with kerasmlic's additions."""


class BayesianTuner(_KerasmlicTuner, keras_tuner.BayesianOptimization):
    """keras-tuner's BayesianOptimization with kerasmlic's additions."""


class GridTuner(_KerasmlicTuner, keras_tuner.GridSearch):
    """keras-tuner's GridSearch with kerasmlic's additions."""


def make_tuner(
    kind,
    hypermodel,
    *,
    directory,
    project_name,
    overwrite,
    epochs,
    max_trials=None,
    factor=3,
    hyperband_iterations=1,
    seed=0,
    max_consecutive_failed_trials=3,
    distribution_strategy=None,
    log=print,
):
    """Create a tuner for a kerasmlic hypermodel, objective ``val_mAP`` (max).

    Args:
        kind: One of :data:`TUNERS`.
        hypermodel: A :class:`~kerasmlic.tuning.hypermodel.KerasmlicHyperModel`.
        directory: Folder holding the project folders.
        project_name: The project folder's name.
        overwrite: Delete an existing project first (else keras-tuner reloads it).
        epochs: Epochs per trial (``hyperband``: the most any trial gets).
        max_trials: Trials to run (``random``, ``bayesian``: required; ``hyperband``:
            a cap on its schedule's trials, or None for the whole schedule;
            ``grid``: a cap, or None for the whole grid).
        factor: Hyperband's reduction factor.
        hyperband_iterations: Hyperband's passes over its brackets.
        seed: The search's seed (any int, 0 included; the same seed gives the
            same sequence of trials).
        max_consecutive_failed_trials: Stop after this many failed trials in a row.
        distribution_strategy: Optional ``tf.distribute`` strategy per trial.
        log: A ``print``-like function.

    Returns:
        The tuner.

    Raises:
        UsageError: Unknown kind or a missing ``max_trials``.
    """
    common = dict(
        hypermodel=hypermodel,
        objective=objective(),
        # keras-tuner reads seed 0 as "no seed" (a random one); shift by one.
        seed=int(seed) + 1,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=distribution_strategy,
    )
    if kind == "hyperband":
        tuner = HyperbandTuner(
            max_epochs=epochs, factor=factor, hyperband_iterations=hyperband_iterations, **common
        )
        oracle = getattr(tuner.oracle, "_oracle", tuner.oracle)
        # The base oracle stops creating trials at max_trials; Hyperband only
        # omits the argument, so setting it caps the schedule.
        oracle.max_trials = max_trials
    elif kind in ("random", "bayesian"):
        if not max_trials:
            raise UsageError(f"the {kind} tuner needs --max-trials (tune.max_trials)")
        cls = RandomTuner if kind == "random" else BayesianTuner
        tuner = cls(max_trials=max_trials, **common)
    elif kind == "grid":
        tuner = GridTuner(max_trials=max_trials, **common)
    else:
        raise UsageError(f"unknown tuner {kind!r}; choose from {', '.join(TUNERS)}")
    tuner._log = log
    return tuner
