"""Training callbacks: validation metrics, NaN stop, learning-rate log, checkpoints."""

import json
import math
import os
import time

import keras
import numpy as np

from kerasmlic.data.manifest import write_json_atomic
from kerasmlic.errors import UsageError
from kerasmlic.evaluation.rundir import read_history
from kerasmlic.training.optim import current_learning_rate, ema_weights

# Figures of the full metric set also written into the epoch logs (history.csv,
# TensorBoard, the progress bar), with a ``val_`` prefix.
LOGGED_METRICS = ("mAP", "OF1_top3", "CF1", "OF1")


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class StopOnNaN(keras.callbacks.Callback):
    """Stop with :class:`TrainingDiverged` as soon as the running loss is not finite.

    Unlike ``keras.callbacks.TerminateOnNaN`` it names the epoch and step and
    raises, so the command exits non-zero with one line instead of finishing
    "successfully" with NaN weights. The backup of the last completed epoch is
    left in place.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0
        self._steps = None

    def on_train_begin(self, logs=None):
        """Remember the steps per epoch for the global step number."""
        self._steps = self.params.get("steps") if self.params else None

    def on_epoch_begin(self, epoch, logs=None):
        """Track the epoch for the message."""
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        """Raise if the loss so far is NaN or infinite."""
        if not logs or "loss" not in logs:
            return
        loss = float(keras.ops.convert_to_numpy(logs["loss"]))
        if math.isfinite(loss):
            return
        where = f"epoch {self._epoch + 1}, step {batch + 1}"
        if self._steps:
            where += f" (global step {self._epoch * self._steps + batch + 1})"
        raise TrainingDiverged(
            f"training diverged: loss is {loss} at {where}; lower train.learning_rate "
            "or check the data (the last completed epoch is backed up in the run dir)"
        )


def save_model_atomic(model, path):
    """Save a ``.keras`` file under a temporary name, then rename it into place.

    Args:
        model: A Keras model.
        path: Destination ending in ``.keras``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights_atomic(model, path):
    """Save ``.weights.h5`` under a temporary name, then rename it into place.

    Args:
        model: A Keras model.
        path: Destination ending in ``.weights.h5``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class MultiLabelEvaluation(keras.callbacks.Callback):
    """The full metric set on the validation split every N epochs; keeps the best model.

    On evaluation epochs it predicts the split, computes
    ``kerasmlic.metrics.evaluate_predictions`` and writes ``val_mAP``,
    ``val_OF1_top3``, ``val_CF1`` and ``val_OF1`` into the epoch logs (NaN on
    other epochs, so ``history.csv`` keeps one column per figure). When
    ``val_mAP`` improves it saves the model to ``best_path`` and records the
    epoch in ``best_path``'s ``.json`` sibling, which also carries the best
    value across a resumed run. With EMA the averaged weights are evaluated
    and saved. Place it before ``CSVLogger``/``TensorBoard`` in the list.

    Args:
        predict_fn: ``predict_fn(model) -> (y_true, scores, predicted)`` numpy
            arrays over the validation split.
        class_names: Names for ``per_class``.
        every: Evaluate every this many epochs (and always on the last ones).
        last_epochs: How many of the run's final epochs are each evaluated
            whatever ``every`` says (at least the last one): the convergence
            rule of ``kerasmlic reproduce`` reads the last 3.
        best_path: Where to save the best model (``.keras``), or None.
        log: A ``print``-like function for the one-line summary.
        final_epoch: The run's last epoch (1-based), always evaluated; default
            the last epoch of the current ``fit`` call.
    """

    def __init__(
        self,
        predict_fn,
        class_names,
        *,
        every=1,
        last_epochs=1,
        best_path=None,
        log=print,
        final_epoch=None,
    ):
        super().__init__()
        self.final_epoch = final_epoch
        self.last_epochs = max(1, int(last_epochs))
        self.predict_fn = predict_fn
        self.class_names = list(class_names)
        self.every = max(1, int(every))
        self.best_path = best_path
        self.log = log
        self.best = -math.inf
        self.best_epoch = None
        self.last_results = None

    @property
    def _best_json(self):
        return None if self.best_path is None else os.path.splitext(self.best_path)[0] + ".json"

    def on_train_begin(self, logs=None):
        """Pick up the best value of an earlier (interrupted) part of the run."""
        path = self._best_json
        if path and os.path.isfile(path) and os.path.isfile(self.best_path):
            with open(path) as f:
                record = json.load(f)
            self.best = float(record["val_mAP"])
            self.best_epoch = int(record["epoch"])

    def evaluate(self):
        """Predict the validation split and return the full metric dict."""
        from kerasmlic.metrics import evaluate_predictions

        y_true, scores, predicted = self.predict_fn(self.model)
        return evaluate_predictions(y_true, scores, predicted, class_names=self.class_names)

    def due(self, epoch):
        """Whether the validation pass runs at the end of ``epoch`` (0-based).

        Args:
            epoch: The epoch index, as Keras passes it to callbacks.

        Returns:
            True every ``every`` epochs and on each of the last ``last_epochs``.
        """
        last = self.final_epoch or (self.params.get("epochs") if self.params else None)
        final = last is not None and epoch + 1 > last - self.last_epochs
        return (epoch + 1) % self.every == 0 or final

    def on_epoch_end(self, epoch, logs=None):
        """Evaluate on schedule, log the figures, save the best model."""
        logs = logs if logs is not None else {}
        if not self.due(epoch):
            for key in LOGGED_METRICS:
                logs[f"val_{key}"] = float("nan")
            return
        with ema_weights(self.model):
            results = self.evaluate()
            self.last_results = results
            value = results["mAP"] if results["mAP"] is not None else float("nan")
            for key in LOGGED_METRICS:
                figure = results[key]
                logs[f"val_{key}"] = float("nan") if figure is None else float(figure)
            improved = value > self.best
            if improved:
                self.best, self.best_epoch = value, epoch + 1
                if self.best_path:
                    save_model_atomic(self.model, self.best_path)
                    write_json_atomic(self._best_json, {"epoch": epoch + 1, "val_mAP": value})
        self.log(
            f"epoch {epoch + 1}: val mAP {100 * value:.2f}  F1@3 {100 * results['OF1_top3']:.2f}"
            f"  CF1 {100 * results['CF1']:.2f}  OF1 {100 * results['OF1']:.2f}"
            + ("  (best so far, saved)" if improved and self.best_path else "")
        )


def evaluations_without_gain(history, best_epoch):
    """Count the validation passes after the best epoch in a run's history.

    Args:
        history: Columns of ``history.csv`` (``kerasmlic.evaluation.rundir.read_history``).
        best_epoch: The best epoch (1-based), or None when none improved yet.

    Returns:
        Rows after ``best_epoch`` whose ``val_mAP`` is a number (an evaluation
        ran; other epochs log NaN).
    """
    epochs = history.get("epoch", [])
    values = history.get("val_mAP", [])
    first = 0 if best_epoch is None else best_epoch  # 0-based epoch column
    return sum(
        1
        for epoch, value in zip(epochs, values, strict=False)
        if int(epoch) >= first and value is not None and math.isfinite(value)
    )


class PatienceCounter:
    """Counts validation passes without a val mAP gain; says when to stop.

    The loop-independent half of early stopping: ``train``'s Keras callback
    and the multi-worker step driver both feed it each epoch's logs.

    Args:
        patience: Passes without a gain that end the run (>= 1).
        waited: Passes without a gain already behind (a resumed run).
    """

    def __init__(self, patience, waited=0):
        self.patience = int(patience)
        self.waited = int(waited)

    def update(self, logs, improved):
        """Record one epoch; return True when the run should stop.

        Args:
            logs: The epoch's logs (``val_mAP`` is NaN on epochs not evaluated).
            improved: Whether this epoch set a new best val mAP.

        Returns:
            True after ``patience`` evaluated epochs in a row without a gain.
        """
        value = logs.get("val_mAP")
        if value is None or not math.isfinite(value):
            return False
        self.waited = 0 if improved else self.waited + 1
        return self.waited >= self.patience


class EarlyStopOnValMAP(keras.callbacks.Callback):
    """Stop training after ``patience`` validation passes without a val mAP gain.

    Nothing is restored: the last epoch's weights stay in the model and
    ``best.keras`` keeps the best epoch, as without early stopping. A resumed
    run counts the passes already in ``history.csv``. Place it right after the
    ``MultiLabelEvaluation`` it watches.

    Args:
        evaluation: The run's :class:`MultiLabelEvaluation`.
        patience: Validation passes without a gain before stopping (>= 1).
        history_path: ``history.csv`` of the run (read when training begins).
        log: A ``print``-like function.
    """

    def __init__(self, evaluation, patience, history_path=None, log=print):
        super().__init__()
        self.evaluation = evaluation
        self.counter = PatienceCounter(patience)
        self.history_path = history_path
        self.log = log
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        """Resume the count from the run's history."""
        history = read_history(self.history_path) if self.history_path else {}
        self.counter.waited = evaluations_without_gain(history, self.evaluation.best_epoch)

    def on_epoch_end(self, epoch, logs=None):
        """Count this epoch's pass; stop the fit when patience runs out."""
        logs = logs or {}
        if self.counter.update(logs, self.evaluation.best_epoch == epoch + 1):
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
            self.log(
                f"early stop after epoch {epoch + 1}: no val mAP gain in "
                f"{self.counter.patience} evaluation(s) (best {self.evaluation.best_epoch})"
            )


