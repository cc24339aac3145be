"""Argument types shared by the ``kerasmlic`` subcommands (argparse ``type=``)."""

import argparse


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text):
    """Parse a positive integer, or fail with argparse's one-line usage error."""
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text):
    """Parse an integer ≥ 0, or fail with argparse's one-line usage error."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def add_set_argument(parser, help_text):
    """Add the repeatable ``--set KEY=VALUE`` config override (``args.overrides``).

    Args:
        parser: The verb's ``argparse`` parser.
        help_text: What the overrides apply to, for ``--help``.
    """
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )
