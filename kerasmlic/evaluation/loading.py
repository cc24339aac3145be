"""Load a saved kerasmlic model: what evaluation, export, prediction and training share."""


def load_model(path):
    """Load a saved kerasmlic model (custom objects registered by the registry import).

    A model saved by an earlier kerasmlic (format version 1: it took images the
    pipeline had normalised) is rebuilt with today's architecture, whose
    normalisation layer has no weights, so it scores 0-255 pixels as it scored
    their normalised form; ``model.normalization`` then tells the pipeline to
    give it pixels (see ``kerasmlic.models.base``).

    The model is loaded without its compile state, so the training loss it
    was compiled with (a class-weighted one, say) need not be importable here.

    Args:
        path: A ``.keras`` file.

    Returns:
        The model, not compiled.

    Raises:
        UsageError: A ``format_version`` this kerasmlic cannot read (a newer one).
    """
    import keras

    from kerasmlic.models.registry import model_names

    model_names()  # imports every model module, registering the classes
    return keras.saving.load_model(path, compile=False)
