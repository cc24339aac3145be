"""Label-sequence vocabulary shared by the pipeline and the recurrent decoders.

A label sequence is ``[START, t1, ..., tk, END, PAD, ...]`` where class index
``c`` is token ``c + NUM_SPECIAL``. Its length is ``max_labels + 2``.
"""

PAD = 0
START = 1
END = 2
NUM_SPECIAL = 3

DEFAULT_MAX_LABELS = 10
"""Labels per sequence when a config gives none; longer label lists are truncated."""

LABEL_ORDERS = ("frequent_first", "rare_first", "dictionary", "large_first", "random")
"""Orders the pipeline can build; ``pla`` (orderless) is a model option on top."""


def class_to_token(class_index):
    """Return the token id of a contiguous class index."""
    return class_index + NUM_SPECIAL


def token_to_class(token):
    """Return the class index of a label token (undefined for special tokens)."""
    return token - NUM_SPECIAL
