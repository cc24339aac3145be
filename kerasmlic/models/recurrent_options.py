"""Option vocabulary and validation of the recurrent decoders, and their cells.

:func:`check_options` is what :class:`~kerasmlic.models.recurrent.RecurrentModel`
runs on its constructor arguments, so a bad option fails with one clear
:class:`~kerasmlic.errors.UsageError` before any layer is built.
"""

from keras import layers

from kerasmlic.data.sequences import LABEL_ORDERS
from kerasmlic.errors import UsageError
from kerasmlic.models import decoding

CELLS = ("gru", "lstm")
DECODINGS = ("greedy", "beam")
MODEL_LABEL_ORDERS = (*LABEL_ORDERS, "pla")
PLA = "pla"
PLA_PIPELINE_ORDER = "dictionary"
"""Order the pipeline builds for ``pla`` models (any fixed order works: the model realigns)."""


def cell_class(cell):
    """Return the Keras cell class of a ``cell`` option.

    Args:
        cell: ``"gru"`` or ``"lstm"``.

    Returns:
        ``keras.layers.GRUCell`` or ``keras.layers.LSTMCell``.
    """
    return layers.GRUCell if cell == "gru" else layers.LSTMCell


def num_states(cell):
    """Return how many state tensors a cell carries (GRU: ``h``; LSTM: ``h`` and ``c``).

    Args:
        cell: ``"gru"`` or ``"lstm"``.

    Returns:
        1 or 2.
    """
    return 1 if cell == "gru" else 2


def check_options(num_classes, options):
    """Raise UsageError for an invalid recurrent-model option value.

    Args:
        num_classes: Number of classes C (bounds ``beam_width``).
        options: Dict of the model's options by name (``cell``,
            ``embedding_dim``, ``hidden_dim``, ``dropout``, ``max_labels``,
            ``label_order``, ``decoding``, ``beam_width``, ``max_regions``,
            ``length_penalty``, ``aux_loss_weight``, ``class_score``).

    Raises:
        UsageError: The first invalid value, with the valid range or choices.
    """
    for name in ("embedding_dim", "hidden_dim", "max_labels", "beam_width", "max_regions"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"option {name} must be a positive integer, got {value!r}")
    for name, choices in (
        ("class_score", decoding.CLASS_SCORES),
        ("cell", CELLS),
        ("decoding", DECODINGS),
        ("label_order", MODEL_LABEL_ORDERS),
    ):
        if options[name] not in choices:
            raise UsageError(
                f"option {name} must be one of {', '.join(choices)}, got {options[name]!r}"
            )
    dropout = options["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UsageError(f"option dropout must be in [0, 1), got {dropout!r}")
    for name in ("length_penalty", "aux_loss_weight"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise UsageError(f"option {name} must be a number >= 0, got {value!r}")
    if options["beam_width"] > num_classes + 1:
        raise UsageError(
            f"option beam_width must be at most num_classes + 1 = {num_classes + 1}, "
            f"got {options['beam_width']}"
        )
