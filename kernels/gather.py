"""Gather selected pyramid entries into the dense sub-sequence (SPEC §1, step 4), reference path."""

from __future__ import annotations

import torch

from .config import LighthouseConfig
from .pyramid import pool_pyramid_ref


def gather_ref(x: torch.Tensor, index: torch.Tensor, *, config: LighthouseConfig) -> torch.Tensor:
    """Pooled entries of ``x`` at ``index``, in gathered order.

    x: ``[B, Hx, N, D]`` with ``Hx = g*G`` (queries) or ``Hx = G`` (keys, values).
    index: ``[B, G, S]`` flat pyramid indices, shared by the ``g`` heads of a group (SPEC §4).
    Returns ``[B, Hx, S, D]``.
    """
    pyramid = pool_pyramid_ref(x, levels=config.levels, pooling=config.pooling)
    group = x.shape[1] // index.shape[1]
    head_index = index.repeat_interleave(group, dim=1)
    return torch.gather(pyramid, 2, head_index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))
