"""Kernel-test fixtures. ``TRITON_INTERPRET`` is set in the root conftest, before any import
of ``lighthouse_kernels``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The shared case tables (kernel_cases.py) import by name under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel outputs start as NaN, so an element a kernel never writes fails the comparison."""
    from lighthouse_kernels import _triton_utils

    monkeypatch.setattr(_triton_utils, "POISON_OUTPUTS", True)
