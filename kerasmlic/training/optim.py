"""The optimiser: AdamW with linear warm-up, cosine decay, global-norm clipping, optional EMA."""

import contextlib

import keras

# Biases and normalisation scales/offsets are not decayed (standard AdamW practice).
_NO_DECAY = ["bias", "gamma", "beta"]


def make_schedule(learning_rate, total_steps, warmup_steps=0, min_ratio=0.0):
    """Return a warm-up + cosine-decay learning-rate schedule.

    The rate rises linearly from 0 to ``learning_rate`` over ``warmup_steps``,
    then follows a half cosine down to ``min_ratio * learning_rate`` at
    ``total_steps`` and stays there.

    Args:
        learning_rate: Peak learning rate.
        total_steps: Steps of the whole schedule (warm-up included).
        warmup_steps: Steps of linear warm-up.
        min_ratio: Final rate as a fraction of the peak.

    Returns:
        A ``keras.optimizers.schedules.CosineDecay``.
    """
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    decay_steps = max(1, total_steps - warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=decay_steps,
            alpha=min_ratio,
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate, decay_steps=decay_steps, alpha=min_ratio
    )


def make_optimizer(train_config, steps_per_epoch, epochs):
    """Build AdamW from a config's ``train`` section.

    Args:
        train_config: The ``train`` section (``learning_rate``, ``weight_decay``,
            ``warmup_epochs`` or ``warmup_fraction`` (of all steps; it wins when
            set), ``min_learning_rate_ratio``, ``global_clipnorm``, ``use_ema``,
            ``ema_momentum``).
        steps_per_epoch: Optimiser steps per epoch.
        epochs: Epochs the schedule spans.

    Returns:
        A ``keras.optimizers.AdamW`` (not yet built).
    """
    total_steps = steps_per_epoch * epochs
    fraction = train_config.get("warmup_fraction")
    warmup_steps = (
        round(fraction * total_steps)
        if fraction is not None
        else round(train_config["warmup_epochs"] * steps_per_epoch)
    )
    schedule = make_schedule(
        train_config["learning_rate"],
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        min_ratio=train_config["min_learning_rate_ratio"],
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=train_config["weight_decay"],
        global_clipnorm=train_config["global_clipnorm"] or None,
        use_ema=train_config["use_ema"],
        ema_momentum=train_config["ema_momentum"],
    )
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    return optimizer


def base_optimizer(optimizer):
    """Return the optimiser under a mixed-precision ``LossScaleOptimizer`` wrapper, if any.

    Args:
        optimizer: A Keras optimiser.

    Returns:
        The wrapped optimiser, or ``optimizer`` itself.
    """
    return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer):
    """Return the learning rate the next step uses, as a float.

    Args:
        optimizer: A Keras optimiser (possibly loss-scale wrapped).

    Returns:
        A float.
    """
    return float(keras.ops.convert_to_numpy(base_optimizer(optimizer).learning_rate))


@contextlib.contextmanager
def ema_weights(model):
    """Temporarily swap a model's trainable weights for the optimiser's EMA, if it keeps one.

    Args:
        model: A model, compiled or not.

    Yields:
        True when EMA weights are in place, False when the model has no
        optimiser or its optimiser keeps none.
    """
    optimizer = getattr(model, "optimizer", None)
    optimizer = base_optimizer(optimizer) if optimizer is not None else None
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages:
        yield False
        return
    variables = model.trainable_variables
    if len(variables) != len(averages):
        yield False
        return
    saved = [v.numpy() for v in variables]
    for var, avg in zip(variables, averages, strict=True):
        if avg is not None:
            var.assign(avg)
    try:
        yield True
    finally:
        for var, value in zip(variables, saved, strict=True):
            var.assign(value)
