"""The model registry: registry names (docs/design.md) → model classes, and the factory.

Model modules are imported explicitly (timm-style) the first time the registry
is consulted, so ``import kerasmlic`` stays light: a module defining a head
and its ``@register_model`` classes is one line of :data:`_MODEL_MODULES`.

Example:
    >>> from kerasmlic.models.registry import build_model
    >>> model = build_model("bce", num_classes=80, image_size=64, encoder="tiny")
"""

import importlib

from kerasmlic.errors import UsageError

_MODEL_MODULES = (
    # The streaming metrics are registered Keras objects too: a compiled model's
    # .keras file refers to them, so loading one needs them imported.
    "kerasmlic.metrics.streaming",
    "kerasmlic.models.baselines",
    "kerasmlic.models.embedding",
    "kerasmlic.models.label_query",
    "kerasmlic.models.recurrent",
)

_REGISTRY = {}
_loaded = False


def register_model(name):
    """Class decorator: register a model class under ``name`` (and for Keras serialisation).

    Args:
        name: The registry name (docs/design.md → Models).

    Returns:
        The decorator.
    """

    def decorator(cls):
        import keras

        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return keras.saving.register_keras_serializable(package="kerasmlic")(cls)

    return decorator


def _load_all():
    global _loaded
    if not _loaded:
        for module in _MODEL_MODULES:
            importlib.import_module(module)
        _loaded = True


def model_names():
    """Return the sorted registry names of all models."""
    _load_all()
    return sorted(_REGISTRY)


def get_model_class(name):
    """Return the class registered under ``name``.

    Raises:
        UsageError: Unknown name; the message lists the valid ones.
    """
    _load_all()
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_options(name):
    """Return the options a model accepts, with defaults.

    The encoder options (``encoder``, ``encoder_weights``, ``freeze_encoder``)
    and the keyword-only arguments of the model's head and loss
    (``MultiLabelModel.option_defaults``).

    Args:
        name: A registry name.

    Returns:
        A dict option → default value.
    """
    return get_model_class(name).option_defaults()


def build_model(name, *, num_classes, image_size, **options):
    """Build any registered model from its name and options.

    Args:
        name: Registry name, e.g. ``"seq2seq_attention"``.
        num_classes: Number of classes C.
        image_size: Square input size in pixels.
        **options: Model options (``encoder``, ``cell``, ``decoding``, ...).

    Returns:
        An unbuilt-optimizer ``keras.Model`` (compile it before ``fit``).

    Raises:
        UsageError: Unknown model name or option; the message lists the valid ones.
    """
    cls = get_model_class(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"valid options: {', '.join(sorted(valid))}"
        )
    return cls(num_classes=num_classes, image_size=image_size, **options)
