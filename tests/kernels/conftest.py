"""Kernel tests run the Triton kernels: on the GPU when there is one, else on the CPU through
Triton's interpreter (``TRITON_INTERPRET=1``).

Triton picks compiled or interpreted when a kernel is decorated, so the variable is set here,
at import time, before the test modules import ``lighthouse_kernels``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel outputs start as NaN, so an element a kernel never writes fails the comparison."""
    from lighthouse_kernels import _triton_utils

    monkeypatch.setattr(_triton_utils, "POISON_OUTPUTS", True)
