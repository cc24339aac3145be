"""Precise BatchNorm: population statistics for the weights a model is evaluated with.

A BatchNormalization layer is evaluated and served with moving statistics, an
exponential average over the training batches. Those batches were seen by
earlier weights, and at the built-in CNNs' momentum of 0.9 the average rests on
the last ~10 of them, so the evaluated score moves with whichever batches came
last (``benchmarks/bn_noise.py`` measures it). Precise BatchNorm (Wu & Johnson,
"Rethinking 'Batch' in BatchNorm", 2021; pycls' ``PRECISE_BN``) re-estimates
them with the weights fixed: ``N`` training batches go through the encoder in
training mode and each layer's moving mean and variance become the plain
average of the per-batch means and variances, the statistics training itself
normalised with.

``train.precise_bn_batches: N`` (0 = off) runs it before every validation pass
(every epoch unless ``evaluation.every`` says otherwise), so ``val_mAP``,
``best.keras`` and the final model carry the re-estimated statistics. The
batches are the training stream's (augmented as in training): its first ``N``,
drawn once and kept, so from one pass to the next only the weights change. It
costs ``N`` forward passes of the encoder per pass. An epoch that is not
validated skips it: training normalises with batch statistics and never reads
the moving ones, and the next validated epoch re-estimates them for the
weights it evaluates.

With ``train.use_ema`` the weights evaluated, saved and exported are the
optimiser's moving average, not the last step's, so the statistics are
re-estimated for the averaged weights: statistics of other weights would
normalise the averaged layers' activations with the wrong means.
"""

import keras
import numpy as np
import tensorflow as tf

from kerasmlic.errors import UsageError
from kerasmlic.models.encoders import batchnorm_layers, get_encoder
from kerasmlic.training.optim import ema_weights


def trainable_batchnorm_layers(model):
    """Return the encoder's BatchNormalization layers whose statistics training moves.

    Frozen layers (``trainable=False``) run in inference mode in Keras 3 and
    keep their statistics, so precise BatchNorm leaves them alone too.

    Args:
        model: A kerasmlic model.

    Returns:
        A list of ``keras.layers.BatchNormalization`` layers.
    """
    return [layer for layer in batchnorm_layers(get_encoder(model)) if layer.trainable]


def training_forward(encoder):
    """Return the encoder's training-mode forward pass as a ``tf.function``.

    Args:
        encoder: The encoder sub-model.

    Returns:
        A ``tf.function`` of the image batch; it keeps the BatchNorm momenta
        and trainable flags of its first call (Python values, read when traced).
    """
    return tf.function(lambda images: encoder(images, training=True), autograph=False)


def recompute_batchnorm_statistics(model, batches, forward=None):
    """Set the encoder's BatchNorm statistics to their average over ``batches``.

    Args:
        model: A kerasmlic model (its ``encoder`` sub-model holds the layers).
        batches: An iterable of image batches as the model is trained on
            (uint8 or float pixels), or of ``(images, targets)`` pairs, such
            as ``dataset.take(N)``.
        forward: A :func:`training_forward` of the model's encoder from an
            earlier call with the same trainable layers, to skip re-tracing;
            None traces a new one.

    Returns:
        The number of batches averaged (0 when there was nothing to do).

    Example:
        >>> recompute_batchnorm_statistics(model, setup.train_ds.take(50))
        50
    """
    layers = trainable_batchnorm_layers(model)
    if not layers:
        return 0
    encoder = get_encoder(model)
    saved = [layer.momentum for layer in layers]
    # Momentum 0 makes each layer's moving statistics the batch's own; the traced
    # function reads it (a Python float), so it is 0 whenever it is traced.
    for layer in layers:
        layer.momentum = 0.0
    try:
        forward = forward or training_forward(encoder)
        means = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
        variances = [np.zeros(layer.moving_variance.shape, np.float64) for layer in layers]
        count = 0
        for batch in batches:
            forward(batch[0] if isinstance(batch, tuple | list) else batch)
            for i, layer in enumerate(layers):
                means[i] += keras.ops.convert_to_numpy(layer.moving_mean)
                variances[i] += keras.ops.convert_to_numpy(layer.moving_variance)
            count += 1
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    if count:
        for layer, mean, variance in zip(layers, means, variances, strict=True):
            layer.moving_mean.assign((mean / count).astype(layer.moving_mean.dtype))
            layer.moving_variance.assign((variance / count).astype(layer.moving_variance.dtype))
    return count


class PreciseBatchNorm(keras.callbacks.Callback):
    """Re-estimate the BatchNorm statistics before each validation pass.

    The first ``batches`` batches of the training stream are drawn once and
    kept (in host memory: ``batches`` × the batch's uint8 images), so every
    re-estimate averages the same images and the statistics change only with
    the weights; a fresh draw each epoch would add its own noise. When the
    optimiser keeps an EMA of the weights, the statistics are those of the
    EMA weights (the ones validation, ``best.keras`` and the final model use);
    training itself normalises with batch statistics and never reads them.

    Args:
        dataset: The training stream (``(images, targets)`` batches).
        batches: Batches to average per re-estimate.
        due: ``due(epoch) -> bool``, whether the epoch ends with a validation
            pass (:meth:`~kerasmlic.training.callbacks.MultiLabelEvaluation.due`);
            None: every epoch.
    """

    def __init__(self, dataset, batches, due=None):
        super().__init__()
        self.dataset = dataset
        self.batches = batches
        self.due = due
        self._images = None
        self._forward = (None, None)  # (trainable layers, their traced forward pass)

    def on_epoch_end(self, epoch, logs=None):
        """Recompute the statistics for the epoch's final weights, if it is validated."""
        if self.due is not None and not self.due(epoch):
            return
        if self._images is None:
            self._images = [images for images, _ in self.dataset.take(self.batches)]
        # One trace per set of trainable layers (a fine-tuning phase unfreezes more).
        key = tuple(id(layer) for layer in trainable_batchnorm_layers(self.model))
        if self._forward[0] != key:
            self._forward = (key, training_forward(get_encoder(self.model)))
        with ema_weights(self.model):
            recompute_batchnorm_statistics(self.model, self._images, self._forward[1])


def precise_batchnorm_callback(config, train_ds, evaluation=None):
    """Return the :class:`PreciseBatchNorm` callback of a config, or None when it is off.

    Args:
        config: A resolved config (``train.precise_bn_batches``).
        train_ds: The training stream.
        evaluation: The run's
            :class:`~kerasmlic.training.callbacks.MultiLabelEvaluation`, whose
            schedule it follows; None: every epoch.

    Returns:
        A callback or None.

    Raises:
        UsageError: It is on with a distribution strategy (each replica would
            hold its own statistics).
    """
    batches = config["train"]["precise_bn_batches"]
    if not batches:
        return None
    check_precise_batchnorm(config)
    return PreciseBatchNorm(train_ds, batches, None if evaluation is None else evaluation.due)


def check_precise_batchnorm(config):
    """Refuse ``train.precise_bn_batches`` with a distribution strategy, in one line.

    Args:
        config: A resolved config.

    Raises:
        UsageError: ``train.precise_bn_batches`` > 0 and ``train.strategy`` is
            not ``default``.
    """
    strategy = config["train"]["strategy"]
    if config["train"]["precise_bn_batches"] and strategy != "default":
        raise UsageError(
            f"train.precise_bn_batches works with the default strategy only, not {strategy!r} "
            "(each replica would re-estimate its own statistics); set it to 0"
        )
