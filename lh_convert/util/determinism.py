"""``torch.use_deterministic_algorithms`` for the duration of a block (training, benchmarks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` for the duration, then the old setting.

    Enabled, SDPA's backward runs its deterministic path (Lighthouse's own kernels always
    are); cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when its first handle is made.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
