"""Scatter-back of gathered outputs to base positions (SPEC §1, step 6).

``scatter_back`` adds the output of entry ``(l, i)`` to the shifted range
``R(l, i) = [i*p^l + p^l - 1, i*p^l + 2*p^l - 2]``, dropping positions past ``N - 1``.

Neither direction needs atomics. Forward: the selected entries of one ``(b, KV group)`` are
unique, so their inverse, the slot map ``flat pyramid entry -> gathered slot or -1``
(``slot_map``), is a plain integer scatter; one program then owns a block of base positions
``t`` and sums, over the ``L`` levels in a fixed order, the output row of the slot holding the
entry ``(l, (t - p^l + 1) // p^l)`` where ``t >= p^l - 1``. Backward: the gradient of entry
``(l, i)`` is the sum of the output gradient over ``R(l, i)``, a gather-sum that one program per
block of gathered slots computes. Every output element is written once, by one program, in a
fixed order, so two runs are bit-identical.
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
from .config import LighthouseConfig
from .pyramid import level_offsets


@triton.jit
def _scatter_back_fwd_kernel(p_y, p_slot, p_out, N, S, TOTAL, HEADS, GROUP, D,
                             LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, h, t] = sum over levels l, t >= p^l - 1, of y[b, h, slot(l, (t - p^l + 1) // p^l)]."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HEADS, i_bh % HEADS
    o_t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_t, m_d = o_t < N, o_d < D
    p_slot_row = p_slot + (i_b * (HEADS // GROUP) + i_h // GROUP).to(tl.int64) * TOTAL
    p_y_rows = p_y + i_bh.to(tl.int64) * S * D + o_d[None, :]
    b_acc = tl.full([BLOCK_T, BLOCK_D], 0, ACC)
    level_start = 0
    for l in tl.static_range(LEVELS):
        o_shifted = o_t - ((1 << (LOG2_POOL * l)) - 1)  # the causal shift of SPEC §1, step 6
        m_level = m_t & (o_shifted >= 0)
        b_slot = tl.load(p_slot_row + level_start + (o_shifted >> (LOG2_POOL * l)),
                         mask=m_level, other=-1)
        m_selected = b_slot >= 0
        b_y = tl.load(p_y_rows + b_slot.to(tl.int64)[:, None] * D,
                      mask=m_selected[:, None] & m_d[None, :], other=0)
        b_acc += b_y.to(ACC)
        level_start += N >> (LOG2_POOL * l)
    p_out_rows = p_out + (i_bh.to(tl.int64) * N + o_t)[:, None] * D + o_d[None, :]
    tl.store(p_out_rows, cast_to(b_acc, p_out.dtype.element_ty),
             mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _scatter_back_bwd_kernel(p_grad_out, p_index, p_grad_y, N, S, HEADS, GROUP, D,
                             LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_y[b, h, s] = sum of grad_out[b, h, t] over t in R(l, i), t < N, where
    (l, i) = index[b, h // GROUP, s]."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HEADS, i_bh % HEADS
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_s, m_d = o_s < S, o_d < D
    p_index_row = p_index + (i_b * (HEADS // GROUP) + i_h // GROUP).to(tl.int64) * S
    b_index = tl.load(p_index_row + o_s, mask=m_s, other=0).to(tl.int64)
    b_level, b_position = decode_entries(b_index, N, LEVELS, LOG2_POOL)
    b_window = tl.full(b_level.shape, 1, tl.int64) << (LOG2_POOL * b_level).to(tl.int64)
    b_first = b_position * b_window + b_window - 1  # start of R(l, i)
    p_rows = p_grad_out + i_bh.to(tl.int64) * N * D + b_first[:, None] * D + o_d[None, :]
    b_acc = tl.full([BLOCK_S, BLOCK_D], 0, ACC)
    # One loop per level over its window p^l, with compile-time bounds (see _triton_utils).
    for l in tl.static_range(LEVELS):
        m_level = m_s & (b_level == l)
        for j in range(1 << (LOG2_POOL * l)):
            m_row = m_level & (b_first + j < N)
            b_rows = tl.load(p_rows + j * D, mask=m_row[:, None] & m_d[None, :], other=0)
            b_acc += b_rows.to(ACC)
    p_grad_y_rows = (p_grad_y + (i_bh.to(tl.int64) * S + o_s.to(tl.int64))[:, None] * D
                     + o_d[None, :])
    tl.store(p_grad_y_rows, cast_to(b_acc, p_grad_y.dtype.element_ty),
             mask=m_s[:, None] & m_d[None, :])


def _scatter_back_fwd(y: torch.Tensor, index: torch.Tensor, n: int, levels: int,
                      pooling: int) -> torch.Tensor:
    batch, heads, selected, dim = y.shape
    check_inputs("scatter_back", y, index, n=n, levels=levels, pooling=pooling)
    if index.shape[2] != selected:
        raise ValueError(f"y has {selected} gathered rows but index {index.shape[2]}")
    y, index = y.contiguous(), index.contiguous()
    total = level_offsets(n, levels, pooling)[-1]
    slots = slot_map(index, total=total)
    out = new_output((batch, heads, n, dim), like=y)
    block_d = triton.next_power_of_2(dim)
    block_t = rows_per_block(block_d, n, y.device)
    grid = (triton.cdiv(n, block_t), batch * heads)
    _scatter_back_fwd_kernel[grid](
        y, slots, out, n, selected, total, heads, heads // index.shape[1], dim,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, ACC=accumulator(y.dtype),
        BLOCK_T=block_t, BLOCK_D=block_d)
    return out


def _scatter_back_bwd(grad_out: torch.Tensor, index: torch.Tensor, levels: int,
                      pooling: int) -> torch.Tensor:
    batch, heads, n, dim = grad_out.shape
    check_inputs("scatter_back", grad_out, index, n=n, levels=levels, pooling=pooling)
    grad_out, index = grad_out.contiguous(), index.contiguous()
    selected = index.shape[2]
    grad_y = new_output((batch, heads, selected, dim), like=grad_out)
    block_d = triton.next_power_of_2(dim)
    block_s = rows_per_block(block_d, selected, grad_out.device)
    grid = (triton.cdiv(selected, block_s), batch * heads)
    _scatter_back_bwd_kernel[grid](
        grad_out, index, grad_y, n, selected, heads, heads // index.shape[1], dim,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, ACC=accumulator(grad_out.dtype),
        BLOCK_S=block_s, BLOCK_D=block_d)
    return grad_y


# torch.library custom ops (rather than a bare autograd.Function) so torch.compile traces
# through them without a graph break; the backward is an op of its own for the same reason.
@torch.library.custom_op("lighthouse::scatter_back", mutates_args=())
def _scatter_back_op(y: torch.Tensor, index: torch.Tensor, n: int, levels: int,
                     pooling: int) -> torch.Tensor:
    return _scatter_back_fwd(y, index, n, levels, pooling)


@_scatter_back_op.register_fake
def _(y: torch.Tensor, index: torch.Tensor, n: int, levels: int, pooling: int) -> torch.Tensor:
    return y.new_empty(y.shape[0], y.shape[1], n, y.shape[3])


@torch.library.custom_op("lighthouse::scatter_back_backward", mutates_args=())
def _scatter_back_backward_op(grad_out: torch.Tensor, index: torch.Tensor, levels: int,
                              pooling: int) -> torch.Tensor:
    return _scatter_back_bwd(grad_out, index, levels, pooling)


@_scatter_back_backward_op.register_fake
def _(grad_out: torch.Tensor, index: torch.Tensor, levels: int, pooling: int) -> torch.Tensor:
    return grad_out.new_empty(grad_out.shape[0], grad_out.shape[1], index.shape[2],
                              grad_out.shape[3])


def _scatter_back_setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    _, index, _, levels, pooling = inputs
    ctx.save_for_backward(index)
    ctx.levels, ctx.pooling = levels, pooling


def _scatter_back_backward(ctx, grad_out: torch.Tensor) -> tuple:
    (index,) = ctx.saved_tensors
    grad_y = _scatter_back_backward_op(grad_out, index, ctx.levels, ctx.pooling)
    return grad_y, None, None, None, None


_scatter_back_op.register_autograd(_scatter_back_backward,
                                   setup_context=_scatter_back_setup_context)


def scatter_back(y: torch.Tensor, index: torch.Tensor, *, n: int,
                 config: LighthouseConfig) -> torch.Tensor:
    """Add each gathered output to the base positions its entry covers, shifted causally.

    y: ``[B, H, S, D]`` attention output on the gathered sequence.
    index: ``[B, G, S]`` flat pyramid indices (``H = g*G``), unique per ``(b, g)`` as
    ``select_indices`` returns them.
    Returns ``[B, H, N, D]`` in ``y.dtype`` (sums accumulated in float32): entry ``(l, i)``
    adds to positions ``[i*p^l + p^l - 1, i*p^l + 2*p^l - 2]``; positions past ``N - 1`` are
    dropped. Triton kernels where ``use_triton(y)``, otherwise ``scatter_back_ref``;
    differentiable in ``y``.
    """
    if use_triton(y):
        return _scatter_back_op(y, index, n, config.levels, config.pooling)
    return scatter_back_ref(y, index, n=n, config=config)


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
