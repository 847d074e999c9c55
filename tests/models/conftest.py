"""Network tests run single-image forwards: one intra-op thread is faster for them than two, and much faster on
shared, oversubscribed cores (two OpenMP threads spin against each other; a resnet110 forward at 32x32 measured
0.08 s on one thread against 2-9 s on two while other jobs loaded the machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_intra_op_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
