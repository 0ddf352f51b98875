"""Scatter-back of gathered outputs to base positions (SPEC §1, step 6, and §7).

``scatter_back`` sends the output of entry ``(l, i)`` to the shifted range
``R(l, i) = [i*p^l + p^l - 1, i*p^l + 2*p^l - 2]``, dropping positions past ``N - 1``, and
combines the up to ``L`` entries that reach one base position by ``config.combine``:
``"sum"`` adds them (SPEC §1.6), ``"mean"`` divides that sum by their number, ``"finest"``
keeps the entry of the lowest level alone (SPEC §7).

Neither direction needs atomics. Forward: the selected entries of one ``(b, KV group)`` are
unique, so their inverse, the slot map ``flat pyramid entry -> gathered slot or -1``
(``slot_map``), is a plain integer scatter; one program then owns a block of base positions
``t`` and sums, over the ``L`` levels in a fixed order, the output row of the slot holding the
entry ``(l, (t - p^l + 1) // p^l)`` where ``t >= p^l - 1``. Backward: the gradient of entry
``(l, i)`` is the sum of the output gradient over ``R(l, i)``, a gather-sum that one program per
block of gathered slots computes. Every output element is written once, by one program, in a
fixed order, so two runs are bit-identical.

The backward of ``mean`` and ``finest`` needs, at each position ``t`` of ``R(l, i)``, the
position's contributor count or its finest contributing level. The forward kernel finds both
anyway (it loads the slot map of every level at ``t``), so it also writes that one number per
position as ``int8`` (``[B, G, N]``: the count for ``mean``, the finest level for ``finest``;
written by the first query head of each KV group, a function of the selection only) and the
backward reads it. That is cheaper than recomputing from the slot map in the backward (``L``
int32 loads per visited position instead of one byte, and a slot map to rebuild or keep
at 4 bytes per pyramid entry). Extra traffic for bfloat16 with ``D = 128``:

- forward: 1 byte written per base position and KV group, against at least ``2*D`` bytes
  per position and query head that the output store alone moves; ``finest`` loads one
  output row per position instead of up to ``L``, so it moves less than ``sum``;
- backward: 1 byte read per (position, contributing entry) visit, against the ``2*D = 256``
  bytes of output gradient read per visit (under 0.4 %); ``finest`` loads the gradient row
  only where the entry is the position's finest, one row per position instead of up to ``L``;
- memory kept for the backward: ``N`` bytes per ``(b, KV group)``.

So ``mean`` should cost well under 1 % more than ``sum`` in the scatter kernels, themselves a
small part of the operator's time, and ``finest`` no more than ``sum`` (estimates from the
traffic above, not yet measured on a GPU). ``sum`` writes no code, and its kernels load, add
and store exactly as before the rules existed. ``mean`` divides correctly rounded in the
forward (the reference's rounding, one division per output element); the backward multiplies
each gradient row by its position's correctly rounded reciprocal count (one division per row,
within an ulp of the reference's per-element division).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton_utils import (
    accumulator,
    cast_to,
    check_inputs,
    decode_entries,
    new_output,
    rows_per_block,
    slot_map,
    tl,
    triton,
    use_triton,
)
from .config import COMBINE_RULES, LighthouseConfig
from .pyramid import level_offsets

# ``config.combine`` as the kernels' compile-time switch ``COMBINE``: 0 sum, 1 mean, 2 finest
# (the kernels compare it with literals: Triton reads no plain module globals).
_COMBINE_CODE = {rule: code for code, rule in enumerate(COMBINE_RULES)}


@triton.jit
def _divide(b_value, b_by, ACC: tl.constexpr):
    """``b_value / b_by`` rounded to nearest (Triton's float32 ``/`` is approximate on GPUs)."""
    if ACC == tl.float32:
        return tl.div_rn(b_value, tl.broadcast_to(b_by, b_value.shape))
    else:
        return b_value / b_by


@triton.jit
def _scatter_back_fwd_kernel(p_y, p_slot, p_out, p_code, N, S, TOTAL, HEADS, GROUP, D,
                             LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr,
                             COMBINE: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, h, t] = combination over levels l, t >= p^l - 1, of
    y[b, h, slot(l, (t - p^l + 1) // p^l)]: their sum, their mean, or the lowest level's.

    For ``mean`` and ``finest`` the group's first head also writes code[b, h // GROUP, t]:
    the number of contributing entries, or the lowest contributing level (LEVELS if none).
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HEADS, i_bh % HEADS
    o_t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_t, m_d = o_t < N, o_d < D
    i_bg = (i_b * (HEADS // GROUP) + i_h // GROUP).to(tl.int64)
    p_slot_row = p_slot + i_bg * TOTAL
    p_y_rows = p_y + i_bh.to(tl.int64) * S * D + o_d[None, :]
    b_acc = tl.full([BLOCK_T, BLOCK_D], 0, ACC)
    b_count = tl.full([BLOCK_T], 0, tl.int32)
    b_finest = tl.full([BLOCK_T], LEVELS, tl.int32)
    level_start = 0
    for l in tl.static_range(LEVELS):
        o_shifted = o_t - ((1 << (LOG2_POOL * l)) - 1)  # the causal shift of SPEC §1, step 6
        m_level = m_t & (o_shifted >= 0)
        b_slot = tl.load(p_slot_row + level_start + (o_shifted >> (LOG2_POOL * l)),
                         mask=m_level, other=-1)
        m_selected = b_slot >= 0
        if COMBINE == 2:  # finest: only the first level that reaches t (levels run finest first)
            m_selected = m_selected & (b_finest == LEVELS)
            b_finest = tl.where(m_selected, l, b_finest)
        if COMBINE == 1:  # mean
            b_count += m_selected.to(tl.int32)
        b_y = tl.load(p_y_rows + b_slot.to(tl.int64)[:, None] * D,
                      mask=m_selected[:, None] & m_d[None, :], other=0)
        b_acc += b_y.to(ACC)
        level_start += N >> (LOG2_POOL * l)
    if COMBINE == 1:  # mean
        b_acc = _divide(b_acc, tl.maximum(b_count, 1).to(ACC)[:, None], ACC)
    p_out_rows = p_out + (i_bh.to(tl.int64) * N + o_t)[:, None] * D + o_d[None, :]
    tl.store(p_out_rows, cast_to(b_acc, p_out.dtype.element_ty),
             mask=m_t[:, None] & m_d[None, :])
    if COMBINE != 0:  # mean or finest: what the backward needs
        b_code = b_count if COMBINE == 1 else b_finest
        tl.store(p_code + i_bg * N + o_t, b_code.to(tl.int8), mask=m_t & (i_h % GROUP == 0))


@triton.jit
def _scatter_back_bwd_kernel(p_grad_out, p_index, p_code, p_grad_y, N, S, HEADS, GROUP, D,
                             LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr,
                             COMBINE: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_y[b, h, s] = sum over t in R(l, i), t < N, of w(t) * grad_out[b, h, t], where
    (l, i) = index[b, h // GROUP, s] and w(t) is 1 (sum), 1 / code[t] (mean: the count) or
    [code[t] == l] (finest: the lowest contributing level)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HEADS, i_bh % HEADS
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_s, m_d = o_s < S, o_d < D
    i_bg = (i_b * (HEADS // GROUP) + i_h // GROUP).to(tl.int64)
    p_index_row = p_index + i_bg * S
    b_index = tl.load(p_index_row + o_s, mask=m_s, other=0).to(tl.int64)
    b_level, b_position = decode_entries(b_index, N, LEVELS, LOG2_POOL)
    b_window = tl.full(b_level.shape, 1, tl.int64) << (LOG2_POOL * b_level).to(tl.int64)
    b_first = b_position * b_window + b_window - 1  # start of R(l, i)
    p_rows = p_grad_out + i_bh.to(tl.int64) * N * D + b_first[:, None] * D + o_d[None, :]
    p_codes = p_code + i_bg * N + b_first
    b_acc = tl.full([BLOCK_S, BLOCK_D], 0, ACC)
    # One loop per level over its window p^l, with compile-time bounds (see _triton_utils).
    for l in tl.static_range(LEVELS):
        m_level = m_s & (b_level == l)
        for j in range(1 << (LOG2_POOL * l)):
            m_row = m_level & (b_first + j < N)
            if COMBINE == 2:  # finest: only where this entry's level is the position's lowest
                m_row = m_row & (tl.load(p_codes + j, mask=m_row, other=-1) == l)
            b_rows = tl.load(p_rows + j * D, mask=m_row[:, None] & m_d[None, :], other=0)
            if COMBINE == 1:  # mean: the count is >= 1 wherever this entry reaches
                b_count = tl.load(p_codes + j, mask=m_row, other=1).to(ACC)
                b_weight = _divide(tl.full([BLOCK_S], 1, ACC), b_count, ACC)  # [BLOCK_S]
                b_acc += b_rows.to(ACC) * b_weight[:, None]
            else:
                b_acc += b_rows.to(ACC)
    p_grad_y_rows = (p_grad_y + (i_bh.to(tl.int64) * S + o_s.to(tl.int64))[:, None] * D
                     + o_d[None, :])
    tl.store(p_grad_y_rows, cast_to(b_acc, p_grad_y.dtype.element_ty),
             mask=m_s[:, None] & m_d[None, :])


def _scatter_back_fwd(y: torch.Tensor, index: torch.Tensor, n: int, levels: int, pooling: int,
                      combine: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, selected, dim = y.shape
    check_inputs("scatter_back", y, index, n=n, levels=levels, pooling=pooling)
    if index.shape[2] != selected:
        raise ValueError(f"y has {selected} gathered rows but index {index.shape[2]}")
    y, index = y.contiguous(), index.contiguous()
    total = level_offsets(n, levels, pooling)[-1]
    slots = slot_map(index, total=total)
    out = new_output((batch, heads, n, dim), like=y)
    code = new_output(_code_shape(index, n, combine), like=index, dtype=torch.int8)
    block_d = triton.next_power_of_2(dim)
    block_t = rows_per_block(block_d, n, y.device)
    grid = (triton.cdiv(n, block_t), batch * heads)
    _scatter_back_fwd_kernel[grid](
        y, slots, out, code, n, selected, total, heads, heads // index.shape[1], dim,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, COMBINE=_combine_code(combine),
        ACC=accumulator(y.dtype), BLOCK_T=block_t, BLOCK_D=block_d)
    return out, code


def _scatter_back_bwd(grad_out: torch.Tensor, index: torch.Tensor, code: torch.Tensor,
                      levels: int, pooling: int, combine: str) -> torch.Tensor:
    batch, heads, n, dim = grad_out.shape
    check_inputs("scatter_back", grad_out, index, n=n, levels=levels, pooling=pooling)
    expected = _code_shape(index, n, combine)
    if tuple(code.shape) != expected or code.dtype != torch.int8:
        raise ValueError(f"scatter_back backward: code must be int8 {expected} for "
                         f"combine={combine!r}; got {code.dtype} {tuple(code.shape)}")
    grad_out, index, code = grad_out.contiguous(), index.contiguous(), code.contiguous()
    selected = index.shape[2]
    grad_y = new_output((batch, heads, selected, dim), like=grad_out)
    block_d = triton.next_power_of_2(dim)
    block_s = rows_per_block(block_d, selected, grad_out.device)
    grid = (triton.cdiv(selected, block_s), batch * heads)
    _scatter_back_bwd_kernel[grid](
        grad_out, index, code, grad_y, n, selected, heads, heads // index.shape[1], dim,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, COMBINE=_combine_code(combine),
        ACC=accumulator(grad_out.dtype), BLOCK_S=block_s, BLOCK_D=block_d)
    return grad_y


def _combine_code(combine: str) -> int:
    if combine not in _COMBINE_CODE:
        raise ValueError(f"scatter_back: combine={combine!r}; needs one of {COMBINE_RULES}")
    return _COMBINE_CODE[combine]


def _code_shape(index: torch.Tensor, n: int, combine: str) -> tuple[int, int, int]:
    """``[B, G, N]`` per-position contributor code, empty for ``sum`` (which needs none)."""
    return index.shape[0], index.shape[1], 0 if combine == "sum" else n


# torch.library custom ops (rather than a bare autograd.Function) so torch.compile traces
# through them without a graph break; the backward is an op of its own for the same reason.
@torch.library.custom_op("lighthouse::scatter_back", mutates_args=())
def _scatter_back_op(y: torch.Tensor, index: torch.Tensor, n: int, levels: int, pooling: int,
                     combine: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output ``[B, H, N, D]`` and the contributor code ``[B, G, N]`` int8 (for
    ``mean`` the count, for ``finest`` the lowest contributing level; ``[B, G, 0]`` for sum)."""
    return _scatter_back_fwd(y, index, n, levels, pooling, combine)


@_scatter_back_op.register_fake
def _(y: torch.Tensor, index: torch.Tensor, n: int, levels: int, pooling: int,
      combine: str) -> tuple[torch.Tensor, torch.Tensor]:
    _combine_code(combine)
    return (y.new_empty(y.shape[0], y.shape[1], n, y.shape[3]),
            index.new_empty(_code_shape(index, n, combine), dtype=torch.int8))


@torch.library.custom_op("lighthouse::scatter_back_backward", mutates_args=())
def _scatter_back_backward_op(grad_out: torch.Tensor, index: torch.Tensor, code: torch.Tensor,
                              levels: int, pooling: int, combine: str) -> torch.Tensor:
    return _scatter_back_bwd(grad_out, index, code, levels, pooling, combine)


@_scatter_back_backward_op.register_fake
def _(grad_out: torch.Tensor, index: torch.Tensor, code: torch.Tensor, levels: int,
      pooling: int, combine: str) -> torch.Tensor:
    return grad_out.new_empty(grad_out.shape[0], grad_out.shape[1], index.shape[2],
                              grad_out.shape[3])


def _scatter_back_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    _, index, _, levels, pooling, combine = inputs
    ctx.save_for_backward(index, output[1])
    ctx.levels, ctx.pooling, ctx.combine = levels, pooling, combine


def _scatter_back_backward(ctx, grad_out: torch.Tensor, _grad_code: torch.Tensor) -> tuple:
    index, code = ctx.saved_tensors
    grad_y = _scatter_back_backward_op(grad_out, index, code, ctx.levels, ctx.pooling,
                                       ctx.combine)
    return grad_y, None, None, None, None, None


_scatter_back_op.register_autograd(_scatter_back_backward,
                                   setup_context=_scatter_back_setup_context)


def scatter_back(y: torch.Tensor, index: torch.Tensor, *, n: int,
                 config: LighthouseConfig) -> torch.Tensor:
    """Send each gathered output to the base positions its entry covers, shifted causally,
    and combine them by ``config.combine`` (SPEC §7).

    y: ``[B, H, S, D]`` attention output on the gathered sequence.
    index: ``[B, G, S]`` flat pyramid indices (``H = g*G``), unique per ``(b, g)`` as
    ``select_indices`` returns them.
    Returns ``[B, H, N, D]`` in ``y.dtype`` (accumulated in float32): entry ``(l, i)`` reaches
    positions ``[i*p^l + p^l - 1, i*p^l + 2*p^l - 2]``; positions past ``N - 1`` are dropped.
    Each position gets the sum, the mean or the lowest level's output of the entries that reach
    it (zero where none does, possible only without ``force_first_window``). Triton kernels
    where ``use_triton(y)``, otherwise ``scatter_back_ref``; differentiable in ``y``.
    """
    if use_triton(y):
        out, _ = _scatter_back_op(y, index, n, config.levels, config.pooling, config.combine)
        return out
    return scatter_back_ref(y, index, n=n, config=config)


def contributions_ref(index: torch.Tensor, *, n: int, config: LighthouseConfig) -> torch.Tensor:
    """Which levels reach each base position: ``[B, G, L, N]`` bool, True at ``(l, t)`` when the
    selection holds the level-``l`` entry whose shifted range contains ``t``."""
    offsets = level_offsets(n, config.levels, config.pooling)
    selected = torch.zeros(*index.shape[:2], offsets[-1], dtype=torch.bool, device=index.device)
    selected = selected.scatter(2, index.long(), True)
    reached = []
    for level in range(config.levels):
        span = config.pooling**level
        per_level = selected[:, :, offsets[level]:offsets[level + 1]]
        reached.append(F.pad(per_level.repeat_interleave(span, dim=2), (span - 1, 0))[:, :, :n])
    return torch.stack(reached, dim=2)


def scatter_back_ref(y: torch.Tensor, index: torch.Tensor, *, n: int,
                     config: LighthouseConfig) -> torch.Tensor:
    """Send each gathered output to the base positions its entry covers, shifted causally,
    and combine them by ``config.combine`` (SPEC §7).

    y: ``[B, H, S, D]`` attention output on the gathered sequence.
    index: ``[B, G, S]`` flat pyramid indices (``H = g*G``).
    Returns ``[B, H, N, D]``: entry ``(l, i)`` reaches positions
    ``[i*p^l + p^l - 1, i*p^l + 2*p^l - 2]``; positions past ``N - 1`` are dropped. ``sum``
    adds the entries that reach a position, ``mean`` divides that sum by their number (zero
    where none does), ``finest`` keeps the output of the lowest-level one. Counts and the
    finest level are functions of ``index`` and carry no gradient.
    """
    batch, heads, _, dim = y.shape
    offsets = level_offsets(n, config.levels, config.pooling)
    group = heads // index.shape[1]
    head_index = index.repeat_interleave(group, dim=1)
    pyramid = y.new_zeros(batch, heads, offsets[-1], dim)
    pyramid = pyramid.scatter_add(2, head_index.unsqueeze(-1).expand(-1, -1, -1, dim), y)
    if config.combine != "sum":
        # [B, H, L, N, 1]
        reached = contributions_ref(index, n=n, config=config).repeat_interleave(group, dim=1)
        reached = reached.unsqueeze(-1)
        finest = reached & (reached.cumsum(dim=2) == 1)  # the first level that reaches t
    out = torch.zeros_like(y[:, :, :1]).expand(batch, heads, n, dim)
    for level in range(config.levels):
        span = config.pooling**level
        per_level = pyramid[:, :, offsets[level]:offsets[level + 1]]
        spread = per_level.repeat_interleave(span, dim=2)
        term = F.pad(spread, (0, 0, span - 1, 0))[:, :, :n]
        if config.combine == "finest":
            term = torch.where(finest[:, :, level], term, 0)
        out = out + term
    if config.combine == "mean":
        out = out / reached.sum(dim=2).clamp_min(1).to(out.dtype)
    return out
