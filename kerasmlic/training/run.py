"""``train(config) -> run_dir``: what ``kerasmlic train`` and a notebook both call.

It resolves the config and hands it to the loop its ``train.strategy``
needs: ``model.fit`` (:func:`kerasmlic.training.trainer.train_fit`) for
``default`` and ``mirrored``, the step driver over ``strategy.run``
(:func:`kerasmlic.training.multiworker.train_multiworker`) for
``multiworker``, since Keras 3's ``model.fit`` fails under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). Both loops share
their checks and objects through :mod:`kerasmlic.training.builder` and
neither imports the other.
"""

from kerasmlic.training import builder
from kerasmlic.training.multiworker import train_multiworker
from kerasmlic.training.trainer import train_fit


def train(config, *, log=print):
    """Train a model from a config; return the run directory.

    Running the same config again after an interruption (even SIGKILL)
    continues from the last completed epoch.

    Args:
        config: A config dict (merged over ``config.DEFAULTS``), a YAML path,
            or None for the defaults (``data.dir`` must then come from somewhere).
        log: A ``print``-like function for progress lines.

    Returns:
        The run directory (str); on a multi-worker run's non-chief workers,
        the temporary folder they wrote to (already deleted).

    Raises:
        UsageError: Bad config, missing data or split, a run dir that cannot be
            resumed, an image size the backbone rejects, a diverging loss.
    """
    config = builder.resolve(config)
    if config["train"]["strategy"] == "multiworker":
        return train_multiworker(config, log=log)
    return train_fit(config, log=log)