def _replica_components(variable):
    inner = getattr(variable, "value", variable)
    components = getattr(inner, "values", None)
    return list(components) if components is not None and len(components) > 1 else []


def average_replica_statistics(model):
    """Average per-replica copies of non-trainable float variables across replicas.

    Under ``MirroredStrategy`` each replica updates BatchNormalization's moving
    mean and variance from its own share of the batch, and Keras 3 keeps the
    copies apart (tensorflow/tensorflow#46488): predictions then depend on
    which replica sees an image, and ``save`` stores replica 0's copy only.
    Setting every copy to the mean makes evaluation and the saved model agree.

    Args:
        model: A model whose variables may be ``MirroredVariable`` s.

    Returns:
        The number of variables averaged.
    """
    count = 0
    for variable in model.non_trainable_variables:
        components = _replica_components(variable)
        if not components or not components[0].dtype.is_floating:
            continue
        values = [c.numpy() for c in components]
        if all(np.array_equal(values[0], v) for v in values[1:]):
            continue
        mean = np.mean(values, axis=0).astype(values[0].dtype)
        for component in components:
            component.assign(mean)
        count += 1
    return count


class AverageReplicaStatistics(keras.callbacks.Callback):
    """Call :func:`average_replica_statistics` at each epoch end (place it first)."""

    def on_epoch_end(self, epoch, logs=None):
        """Average the replicas' BatchNormalization statistics."""
        average_replica_statistics(self.model)


class LearningRateLogger(keras.callbacks.Callback):
    """Write the learning rate of the epoch's last step into the logs as ``lr``."""

    def on_epoch_end(self, epoch, logs=None):
        """Add ``lr``."""
        if logs is not None and self.model.optimizer is not None:
            logs["lr"] = current_learning_rate(self.model.optimizer)


class EpochTimer(keras.callbacks.Callback):
    """Write the epoch's wall time (training and evaluation) into the logs as ``epoch_seconds``.

    Place it just before ``CSVLogger`` so the validation pass is counted.
    """

    def on_epoch_begin(self, epoch, logs=None):
        """Start the clock."""
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        """Add ``epoch_seconds``."""
        if logs is not None and hasattr(self, "_start"):
            logs["epoch_seconds"] = time.perf_counter() - self._start


class LastWeights(keras.callbacks.Callback):
    """Save the weights after every epoch to one file, atomically.

    Args:
        path: A ``.weights.h5`` file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        """Save the weights."""
        save_weights_atomic(self.model, self.path)


def finite_or_none(value):
    """Return ``value`` as a float, or None when it is NaN/inf/None (for JSON).

    Args:
        value: A number or None.

    Returns:
        A float or None.
    """
    if value is None:
        return None
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None
