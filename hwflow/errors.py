"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""

from hwflow.boards import BoardError
from hwflow.compiler.errors import CompileError
from hwflow.mapping.errors import MappingError


class HwflowError(Exception):
    """A flow-level problem (build folder, inputs) with a one-line message."""


USER_ERRORS = (HwflowError, CompileError, MappingError, BoardError)
