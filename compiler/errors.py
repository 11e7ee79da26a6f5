"""Errors raised by the compiler; every message is one line fit for a command-line tool."""

from __future__ import annotations


class CompileError(Exception):
    """Base of every error the compiler raises for a user-visible problem.

    The message is a single line that says what was wrong and, where possible, what to do.
    """

    def __init__(self, message: str):
        # Keep messages on one line: the CLI prints them as-is, without a traceback.
        super().__init__(" ".join(str(message).split()))


class FrontendError(CompileError):
    """The model file is missing, unreadable, untrusted or not a model."""


class UnsupportedOpError(CompileError):
    """The model uses an operator the compiler cannot lower (names the op, node and source)."""


class SpecError(CompileError):
    """The IR breaks a rule of the spec check (names the node and the rule)."""
