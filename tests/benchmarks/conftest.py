"""Fixtures of the runner tests: stopping a run in-process at a chosen optimiser step."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


class StopAt:
    """Request a stop (as SIGINT would) or crash (as SIGKILL would: nothing saved) at given global steps.

    ``stop_at.stops = [3]`` makes the next run that reaches step 3 get a stop request there; ``crashes`` raise a
    RuntimeError before the step's checkpoint logic runs, like a process killed at that moment.
    """

    def __init__(self) -> None:
        self.stops: list[int] = []
        self.crashes: list[int] = []
        self.signum = signal.SIGINT


@pytest.fixture
def stop_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[StopAt]:
    from benchmarks import interrupts
    from benchmarks.resume import ResumableRun

    control = StopAt()
    original = ResumableRun.on_train_batch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        step = trainer.global_step
        if control.crashes and control.crashes[0] == step:
            control.crashes.pop(0)
            raise RuntimeError(f"simulated kill at step {step}")
        if control.stops and control.stops[0] == step:
            control.stops.pop(0)
            interrupts.request_stop(control.signum)
        return original(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(ResumableRun, "on_train_batch_end", on_train_batch_end)
    yield control
