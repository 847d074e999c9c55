"""Errors a user causes by configuring a method for networks it cannot serve."""

from __future__ import annotations

__all__ = ["MethodConfigError"]


class MethodConfigError(ValueError):
    """A method's settings do not fit the chosen networks or data (the message names the value and what is valid).

    Registered in :data:`benchmarks.errors.USER_ERRORS`, so the CLI prints it as one line.
    """
