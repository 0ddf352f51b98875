"""Scatter-back of gathered outputs to base positions (SPEC §1, step 6), reference path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LighthouseConfig
from .pyramid import level_offsets


def scatter_back_ref(y: torch.Tensor, index: torch.Tensor, *, n: int,
                     config: LighthouseConfig) -> torch.Tensor:
    """Add each gathered output to the base positions its entry covers, shifted causally.

    y: ``[B, H, S, D]`` attention output on the gathered sequence.
    index: ``[B, G, S]`` flat pyramid indices (``H = g*G``).
    Returns ``[B, H, N, D]``: entry ``(l, i)`` adds to positions
    ``[i*p^l + p^l - 1, i*p^l + 2*p^l - 2]``; positions past ``N - 1`` are dropped.
    """
    batch, heads, _, dim = y.shape
    offsets = level_offsets(n, config.levels, config.pooling)
    head_index = index.repeat_interleave(heads // index.shape[1], dim=1)
    pyramid = y.new_zeros(batch, heads, offsets[-1], dim)
    pyramid = pyramid.scatter_add(2, head_index.unsqueeze(-1).expand(-1, -1, -1, dim), y)
    out = torch.zeros_like(y[:, :, :1]).expand(batch, heads, n, dim)
    for level in range(config.levels):
        span = config.pooling**level
        per_level = pyramid[:, :, offsets[level]:offsets[level + 1]]
        spread = per_level.repeat_interleave(span, dim=2)
        out = out + F.pad(spread, (0, 0, span - 1, 0))[:, :, :n]
    return out
