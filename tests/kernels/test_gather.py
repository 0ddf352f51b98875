"""The Triton gather-pool kernels against ``gather_ref``: outputs, gradients, precision,
determinism."""

from __future__ import annotations

import pytest
import torch

from lighthouse_kernels._triton_utils import new_output
from lighthouse_kernels.gather import gather_pool, gather_ref

from kernel_cases import CASES, DEVICE, LOW_PRECISION, LOW_PRECISION_CASES, selection_problem


def _problem(case: str, *, dtype: torch.dtype = torch.float32, seed: int = 0, batch: int = 2):
    """Query-side ``[B, H, N, D]`` and KV-side ``[B, G, N, D]`` inputs, their real selection."""
    query, key, index, config, _ = selection_problem(case, seed=seed, batch=batch)
    return query.to(dtype), key.to(dtype), index, config


def _output_and_grad(fn, x: torch.Tensor, grad_out: torch.Tensor | None = None):
    x = x.detach().requires_grad_()
    out = fn(x)
    if grad_out is None:
        gen = torch.Generator(device=x.device).manual_seed(1)
        grad_out = torch.randn(out.shape, generator=gen, device=x.device).to(x.dtype)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out, grad, grad_out


@pytest.mark.parametrize("case", CASES)
def test_fp32_output_and_gradient_match_reference(case: str) -> None:
    query, key, index, config = _problem(case)
    for x in (query, key):  # Hx = H (g heads share a group's indices) and Hx = G
        out, grad, grad_out = _output_and_grad(lambda t: gather_pool(t, index, config=config), x)
        ref_out, ref_grad, _ = _output_and_grad(lambda t: gather_ref(t, index, config=config),
                                                x, grad_out)
        assert out.shape == (x.shape[0], x.shape[1], index.shape[2], x.shape[3])
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case,dtype", LOW_PRECISION_CASES,
                         ids=[f"{case}-{dtype}" for case, dtype in LOW_PRECISION_CASES])
def test_low_precision_error_at_most_twice_pytorch(case: str, dtype: str) -> None:
    """Both judged against float64 on the same rounded inputs (flash-attn's criterion)."""
    query, key, index, config = _problem(case, dtype=LOW_PRECISION[dtype])
    for x in (query, key):
        out, grad, grad_out = _output_and_grad(lambda t: gather_pool(t, index, config=config), x)
        low_out, low_grad, _ = _output_and_grad(lambda t: gather_ref(t, index, config=config),
                                                x, grad_out)
        exact_out, exact_grad, _ = _output_and_grad(lambda t: gather_ref(t, index, config=config),
                                                    x.double(), grad_out.double())
        assert out.dtype == grad.dtype == x.dtype
        for kernel, pytorch, exact in ((out, low_out, exact_out), (grad, low_grad, exact_grad)):
            kernel_error = (kernel.double() - exact).abs().max().item()
            pytorch_error = (pytorch.double() - exact).abs().max().item()
            assert kernel_error <= 2 * pytorch_error, (kernel_error, pytorch_error)


@pytest.mark.parametrize("case", [list(CASES)[0], list(CASES)[3]])
def test_two_runs_are_bit_identical(case: str) -> None:
    query, _, index, config = _problem(case, dtype=torch.bfloat16)
    runs = [_output_and_grad(lambda t: gather_pool(t, index, config=config), query)
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_float64_gradcheck() -> None:
    query, key, index, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40", dtype=torch.float64,
                                         batch=1)
    x = key[..., :4].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gather_pool(t, index, config=config), (x,),
                                    fast_mode=True)


def test_custom_ops_pass_opcheck() -> None:
    query, key, index, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40", batch=1)
    x = query[..., :16].detach().requires_grad_()
    torch.library.opcheck(torch.ops.lighthouse.gather_pool.default,
                          (x, index, config.levels, config.pooling))
    grad_out = torch.randn(1, 3, index.shape[2], 16, device=DEVICE)
    torch.library.opcheck(torch.ops.lighthouse.gather_pool_backward.default,
                          (grad_out, index, x.shape[2], config.levels, config.pooling))


def test_compiles_without_graph_break() -> None:
    query, _, index, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40", batch=1)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return gather_pool(t, index, config=config).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x = query.detach().requires_grad_()
    (grad,) = torch.autograd.grad(compiled(x), x)
    (ref_grad,) = torch.autograd.grad(loss(x), x)
    assert torch.equal(grad, ref_grad)


def test_outputs_are_poisoned_before_kernels_run() -> None:
    """The conftest fixture is active, so the comparisons above catch unwritten elements."""
    assert new_output((3,), like=torch.zeros(1, device=DEVICE)).isnan().all()
