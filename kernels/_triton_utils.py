"""What the Triton ops share: the Triton-or-reference dispatch, output allocation, the slot map.

Triton is a Linux-only dependency; without it this module hands out a stand-in ``triton.jit``
(the identity) so the kernel modules still import, and ``use_triton`` is always False.

Triton decides once, when a kernel is decorated, whether it runs compiled (GPU) or
interpreted (``TRITON_INTERPRET=1``, CPU tensors), so the mode is read here at import time,
just before the kernel modules decorate their kernels: setting the variable later does not
switch already-imported kernels to the interpreter.

Two rules keep the kernels runnable by Triton 3.6's interpreter:

- Loop bounds are compile-time constants. With numpy >= 2.4 the interpreter cannot turn a
  runtime scalar into a loop bound (triton-lang/triton#9171), so a kernel loops over each
  level's window ``p^l`` (a constant) with masks instead of over a per-entry length.
- Kernels call only ``triton.language`` builtins (``tl.full``, not ``tl.zeros``; no
  ``tl.max`` or ``tl.sum``). Those library helpers are themselves ``@triton.jit`` functions,
  decorated when triton is first imported; when that happened before ``TRITON_INTERPRET`` was
  set (torch imports triton early), they stay compiled and an interpreted kernel cannot call
  them.
"""

from __future__ import annotations

import os
import types

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = types.SimpleNamespace(jit=lambda fn: fn)  # type: ignore[assignment]
    tl = None
    HAS_TRITON = False
else:
    HAS_TRITON = True


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


KERNELS_INTERPRETED = HAS_TRITON and _interpreting()

# Set by the kernel tests: every kernel output starts as NaN, so an element a kernel forgets
# to write fails the comparison instead of passing with whatever memory held.
POISON_OUTPUTS = False


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the Triton kernels can run on ``tensor``'s device.

    CUDA tensors always (with Triton installed); CPU tensors only when the kernels were
    decorated under ``TRITON_INTERPRET=1`` (how CI tests them). Otherwise the ops fall back to
    their PyTorch references.
    """
    if not HAS_TRITON:
        return False
    if tensor.device.type == "cuda":
        return True
    return tensor.device.type == "cpu" and KERNELS_INTERPRETED


def check_inputs(op: str, tensor: torch.Tensor, index: torch.Tensor, *, n: int, levels: int,
                 pooling: int) -> None:
    """Shapes and dtypes a launcher accepts: ``tensor [B, H, *, D]``, ``index [B, G, S]``."""
    if tensor.dim() != 4 or index.dim() != 3 or tensor.shape[0] != index.shape[0] \
            or tensor.shape[1] % index.shape[1]:
        raise ValueError(f"{op} needs [B, H, *, D] and index [B, G, S] with H a multiple of G; "
                         f"got {tuple(tensor.shape)} and {tuple(index.shape)}")
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{op} supports float16, bfloat16, float32 and float64, not {tensor.dtype}")
    if index.dtype not in (torch.int32, torch.int64) or index.device != tensor.device:
        raise TypeError(f"{op}: index must be int32 or int64 on {tensor.device}; "
                        f"got {index.dtype} on {index.device}")
    if pooling < 2 or pooling & (pooling - 1) or n % pooling ** (levels - 1):
        raise ValueError(f"{op}: pooling={pooling} must be a power of two >= 2 and N={n} a "
                         f"multiple of pooling**(levels-1)")


def new_output(shape: tuple[int, ...], *, like: torch.Tensor,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised kernel output on ``like``'s device, in ``dtype`` (default ``like``'s).

    When ``POISON_OUTPUTS`` is set it starts as NaN, or as -1 for integer outputs.
    """
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def accumulator(dtype: torch.dtype):  # -> tl.dtype
    """Accumulation type of a kernel: float32, or float64 for float64 inputs (gradcheck)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def rows_per_block(block_d: int, rows: int, device: torch.device) -> int:
    """Rows of a ``[rows, block_d]`` tile over ``rows`` rows: about 4K elements on a GPU.

    The interpreter pays per operation more than per element, so on CPU the tiles are larger.
    """
    elements = 4096 if device.type == "cuda" else 32768
    return max(16, min(elements // block_d, triton.next_power_of_2(rows)))


def slot_map(index: torch.Tensor, *, total: int) -> torch.Tensor:
    """Inverse of ``index [B, G, S]``: ``[B, G, total]`` int32, the slot ``s`` of each selected
    flat pyramid entry and ``-1`` for entries not selected.

    Selected entries are unique per ``(b, g)`` (SPEC §2 emits each candidate once), so this
    scatter writes every position at most once and is deterministic.
    """
    batch, groups, selected = index.shape
    slots = torch.full((batch, groups, total), -1, dtype=torch.int32, device=index.device)
    order = torch.arange(selected, dtype=torch.int32, device=index.device)
    return slots.scatter_(2, index.long(), order.expand(batch, groups, selected))


@triton.jit
def decode_entries(b_index, N, LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr):
    """Flat pyramid indices (int64 block) -> (level int32, position within the level int64)."""
    b_level = tl.full(b_index.shape, 0, tl.int32)
    b_level_start = tl.full(b_index.shape, 0, tl.int64)
    level_start = 0
    for l in tl.static_range(1, LEVELS):
        level_start += N >> (LOG2_POOL * (l - 1))
        m_past = b_index >= level_start
        b_level = tl.where(m_past, l, b_level)
        b_level_start = tl.where(m_past, level_start, b_level_start)
    return b_level, b_index - b_level_start


@triton.jit
def cast_to(b_value, dtype: tl.constexpr):
    """``b_value`` (float32 or float64) in ``dtype``, rounded to nearest even.

    bfloat16 goes through the bits: Triton 3.6's interpreter truncates float32 -> bfloat16 casts
    (and ignores ``fp_downcast_rounding``), and this gives the GPU's rounding on both.
    """
    if dtype == tl.bfloat16:
        b_bits = b_value.to(tl.float32).to(tl.uint32, bitcast=True)
        b_bits = (b_bits + 0x7FFF + ((b_bits >> 16) & 1)) >> 16
        return b_bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return b_value.to(dtype)
