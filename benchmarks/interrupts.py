"""Stopping a launch without losing anything: signals become a request that runs honour at safe points.

A signal handler only records the request; nothing is torn down inside it.  The training callback
(:class:`benchmarks.resume.ResumableRun`) looks at the request after each optimiser step, saves a resumable
``last.ckpt`` there and raises :class:`RunInterrupted`; launchers look at it between runs, stop starting new
ones and forward the signal to their lanes and child processes.  The process then exits with ``128 + signal``
(130 for SIGINT, 143 for SIGTERM), as a shell does for a process killed by that signal.

Two kinds of signals:

* **stop** signals (SIGINT and SIGTERM by default; submitit's pre-emption signal inside a submitit job): save a
  checkpoint at the next safe point, stop the run, stop the launch.
* **checkpoint** signals (SIGTERM inside a submitit job, where submitit bypasses it because SLURM sends it ahead of
  the pre-emption signal): save a checkpoint at the next safe point and go on training.

A second stop signal while the checkpoint is being written is ignored (the first one is already being honoured);
SIGKILL cannot be caught, and loses at most the work since the last checkpoint (claims and atomic writes keep the
store consistent).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RunInterrupted",
    "ClaimLost",
    "StopRequest",
    "installed",
    "requested",
    "checkpoint_requested",
    "clear_checkpoint_request",
    "request_stop",
    "reassert",
    "exit_status",
    "signal_name",
]


class RunInterrupted(Exception):
    """A run stopped on request after saving a resumable checkpoint (never a failure)."""

    def __init__(self, signum: int, checkpoint: str | None = None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        where = f"; resumable from {checkpoint}" if checkpoint else ""
        super().__init__(f"interrupted by {signal_name(signum)}{where}")


class ClaimLost(Exception):
    """Another runner took this run over (our heartbeat looked stale to it): stop without writing anything."""


@dataclass
class StopRequest:
    """What the installed handlers recorded (process-wide)."""

    stop: int | None = None  # the first stop signal received
    checkpoint: bool = False  # a checkpoint signal is waiting to be honoured
    stop_signals: tuple[int, ...] = ()
    checkpoint_signals: tuple[int, ...] = ()


_STATE = StopRequest()
_LOCK = threading.Lock()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, frame: Any) -> None:
    if signum in _STATE.checkpoint_signals:
        _STATE.checkpoint = True
        return
    if _STATE.stop is None:
        _STATE.stop = signum


def requested() -> int | None:
    """The stop signal received since :func:`installed` began, else None."""
    return _STATE.stop


def checkpoint_requested() -> bool:
    return _STATE.checkpoint


def clear_checkpoint_request() -> None:
    _STATE.checkpoint = False


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Record a stop as if ``signum`` had arrived (tests, and a parent telling an in-process run to stop)."""
    _handler(signum, None)


def exit_status(signum: int) -> int:
    return 128 + int(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def reassert() -> None:
    """Install our handlers again over whatever replaced them (Lightning registers its own SIGTERM handler when a
    fit starts, which stops mid-validation without a checkpoint).  No-op outside :func:`installed` or off the main
    thread."""
    if not _in_main_thread():
        return
    for signum in (*_STATE.stop_signals, *_STATE.checkpoint_signals):
        signal.signal(signum, _handler)


@contextlib.contextmanager
def installed(
    stop: Iterable[int] = (signal.SIGINT, signal.SIGTERM), checkpoint: Iterable[int] = ()
) -> Iterator[StopRequest]:
    """Record ``stop`` / ``checkpoint`` signals for the duration (main thread only; elsewhere a no-op).

    Nested use keeps the outer request (a launcher around in-process runs): the inner block adds its signals and
    restores the outer handlers when it ends.  The outermost block clears the
    request when it ends, so a later launch in the same process (tests) starts clean.
    """
    if not _in_main_thread():
        yield _STATE
        return
    stop, checkpoint = tuple(stop), tuple(checkpoint)
    with _LOCK:
        outermost = not _STATE.stop_signals and not _STATE.checkpoint_signals
        saved = (_STATE.stop_signals, _STATE.checkpoint_signals)
        previous = {s: signal.getsignal(s) for s in set(stop) | set(checkpoint)}
        _STATE.stop_signals = tuple(dict.fromkeys((*_STATE.stop_signals, *stop)))
        _STATE.checkpoint_signals = tuple(dict.fromkeys((*_STATE.checkpoint_signals, *checkpoint)))
        # a signal can be one kind only: the innermost block decides
        _STATE.stop_signals = tuple(s for s in _STATE.stop_signals if s not in checkpoint or s in stop)
        _STATE.checkpoint_signals = tuple(s for s in _STATE.checkpoint_signals if s not in stop)
        for signum in previous:
            signal.signal(signum, _handler)
        # a child started by a launcher inherits these signals blocked (so that it cannot die of them while it
        # imports torch): from here on they are ours
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(previous))
    try:
        yield _STATE
    finally:
        with _LOCK:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            _STATE.stop_signals, _STATE.checkpoint_signals = saved
            if outermost:
                _STATE.stop = None
                _STATE.checkpoint = False
