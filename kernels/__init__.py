"""Lighthouse attention (arXiv 2605.06554): Triton kernels and their PyTorch references.

Imported as ``lighthouse_kernels``; it depends on torch (and triton for the GPU path) only.
``LighthouseConfig`` (``config.py``) is plain Python: importing it alone loads no torch, so a
recipe or a plan can validate Lighthouse parameters cheaply. The operator's names are loaded
from their modules on first use (importing ``lighthouse_kernels.lighthouse`` registers the
``lighthouse::`` custom ops).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import LighthouseConfig

_OPERATOR_NAMES = {
    "attend_selected": "lighthouse",
    "dense_causal_attention": "lighthouse",
    "fallback_reason": "lighthouse",
    "lighthouse_attention": "lighthouse",
    "lighthouse_attention_ref": "lighthouse",
    "select_indices": "lighthouse",
    "level_offsets": "pyramid",
}

__all__ = ["LighthouseConfig", *sorted(_OPERATOR_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _OPERATOR_NAMES:
        module = importlib.import_module(f".{_OPERATOR_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
