"""Errors of the mapping layer (one-line messages fit for the CLI)."""


class MappingError(Exception):
    """The model cannot be mapped onto the board's accelerator (the message says what to do)."""
