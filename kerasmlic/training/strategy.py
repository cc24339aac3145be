"""``--strategy default | mirrored | multiworker`` → a ``tf.distribute`` strategy."""

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
        from kerasmlic.training.multiworker import make_strategy as make_multiworker

        return make_multiworker()
    raise UsageError(f"unknown strategy {name!r}; choose from default, mirrored, multiworker")
