"""Kernel-test fixtures. ``TRITON_INTERPRET`` is set in the root conftest, before any import
of ``lighthouse_kernels``."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel outputs start as NaN, so an element a kernel never writes fails the comparison."""
    from lighthouse_kernels import _triton_utils

    monkeypatch.setattr(_triton_utils, "POISON_OUTPUTS", True)
