"""Lighthouse attention (arXiv 2605.06554): Triton kernels and their PyTorch references.

Imported as ``lighthouse_kernels``; it depends on torch (and triton for the GPU path) only.
"""

from .config import LighthouseConfig
from .lighthouse import (
    attend_selected,
    dense_causal_attention,
    fallback_reason,
    lighthouse_attention,
    lighthouse_attention_ref,
    select_indices,
)
from .pyramid import level_offsets

__all__ = [
    "LighthouseConfig",
    "attend_selected",
    "dense_causal_attention",
    "fallback_reason",
    "level_offsets",
    "lighthouse_attention",
    "lighthouse_attention_ref",
    "select_indices",
]
