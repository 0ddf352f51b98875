"""Mean-pooled pyramid and parameter-free norm scores (SPEC §1, steps 1-2).

The pyramid is addressed as one flat axis, levels concatenated finest first: level ``l``
starts at ``level_offsets(...)[l]`` and holds ``N / p^l`` entries, entry ``i`` summarising
base positions ``[i*p^l, (i+1)*p^l - 1]``.

``scores`` computes the selection scores with Triton in one pass over Q and K (level 0 and 1)
plus one small max-pooling launch per coarser level, straight into that flat layout;
``scores_ref`` is the PyTorch specification.
"""

from __future__ import annotations

import torch

from . import _triton_utils
from ._triton_utils import tl, triton, use_triton


def level_offsets(n: int, levels: int, pooling: int) -> list[int]:
    """Start of each level on the flat pyramid axis, plus the total length as a last element."""
    offsets = [0]
    for level in range(levels):
        offsets.append(offsets[-1] + n // pooling**level)
    return offsets


# The combine functions of ``tl.sum`` and ``tl.max``, passed to the builtin ``tl.reduce``: the
# interpreter recognises them by identity and reduces with numpy, and they are never called
# from interpreted code, so this works whichever mode ``tl.standard`` was decorated in
# (see _triton_utils).
_add = tl.standard._sum_combine if tl is not None else None
_maximum = tl.standard._elementwise_max if tl is not None else None


@triton.jit
def _scores_fwd_kernel(p_query, p_key, p_score_qk, p_score_kq, N, TOTAL, KV_HEADS, D,
                       stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                       GROUP: tl.constexpr, POOL: tl.constexpr, BLOCK_E: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """Levels 0 and 1 of the scores of one ``(b, KV head)`` and ``BLOCK_E`` level-1 entries.

    score_qk[t] = sqrt(max over the group's query heads of sum_d q[t, d]^2); level 1 takes
    the max over each window of ``POOL`` positions. sqrt is monotone and correctly rounded,
    so the max may come before it.
    """
    i_e, i_bg = tl.program_id(0), tl.program_id(1)
    i_b, i_g = i_bg // KV_HEADS, i_bg % KV_HEADS
    o_t = (i_e * (BLOCK_E * POOL) + tl.arange(0, BLOCK_E * POOL)).to(tl.int64)
    o_e = (i_e * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_t, m_d = o_t < N, o_d < D
    m_td = m_t[:, None] & m_d[None, :]
    b_qq = tl.full([BLOCK_E * POOL], 0, tl.float32)
    for h in range(GROUP):
        i_h = (i_g * GROUP + h).to(tl.int64)
        p_rows = (p_query + i_b.to(tl.int64) * stride_qb + i_h * stride_qh
                  + o_t[:, None] * stride_qn + o_d[None, :])
        b_q = tl.load(p_rows, mask=m_td, other=0).to(tl.float32)
        b_qq = tl.maximum(b_qq, tl.reduce(b_q * b_q, 1, _add))
    p_rows = (p_key + i_b.to(tl.int64) * stride_kb + i_g.to(tl.int64) * stride_kh
              + o_t[:, None] * stride_kn + o_d[None, :])
    b_k = tl.load(p_rows, mask=m_td, other=0).to(tl.float32)
    b_kk = tl.reduce(b_k * b_k, 1, _add)
    b_qk0, b_kq0 = tl.sqrt_rn(b_qq), tl.sqrt_rn(b_kk)
    p_qk_row = p_score_qk + i_bg.to(tl.int64) * TOTAL
    p_kq_row = p_score_kq + i_bg.to(tl.int64) * TOTAL
    tl.store(p_qk_row + o_t, b_qk0, mask=m_t)
    tl.store(p_kq_row + o_t, b_kq0, mask=m_t)
    m_e = o_e < N // POOL
    b_qk1 = tl.reduce(tl.reshape(b_qk0, [BLOCK_E, POOL]), 1, _maximum)
    b_kq1 = tl.reduce(tl.reshape(b_kq0, [BLOCK_E, POOL]), 1, _maximum)
    tl.store(p_qk_row + N + o_e, b_qk1, mask=m_e)
    tl.store(p_kq_row + N + o_e, b_kq1, mask=m_e)


@triton.jit
def _max_pool_kernel(p_score_qk, p_score_kq, TOTAL, FINE_START, FINE_LEN,
                     POOL: tl.constexpr, BLOCK: tl.constexpr):
    """One coarser level of both scores: entry i = max of the ``POOL`` finer entries under it."""
    i_e, i_bg = tl.program_id(0), tl.program_id(1)
    o_e = (i_e * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    o_f = (i_e * (BLOCK * POOL) + tl.arange(0, BLOCK * POOL)).to(tl.int64)
    m_e, m_f = o_e < FINE_LEN // POOL, o_f < FINE_LEN
    p_qk_fine = p_score_qk + i_bg.to(tl.int64) * TOTAL + FINE_START
    p_kq_fine = p_score_kq + i_bg.to(tl.int64) * TOTAL + FINE_START
    b_qk = tl.reshape(tl.load(p_qk_fine + o_f, mask=m_f, other=0), [BLOCK, POOL])
    b_kq = tl.reshape(tl.load(p_kq_fine + o_f, mask=m_f, other=0), [BLOCK, POOL])
    # The coarser level starts right after the finer one on the flat axis.
    tl.store(p_qk_fine + FINE_LEN + o_e, tl.reduce(b_qk, 1, _maximum), mask=m_e)
    tl.store(p_kq_fine + FINE_LEN + o_e, tl.reduce(b_kq, 1, _maximum), mask=m_e)


def _scores_fwd(query: torch.Tensor, key: torch.Tensor, levels: int,
                pooling: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    if query.stride(-1) != 1:
        query = query.contiguous()
    if key.stride(-1) != 1:
        key = key.contiguous()
    offsets = level_offsets(n, levels, pooling)
    score_qk, score_kq = (torch.empty(batch, kv_heads, offsets[-1], dtype=torch.float32,
                                      device=query.device) for _ in range(2))
    if _triton_utils.POISON_OUTPUTS:
        score_qk.fill_(float("nan"))
        score_kq.fill_(float("nan"))
    block_d = triton.next_power_of_2(dim)
    # About 4K elements per loaded block on a GPU; the interpreter prefers fewer, larger blocks.
    elements = 4096 if query.is_cuda else 65536
    block_e = max(1, min(elements // (block_d * pooling), triton.next_power_of_2(n // pooling)))
    grid = (triton.cdiv(n // pooling, block_e), batch * kv_heads)
    _scores_fwd_kernel[grid](
        query, key, score_qk, score_kq, n, offsets[-1], kv_heads, dim,
        query.stride(0), query.stride(1), query.stride(2),
        key.stride(0), key.stride(1), key.stride(2),
        GROUP=heads // kv_heads, POOL=pooling, BLOCK_E=block_e, BLOCK_D=block_d)
    for level in range(2, levels):
        fine_len = n // pooling ** (level - 1)
        block = max(1, min(1024 if query.is_cuda else 65536,
                           triton.next_power_of_2(fine_len // pooling)))
        grid = (triton.cdiv(fine_len // pooling, block), batch * kv_heads)
        _max_pool_kernel[grid](score_qk, score_kq, offsets[-1], offsets[level - 1], fine_len,
                               POOL=pooling, BLOCK=block)
    return score_qk, score_kq


@torch.library.custom_op("lighthouse::scores", mutates_args=())
def _scores_op(query: torch.Tensor, key: torch.Tensor, levels: int,
               pooling: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _scores_fwd(query, key, levels, pooling)


@_scores_op.register_fake
def _(query: torch.Tensor, key: torch.Tensor, levels: int,
      pooling: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, kv_heads, n = key.shape[0], key.shape[1], key.shape[2]
    total = level_offsets(n, levels, pooling)[-1]
    score = query.new_empty(batch, kv_heads, total, dtype=torch.float32)
    return score, torch.empty_like(score)


def pool_pyramid_ref(x: torch.Tensor, *, levels: int, pooling: int) -> torch.Tensor:
    """Mean-pool ``x [B, H, N, D]`` into the flat pyramid ``[B, H, sum_l N/p^l, D]``.

    Pooling accumulates in at least float32 and returns ``x.dtype``.
    """
    batch, heads, n, dim = x.shape
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    pooled = [x32.view(batch, heads, n // pooling**level, pooling**level, dim).mean(dim=3)
              for level in range(levels)]
    return torch.cat(pooled, dim=2).to(x.dtype)


def scores(query: torch.Tensor, key: torch.Tensor, *, levels: int,
           pooling: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection scores per KV head on the flat pyramid axis, in float32.

    query: ``[B, H, N, D]``; key: ``[B, G, N, D]`` with ``H = g*G`` (SPEC §4); any strides
    with a unit last one. Returns ``(score_qk, score_kq)``, each ``[B, G, sum_l N/p^l]`` with
    level ``l`` at ``level_offsets(N, levels, pooling)[l]``: the values of ``scores_ref``
    concatenated along the last axis, up to the rounding order of the sums of squares.
    Triton kernels where ``use_triton(query)``, otherwise ``scores_ref``.
    """
    if query.dim() != 4 or key.dim() != 4 or query.shape[0] != key.shape[0] \
            or query.shape[2:] != key.shape[2:] or query.shape[1] % key.shape[1]:
        raise ValueError(f"scores needs query [B, H, N, D] and key [B, G, N, D] with H a multiple "
                         f"of G; got {tuple(query.shape)} and {tuple(key.shape)}")
    if pooling < 2 or pooling & (pooling - 1) or query.shape[2] % pooling ** (levels - 1):
        raise ValueError(f"scores: pooling={pooling} must be a power of two >= 2 and "
                         f"N={query.shape[2]} a multiple of pooling**(levels-1)")
    if use_triton(query):
        return _scores_op(query, key, levels, pooling)
    score_qk, score_kq = scores_ref(query, key, levels=levels, pooling=pooling)
    return torch.cat(score_qk, dim=2), torch.cat(score_kq, dim=2)


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
