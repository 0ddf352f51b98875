"""Gather selected pyramid entries into the dense sub-sequence (SPEC §1, step 4).

``gather_pool`` builds the gathered tensor straight from the base tensor, without the pyramid:
entry ``(l, i)`` is the mean of base rows ``[i*p^l, (i+1)*p^l)``, accumulated in float32.

Its backward needs no atomics. The selected entries of one ``(b, KV group)`` are unique, so
their inverse, the slot map ``flat pyramid entry -> gathered slot or -1`` (``slot_map``), is a
plain integer scatter. One program then owns a block of base positions ``t`` and sums, over the
``L`` levels in a fixed order, the gradient of the slot holding the entry ``(l, t // p^l)``
divided by ``p^l``: every output element is written once, by one program, in a fixed order, so
two runs are bit-identical.
"""

from __future__ import annotations

import torch

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
from .pyramid import level_offsets, pool_pyramid_ref


@triton.jit
def _gather_pool_fwd_kernel(p_x, p_index, p_out, N, S, HEADS_X, GROUP, D,
                            LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr, ACC: tl.constexpr,
                            BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, h, s] = mean of x[b, h, i*p^l : (i+1)*p^l] where (l, i) = index[b, h // GROUP, s]."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HEADS_X, i_bh % HEADS_X
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_s, m_d = o_s < S, o_d < D
    p_index_row = p_index + (i_b * (HEADS_X // GROUP) + i_h // GROUP).to(tl.int64) * S
    b_index = tl.load(p_index_row + o_s, mask=m_s, other=0).to(tl.int64)
    b_level, b_position = decode_entries(b_index, N, LEVELS, LOG2_POOL)
    b_window = tl.full(b_level.shape, 1, tl.int64) << (LOG2_POOL * b_level).to(tl.int64)
    # [BLOCK_S, BLOCK_D] pointers to the first base row of each entry's window
    p_rows = (p_x + i_bh.to(tl.int64) * N * D
              + (b_position * b_window)[:, None] * D + o_d[None, :])
    b_acc = tl.full([BLOCK_S, BLOCK_D], 0, ACC)
    # One loop per level over its window p^l, with compile-time bounds (see _triton_utils).
    for l in tl.static_range(LEVELS):
        m_level = m_s & (b_level == l)
        for j in range(1 << (LOG2_POOL * l)):
            b_rows = tl.load(p_rows + j * D, mask=m_level[:, None] & m_d[None, :], other=0)
            b_acc += b_rows.to(ACC)
    b_out = b_acc / b_window.to(ACC)[:, None]
    p_out_rows = p_out + (i_bh.to(tl.int64) * S + o_s.to(tl.int64))[:, None] * D + o_d[None, :]
    tl.store(p_out_rows, cast_to(b_out, p_out.dtype.element_ty),
             mask=m_s[:, None] & m_d[None, :])


@triton.jit
def _gather_pool_bwd_kernel(p_grad_out, p_slot, p_grad_x, N, S, TOTAL, HEADS_X, GROUP, D,
                            LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr, ACC: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_x[b, h, t] = sum over levels l of grad_out[b, h, slot(l, t // p^l)] / p^l."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HEADS_X, i_bh % HEADS_X
    o_t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_t, m_d = o_t < N, o_d < D
    p_slot_row = p_slot + (i_b * (HEADS_X // GROUP) + i_h // GROUP).to(tl.int64) * TOTAL
    p_grad_rows = p_grad_out + i_bh.to(tl.int64) * S * D + o_d[None, :]
    b_acc = tl.full([BLOCK_T, BLOCK_D], 0, ACC)
    level_start = 0
    for l in tl.static_range(LEVELS):
        b_slot = tl.load(p_slot_row + level_start + (o_t >> (LOG2_POOL * l)), mask=m_t, other=-1)
        m_selected = b_slot >= 0
        b_grad = tl.load(p_grad_rows + b_slot.to(tl.int64)[:, None] * D,
                         mask=m_selected[:, None] & m_d[None, :], other=0)
        b_acc += b_grad.to(ACC) * (1.0 / (1 << (LOG2_POOL * l)))
        level_start += N >> (LOG2_POOL * l)
    p_grad_x_rows = p_grad_x + (i_bh.to(tl.int64) * N + o_t)[:, None] * D + o_d[None, :]
    tl.store(p_grad_x_rows, cast_to(b_acc, p_grad_x.dtype.element_ty),
             mask=m_t[:, None] & m_d[None, :])


def _gather_pool_fwd(x: torch.Tensor, index: torch.Tensor, levels: int,
                     pooling: int) -> torch.Tensor:
    batch, heads_x, n, dim = x.shape
    check_inputs("gather_pool", x, index, n=n, levels=levels, pooling=pooling)
    x, index = x.contiguous(), index.contiguous()
    selected = index.shape[2]
    out = new_output((batch, heads_x, selected, dim), like=x)
    block_d = triton.next_power_of_2(dim)
    block_s = rows_per_block(block_d, selected, x.device)
    grid = (triton.cdiv(selected, block_s), batch * heads_x)
    _gather_pool_fwd_kernel[grid](
        x, index, out, n, selected, heads_x, heads_x // index.shape[1], dim,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, ACC=accumulator(x.dtype),
        BLOCK_S=block_s, BLOCK_D=block_d)
    return out


def _gather_pool_bwd(grad_out: torch.Tensor, index: torch.Tensor, n: int, levels: int,
                     pooling: int) -> torch.Tensor:
    batch, heads_x, selected, dim = grad_out.shape
    check_inputs("gather_pool", grad_out, index, n=n, levels=levels, pooling=pooling)
    grad_out, index = grad_out.contiguous(), index.contiguous()
    total = level_offsets(n, levels, pooling)[-1]
    slots = slot_map(index, total=total)
    grad_x = new_output((batch, heads_x, n, dim), like=grad_out)
    block_d = triton.next_power_of_2(dim)
    block_t = rows_per_block(block_d, n, grad_out.device)
    grid = (triton.cdiv(n, block_t), batch * heads_x)
    _gather_pool_bwd_kernel[grid](
        grad_out, slots, grad_x, n, selected, total, heads_x, heads_x // index.shape[1], dim,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, ACC=accumulator(grad_out.dtype),
        BLOCK_T=block_t, BLOCK_D=block_d)
    return grad_x


# torch.library custom ops (rather than a bare autograd.Function) so torch.compile traces
# through them without a graph break; the backward is an op of its own for the same reason.
@torch.library.custom_op("lighthouse::gather_pool", mutates_args=())
def _gather_pool_op(x: torch.Tensor, index: torch.Tensor, levels: int,
                    pooling: int) -> torch.Tensor:
    return _gather_pool_fwd(x, index, levels, pooling)


@_gather_pool_op.register_fake
def _(x: torch.Tensor, index: torch.Tensor, levels: int, pooling: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], x.shape[1], index.shape[2], x.shape[3])


@torch.library.custom_op("lighthouse::gather_pool_backward", mutates_args=())
def _gather_pool_backward_op(grad_out: torch.Tensor, index: torch.Tensor, n: int, levels: int,
                             pooling: int) -> torch.Tensor:
    return _gather_pool_bwd(grad_out, index, n, levels, pooling)


@_gather_pool_backward_op.register_fake
def _(grad_out: torch.Tensor, index: torch.Tensor, n: int, levels: int,
      pooling: int) -> torch.Tensor:
    return grad_out.new_empty(grad_out.shape[0], grad_out.shape[1], n, grad_out.shape[3])


def _gather_pool_setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    x, index, levels, pooling = inputs
    ctx.save_for_backward(index)
    ctx.n, ctx.levels, ctx.pooling = x.shape[2], levels, pooling


def _gather_pool_backward(ctx, grad_out: torch.Tensor) -> tuple:
    (index,) = ctx.saved_tensors
    grad_x = _gather_pool_backward_op(grad_out, index, ctx.n, ctx.levels, ctx.pooling)
    return grad_x, None, None, None


_gather_pool_op.register_autograd(_gather_pool_backward, setup_context=_gather_pool_setup_context)


def gather_pool(x: torch.Tensor, index: torch.Tensor, *, config: LighthouseConfig) -> torch.Tensor:
    """Pooled entries of ``x`` at ``index``, in gathered order, without building the pyramid.

    x: ``[B, Hx, N, D]`` with ``Hx = g*G`` (queries) or ``Hx = G`` (keys, values).
    index: ``[B, G, S]`` flat pyramid indices (``level_offsets`` layout), unique per ``(b, g)``
    as ``select_indices`` returns them, shared by the ``g`` heads of a group (SPEC §4).
    Returns ``[B, Hx, S, D]`` in ``x.dtype``: entry ``(l, i)`` is the mean of base rows
    ``[i*p^l, (i+1)*p^l)``, accumulated in float32. Triton kernels where ``use_triton(x)``,
    otherwise ``gather_ref``; differentiable in ``x``.
    """
    if use_triton(x):
        return _gather_pool_op(x, index, config.levels, config.pooling)
    return gather_ref(x, index, config=config)


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
