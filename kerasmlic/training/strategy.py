"""``--strategy default | mirrored | multiworker`` → a ``tf.distribute`` strategy."""

import json
import os

from kerasmlic.errors import UsageError


def make_strategy(name):
    """Return the distribution strategy of a config's ``train.strategy``.

    ``mirrored`` replicates over every GPU, or over every logical CPU device
    when there is no GPU (so it can be tested on a CPU split into virtual
    devices with ``tf.config.set_logical_device_configuration``).

    Args:
        name: ``"default"``, ``"mirrored"`` or ``"multiworker"``.

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        UsageError: An unknown name, or a bad ``TF_CONFIG`` for ``multiworker``.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        # Keras 3 model.fit fails under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585): train() hands it to the step driver in
        # kerasmlic.training.multiworker.
        return multiworker_strategy()
    raise UsageError(f"unknown strategy {name!r}; choose from default, mirrored, multiworker")


def multiworker_strategy():
    """Return a ``MultiWorkerMirroredStrategy`` for the cluster in ``TF_CONFIG``.

    It must be created before TensorFlow runs any op in the process (it
    configures collective ops at context start-up).

    Returns:
        The strategy (a one-worker cluster without ``TF_CONFIG``).

    Raises:
        UsageError: ``TF_CONFIG`` is not valid JSON or names no task.
    """
    import tensorflow as tf

    text = os.environ.get("TF_CONFIG")
    if text:
        try:
            tf_config = json.loads(text)
        except ValueError:
            raise UsageError("TF_CONFIG is not valid JSON") from None
        if "cluster" in tf_config and "task" not in tf_config:
            raise UsageError('TF_CONFIG has a cluster but no "task": {"type", "index"}')
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
