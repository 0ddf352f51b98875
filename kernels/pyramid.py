"""Mean-pooled pyramid and parameter-free norm scores (SPEC §1, steps 1-2), reference path.

The pyramid is addressed as one flat axis, levels concatenated finest first: level ``l``
starts at ``level_offsets(...)[l]`` and holds ``N / p^l`` entries, entry ``i`` summarising
base positions ``[i*p^l, (i+1)*p^l - 1]``.
"""

from __future__ import annotations

import torch


def level_offsets(n: int, levels: int, pooling: int) -> list[int]:
    """Start of each level on the flat pyramid axis, plus the total length as a last element."""
    offsets = [0]
    for level in range(levels):
        offsets.append(offsets[-1] + n // pooling**level)
    return offsets


def pool_pyramid_ref(x: torch.Tensor, *, levels: int, pooling: int) -> torch.Tensor:
    """Mean-pool ``x [B, H, N, D]`` into the flat pyramid ``[B, H, sum_l N/p^l, D]``.

    Pooling accumulates in at least float32 and returns ``x.dtype``.
    """
    batch, heads, n, dim = x.shape
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    pooled = [x32.view(batch, heads, n // pooling**level, pooling**level, dim).mean(dim=3)
              for level in range(levels)]
    return torch.cat(pooled, dim=2).to(x.dtype)


def scores_ref(query: torch.Tensor, key: torch.Tensor, *, levels: int,
               pooling: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Selection scores per KV head and level, in float32.

    query: ``[B, H, N, D]``; key: ``[B, G, N, D]`` with ``H = g*G`` (SPEC §4).
    Returns ``(score_qk, score_kq)``, each a list over levels of ``[B, G, N/p^l]``:
    level 0 is ``||Q||`` (the max over the group's ``g`` query heads) and ``||K||``; coarser
    levels take the max of the level-0 scores over their window (not the norm of a pooled vector).
    """
    batch, heads, n, _ = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    query_norm = query.float().norm(dim=-1).view(batch, kv_heads, group, n).amax(dim=2)
    key_norm = key.float().norm(dim=-1)
    score_qk, score_kq = [query_norm], [key_norm]
    for _ in range(1, levels):
        score_qk.append(score_qk[-1].view(batch, kv_heads, -1, pooling).amax(dim=-1))
        score_kq.append(score_kq[-1].view(batch, kv_heads, -1, pooling).amax(dim=-1))
    return score_qk, score_kq
