"""Errors that the CLI turns into one clear line and an exit code."""


class UsageError(Exception):
    """Bad usage or bad input: the CLI prints the message and exits 2."""
