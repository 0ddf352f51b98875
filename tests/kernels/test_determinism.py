"""Two runs on the same input give bit-identical outputs and gradients (BENCH.md).

Lighthouse's own kernels (scores, selection, gather, scatter-back) use no float atomics, so
the output, dK and dV are always bit-identical, under every scatter-back combination rule
(SPEC §7). dQ goes through stock SDPA's backward, which accumulates it with atomics unless
``torch.use_deterministic_algorithms(True)`` is on; with it on, dQ is bit-identical too, and
that is what this test checks. On a GPU it runs at a length where SDPA's backward really
splits the work (the H200 run is recorded in docs/benchmarks.md); on the CPU it runs the
Triton kernels under the interpreter.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lighthouse_kernels import LighthouseConfig, lighthouse_attention
from lighthouse_kernels._triton_utils import use_triton
from lighthouse_kernels.config import COMBINE_RULES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (N, heads, kv_heads, dim, dtype, config)
CASES = [(256, 4, 2, 32, torch.float32, LighthouseConfig(levels=2, pooling=4, topk=32, tile=16)),
         (192, 3, 1, 16, torch.float32, LighthouseConfig(levels=3, pooling=2, topk=24, tile=8))]
if DEVICE == "cuda":
    CASES += [(32768, 8, 8, 128, torch.bfloat16, LighthouseConfig()),
              (65536, 9, 3, 64, torch.bfloat16, LighthouseConfig()),
              (32768, 8, 2, 128, torch.float16, LighthouseConfig(levels=2, pooling=8, topk=2048))]


def _run(q, k, v, grad, config):
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = lighthouse_attention(*inputs, config=config)
    out.backward(grad)
    return [out] + [t.grad for t in inputs]


@pytest.mark.parametrize("combine", COMBINE_RULES)
@pytest.mark.parametrize("n, heads, kv_heads, dim, dtype, config", CASES,
                         ids=[f"n{c[0]}-h{c[1]}-g{c[2]}-d{c[3]}-{str(c[4])[6:]}" for c in CASES])
def test_two_runs_are_bit_identical(n, heads, kv_heads, dim, dtype, config, combine) -> None:
    config = dataclasses.replace(config, combine=combine)
    gen = torch.Generator(device=DEVICE).manual_seed(n)
    q, grad = (torch.randn(1, heads, n, dim, generator=gen, device=DEVICE).to(dtype) for _ in range(2))
    k, v = (torch.randn(1, kv_heads, n, dim, generator=gen, device=DEVICE).to(dtype) for _ in range(2))
    assert use_triton(q), "this test checks the Triton path"
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _run(q, k, v, grad, config), _run(q, k, v, grad, config)
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, a, b in zip(("output", "dQ", "dK", "dV"), first, second):
        assert torch.isfinite(a).all(), name
        assert torch.equal(a, b), f"{name} differs between two runs"
