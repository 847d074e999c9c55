"""Turning the errors a user can cause into one clear line and a non-zero exit code."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from datamodules.errors import DatasetError
from kd_modules import UnknownMethodError
from kd_modules.errors import MethodConfigError
from models import UnknownModelError
from models.checkpoints import CheckpointError

__all__ = ["KDBenchError", "USER_ERRORS", "find_cause", "user_errors"]


class KDBenchError(ValueError):
    """A problem with what the user asked for (unknown table, bad preset, ...); the message says what is valid."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    KDBenchError,
    DatasetError,
    CheckpointError,
    UnknownModelError,
    UnknownMethodError,
    MethodConfigError,
)


def find_cause(
    error: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...] = USER_ERRORS
) -> BaseException | None:
    """The error of ``kinds`` (default: a user error) behind ``error``, following ``raise ... from`` and implicit
    chains (jsonargparse wraps)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def user_errors(program: str = "kdbench") -> Iterator[None]:
    """Print user errors as ``<program>: error: <message>`` and exit with status 2; re-raise everything else."""
    try:
        yield
    except BaseException as error:  # noqa: BLE001 - we re-raise what is not ours
        found = find_cause(error) if not isinstance(error, (SystemExit, KeyboardInterrupt)) else None
        if found is None:
            raise
        message = str(found).strip().splitlines()[0] if str(found).strip() else type(found).__name__
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(2)
