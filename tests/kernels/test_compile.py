"""torch.compile traces the whole Triton path of the operator (score, selection, gather and
scatter custom ops, SDPA) in one graph, so a compiled model does not break its graph at every
Lighthouse layer. It runs where the Triton path does: on a GPU, or on the CPU under the
interpreter (the root conftest sets TRITON_INTERPRET there)."""

from __future__ import annotations

import pytest
import torch

from lighthouse_kernels import LighthouseConfig, lighthouse_attention
from lighthouse_kernels._triton_utils import use_triton


@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_fullgraph_compile_matches_eager(combine: str) -> None:
    config = LighthouseConfig(levels=2, pooling=2, topk=8, tile=4, combine=combine)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn(1, heads, 64, 16, generator=gen, device=device, requires_grad=True)
              for heads in (4, 2, 2)]
    assert use_triton(inputs[0]), "this test checks the Triton path"
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda q, k, v: lighthouse_attention(q, k, v, config=config))(*inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(lambda q, k, v: lighthouse_attention(q, k, v, config=config),
                             backend="aot_eager", fullgraph=True)
    out = compiled(*inputs)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in inputs]
    for tensor in inputs:
        tensor.grad = None
    expected = lighthouse_attention(*inputs, config=config)
    expected.square().sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert all(torch.allclose(a, t.grad, atol=1e-5) for a, t in zip(grads, inputs))
