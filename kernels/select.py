"""The tiled top-k cascade of SPEC §2 and the gathered order of SPEC §3, reference path."""

from __future__ import annotations

import torch

from .config import LighthouseConfig
from .pyramid import level_offsets


def _top_half(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` largest scores along the last axis; ties to the lower position."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]


def select_ref(score_qk: list[torch.Tensor], score_kq: list[torch.Tensor], *,
               config: LighthouseConfig) -> torch.Tensor:
    """Select pyramid entries and return them in gathered order.

    score_qk, score_kq: per level, ``[B, G, N/p^l]`` float32 (see ``scores_ref``).
    Returns ``[B, G, S]`` int64 indices on the flat pyramid axis (levels finest first), sorted
    by the exact integer keys of SPEC §3. Candidates are always kept in ascending index order,
    so a stable descending sort breaks ties toward the lower index (project rule).
    """
    levels, pooling, half = config.levels, config.pooling, config.tile // 2
    batch, kv_heads, n = score_qk[0].shape
    device = score_qk[0].device
    offsets = level_offsets(n, levels, pooling)
    coarse = n // config.coarsest_window

    # [B, G, T, C]: each tile's contiguous run of coarsest entries.
    candidates = torch.arange(coarse, device=device).view(config.num_tiles, -1)
    candidates = candidates.expand(batch, kv_heads, -1, -1)
    flat_index, sort_key = [], []
    for level in range(levels - 1, -1, -1):
        span = pooling**level
        start = candidates * span
        if level == 0:
            is_parent = torch.zeros_like(candidates, dtype=torch.bool)
        else:
            tiled_qk = score_qk[level].unsqueeze(2).expand(-1, -1, config.num_tiles, -1)
            tiled_kq = score_kq[level].unsqueeze(2).expand(-1, -1, config.num_tiles, -1)
            qk = torch.gather(tiled_qk, 3, candidates)
            kq = torch.gather(tiled_kq, 3, candidates)
            if config.force_first_window:
                qk = torch.where(candidates == 0, torch.inf, qk)
            chosen_qk = _top_half(qk, half)
            is_parent = torch.zeros_like(candidates, dtype=torch.bool).scatter_(3, chosen_qk, True)
            chosen_kq = _top_half(kq.masked_fill(is_parent, -torch.inf), half)
            is_parent.scatter_(3, chosen_kq, True)
        end = start + span - 1
        # Leaves sort at their window start, parents just after their window end, coarser
        # parents after finer ones ending at the same place (SPEC §3, exact integer keys).
        sort_key.append(torch.where(is_parent, 2 * levels * end + level, 2 * levels * start))
        flat_index.append(candidates + offsets[level])
        if level > 0:
            parents = candidates[is_parent].view(batch, kv_heads, config.num_tiles, -1)
            children = parents.unsqueeze(-1) * pooling + torch.arange(pooling, device=device)
            candidates = children.flatten(3)
    sort_key = torch.cat([key.flatten(2) for key in sort_key], dim=2)
    flat_index = torch.cat([index.flatten(2) for index in flat_index], dim=2)
    order = torch.argsort(sort_key, dim=2)
    return torch.gather(flat_index, 2, order)
