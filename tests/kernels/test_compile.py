"""torch.compile traces the whole operator (selection, custom gather/scatter ops, SDPA) in one
graph, so a compiled model does not break its graph at every Lighthouse layer."""

from __future__ import annotations

import torch

from lighthouse_kernels import LighthouseConfig, lighthouse_attention


def test_fullgraph_compile_matches_eager() -> None:
    config = LighthouseConfig(levels=2, pooling=2, topk=8, tile=4)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 4, 64, 16, generator=gen, requires_grad=True) for _ in range(3)]
    inputs[1:] = [torch.randn(1, 2, 64, 16, generator=gen, requires_grad=True) for _ in range(2)]
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
