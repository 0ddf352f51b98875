"""The Triton scatter-back kernels against ``scatter_back_ref``: outputs, gradients, precision,
determinism, for every combination rule (SPEC §7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lighthouse_kernels._triton_utils import new_output
from lighthouse_kernels.config import COMBINE_RULES
from lighthouse_kernels.scatter import contributions_ref, scatter_back, scatter_back_ref

from kernel_cases import CASES, DEVICE, LOW_PRECISION, LOW_PRECISION_CASES, selection_problem


def _problem(case: str, *, dtype: torch.dtype = torch.float32, seed: int = 0, batch: int = 2,
             combine: str = "sum"):
    """A real selection ``[B, G, S]`` and an attention output ``[B, H, S, D]`` to scatter back."""
    query, _, index, config, gen = selection_problem(case, seed=seed, batch=batch)
    y = torch.randn(*query.shape[:2], index.shape[2], query.shape[3], generator=gen, device=DEVICE)
    return y.to(dtype), index, query.shape[2], dataclasses.replace(config, combine=combine)


def _output_and_grad(fn, y: torch.Tensor, grad_out: torch.Tensor | None = None):
    y = y.detach().requires_grad_()
    out = fn(y)
    if grad_out is None:
        gen = torch.Generator(device=y.device).manual_seed(1)
        grad_out = torch.randn(out.shape, generator=gen, device=y.device).to(y.dtype)
    (grad,) = torch.autograd.grad(out, y, grad_out)
    return out, grad, grad_out


@pytest.mark.parametrize("combine", COMBINE_RULES)
@pytest.mark.parametrize("case", CASES)
def test_fp32_output_and_gradient_match_reference(case: str, combine: str) -> None:
    y, index, n, config = _problem(case, combine=combine)
    out, grad, grad_out = _output_and_grad(
        lambda t: scatter_back(t, index, n=n, config=config), y)
    ref_out, ref_grad, _ = _output_and_grad(
        lambda t: scatter_back_ref(t, index, n=n, config=config), y, grad_out)
    assert out.shape == (y.shape[0], y.shape[1], n, y.shape[3])
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)  # sums of up to 64 rows


@pytest.mark.parametrize("combine", COMBINE_RULES)
@pytest.mark.parametrize("case,dtype", LOW_PRECISION_CASES,
                         ids=[f"{case}-{dtype}" for case, dtype in LOW_PRECISION_CASES])
def test_low_precision_error_at_most_twice_pytorch(case: str, dtype: str, combine: str) -> None:
    """Both judged against float64 on the same rounded inputs (flash-attn's criterion)."""
    y, index, n, config = _problem(case, dtype=LOW_PRECISION[dtype], combine=combine)
    out, grad, grad_out = _output_and_grad(
        lambda t: scatter_back(t, index, n=n, config=config), y)
    low_out, low_grad, _ = _output_and_grad(
        lambda t: scatter_back_ref(t, index, n=n, config=config), y, grad_out)
    exact_out, exact_grad, _ = _output_and_grad(
        lambda t: scatter_back_ref(t, index, n=n, config=config), y.double(), grad_out.double())
    assert out.dtype == grad.dtype == y.dtype
    for kernel, pytorch, exact in ((out, low_out, exact_out), (grad, low_grad, exact_grad)):
        kernel_error = (kernel.double() - exact).abs().max().item()
        pytorch_error = (pytorch.double() - exact).abs().max().item()
        assert kernel_error <= 2 * pytorch_error, (kernel_error, pytorch_error)


@pytest.mark.parametrize("combine", COMBINE_RULES)
@pytest.mark.parametrize("case", [list(CASES)[0], list(CASES)[3]])
def test_two_runs_are_bit_identical(case: str, combine: str) -> None:
    y, index, n, config = _problem(case, dtype=torch.bfloat16, combine=combine)
    runs = [_output_and_grad(lambda t: scatter_back(t, index, n=n, config=config), y)
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_every_position_gets_one_to_l_contributions() -> None:
    """With the forced first window (SPEC §2) no base position is left at zero."""
    y, index, n, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40")
    out = scatter_back(torch.ones_like(y), index, n=n, config=config)
    assert (out >= 1).all() and (out <= config.levels).all()


@pytest.mark.parametrize("combine", COMBINE_RULES)
def test_float64_gradcheck(combine: str) -> None:
    y, index, n, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40", dtype=torch.float64, batch=1,
                                   combine=combine)
    y = y[..., :4].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: scatter_back(t, index, n=n, config=config), (y,),
                                    fast_mode=True)


@pytest.mark.parametrize("combine", COMBINE_RULES)
def test_custom_ops_pass_opcheck(combine: str) -> None:
    y, index, n, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40", batch=1)
    y = y[..., :16].detach().requires_grad_()
    args = (n, config.levels, config.pooling, combine)
    torch.library.opcheck(torch.ops.lighthouse.scatter_back.default, (y, index, *args))
    _, code = torch.ops.lighthouse.scatter_back(y, index, *args)
    grad_out = torch.randn(1, 3, n, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.lighthouse.scatter_back_backward.default,
                          (grad_out, index, code, *args[1:]))


@pytest.mark.parametrize("combine", ["mean", "finest"])
@pytest.mark.parametrize("case", [list(CASES)[0], list(CASES)[2]])
def test_contributor_code_is_the_count_or_the_finest_level(case: str, combine: str) -> None:
    """The forward's int8 per-position code, the one thing the backward reads besides the
    gradient, is written everywhere (it starts at -1) and right: the number of contributing
    entries for mean, the lowest contributing level for finest."""
    y, index, n, config = _problem(case, combine=combine)
    _, code = torch.ops.lighthouse.scatter_back(y, index, n, config.levels, config.pooling,
                                                combine)
    reached = contributions_ref(index, n=n, config=config)  # [B, G, L, N]
    expected = reached.sum(dim=2) if combine == "mean" else reached.int().argmax(dim=2)
    assert code.dtype == torch.int8 and code.shape == index.shape[:2] + (n,)
    assert torch.equal(code.long(), expected)


@pytest.mark.parametrize("combine", COMBINE_RULES)
def test_compiles_without_graph_break(combine: str) -> None:
    y, index, n, config = _problem("N176-L5-p2-k4-m4-H3-G3-D40", batch=1, combine=combine)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return scatter_back(t, index, n=n, config=config).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    y = y.detach().requires_grad_()
    (grad,) = torch.autograd.grad(compiled(y), y)
    (ref_grad,) = torch.autograd.grad(loss(y), y)
    assert torch.equal(grad, ref_grad)


def test_outputs_are_poisoned_before_kernels_run() -> None:
    """The conftest fixture is active, so the comparisons above catch unwritten elements."""
    assert new_output((3,), like=torch.zeros(1, device=DEVICE)).isnan().all()
