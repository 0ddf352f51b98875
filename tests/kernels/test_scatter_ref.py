"""The combination rules of scatter-back (SPEC §7) on problems small enough to check by hand,
and their defining relations on real selections. The hand cases run the reference and the
Triton kernels alike."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lighthouse_kernels import LighthouseConfig
from lighthouse_kernels.pyramid import level_offsets
from lighthouse_kernels.scatter import contributions_ref, scatter_back, scatter_back_ref

from kernel_cases import CASES, DEVICE, selection_problem

# N = 8, L = 3, p = 2: entry (l, i) reaches [i*2^l + 2^l - 1, i*2^l + 2^(l+1) - 2].
HAND_CONFIG = LighthouseConfig(levels=3, pooling=2, topk=4, tile=4)
HAND_N = 8
# Entries in a shuffled gathered order, each with the value it scatters (distinct powers of
# two, so every sum below is exact and says which entries it holds).
HAND_ENTRIES = {(2, 0): 256.0, (0, 0): 1.0, (1, 1): 32.0, (0, 3): 8.0, (1, 0): 16.0,
                (0, 1): 2.0, (1, 3): 128.0, (0, 2): 4.0, (1, 2): 64.0}
# Position t:            0    1    2    3          4      5      6      7
# reached by levels:     0    0,1  0,1  0,1,2      1,2    1,2    1,2    1
HAND_COUNT = [1, 2, 2, 3, 2, 2, 2, 1]
HAND_OUT = {
    "sum": [1, 2 + 16, 4 + 16, 8 + 32 + 256, 32 + 256, 64 + 256, 64 + 256, 128],
    "mean": [1, 18 / 2, 20 / 2, 296 / 3, 288 / 2, 320 / 2, 320 / 2, 128],
    "finest": [1, 2, 4, 8, 32, 64, 64, 128],
}
# d(sum of the output) / d(entry's value): the positions it reaches, weighted by the rule.
HAND_GRAD = {
    "sum": {(0, 0): 1, (0, 1): 1, (0, 2): 1, (0, 3): 1, (1, 0): 2, (1, 1): 2, (1, 2): 2,
            (1, 3): 1, (2, 0): 4},  # (1, 3) reaches [7, 8] and position 8 is dropped
    "mean": {(0, 0): 1, (0, 1): 1 / 2, (0, 2): 1 / 2, (0, 3): 1 / 3, (1, 0): 1 / 2 + 1 / 2,
             (1, 1): 1 / 3 + 1 / 2, (1, 2): 1 / 2 + 1 / 2, (1, 3): 1, (2, 0): 1 / 3 + 3 / 2},
    "finest": {(0, 0): 1, (0, 1): 1, (0, 2): 1, (0, 3): 1, (1, 0): 0, (1, 1): 1, (1, 2): 2,
               (1, 3): 1, (2, 0): 0},
}
OPS = {"reference": scatter_back_ref, "kernels": scatter_back}


def _hand_problem(entries: dict[tuple[int, int], float]) -> tuple[torch.Tensor, torch.Tensor]:
    """index ``[1, 1, S]`` and y ``[1, 2, S, 1]`` in float64: head 1 scatters minus head 0."""
    offsets = level_offsets(HAND_N, HAND_CONFIG.levels, HAND_CONFIG.pooling)
    index = torch.tensor([[[offsets[level] + i for level, i in entries]]], device=DEVICE)
    values = torch.tensor(list(entries.values()), dtype=torch.float64, device=DEVICE)
    return index, torch.stack([values, -values]).view(1, 2, -1, 1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("combine", HAND_OUT)
def test_hand_case_outputs_and_gradients(combine: str, op: str) -> None:
    index, y = _hand_problem(HAND_ENTRIES)
    config = dataclasses.replace(HAND_CONFIG, combine=combine)
    y.requires_grad_()
    out = OPS[op](y, index, n=HAND_N, config=config)
    expected = torch.tensor(HAND_OUT[combine], dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(out[0, :, :, 0], torch.stack([expected, -expected]))
    (grad,) = torch.autograd.grad(out[:, 0].sum() - out[:, 1].sum(), y)
    expected_grad = torch.tensor([HAND_GRAD[combine][entry] for entry in HAND_ENTRIES],
                                 dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(grad[0, :, :, 0], torch.stack([expected_grad, -expected_grad]))


def test_hand_case_contributions() -> None:
    index, _ = _hand_problem(HAND_ENTRIES)
    reached = contributions_ref(index, n=HAND_N, config=HAND_CONFIG)[0, 0]  # [L, N]
    assert reached.sum(dim=0).tolist() == HAND_COUNT
    assert reached[:, 4].tolist() == [False, True, True]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("combine", HAND_OUT)
def test_position_without_contributor_is_zero(combine: str, op: str) -> None:
    """Without the forced first window a position can have no contributor: every rule gives
    it zero (mean divides by a count of at least one) and it passes no gradient on."""
    entries = {entry: value for entry, value in HAND_ENTRIES.items() if entry != (0, 0)}
    index, y = _hand_problem(entries)
    out = OPS[op](y, index, n=HAND_N, config=dataclasses.replace(HAND_CONFIG, combine=combine))
    assert (out[:, :, 0] == 0).all()
    expected = torch.tensor(HAND_OUT[combine][1:], dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(out[0, 0, 1:, 0], expected)


@pytest.mark.parametrize("case", list(CASES)[:3])
def test_sum_is_mean_times_count(case: str) -> None:
    query, _, index, config, gen = selection_problem(case)
    n, group = query.shape[2], query.shape[1] // index.shape[1]
    y = torch.randn(*query.shape[:2], index.shape[2], query.shape[3], generator=gen,
                    device=DEVICE, dtype=torch.float64)
    # The count from the summed rule itself: every entry scattering a one.
    count = scatter_back_ref(torch.ones_like(y[:, :, :, :1]), index, n=n, config=config)
    reached = contributions_ref(index, n=n, config=config)
    assert torch.equal(count[..., 0], reached.sum(dim=2).repeat_interleave(group, 1).double())
    assert count.min() >= 1 and count.max() <= config.levels
    total = scatter_back_ref(y, index, n=n, config=config)
    mean = scatter_back_ref(y, index, n=n, config=dataclasses.replace(config, combine="mean"))
    torch.testing.assert_close(mean * count, total)


@pytest.mark.parametrize("case", list(CASES)[:3])
def test_finest_is_the_level0_output_where_level0_is_selected(case: str) -> None:
    query, _, index, config, gen = selection_problem(case)
    n, group = query.shape[2], query.shape[1] // index.shape[1]
    y = torch.randn(*query.shape[:2], index.shape[2], query.shape[3], generator=gen, device=DEVICE)
    finest = scatter_back_ref(y, index, n=n, config=dataclasses.replace(config, combine="finest"))
    head_index = index.repeat_interleave(group, 1)
    for b in range(index.shape[0]):
        for h in range(query.shape[1]):
            slots = (head_index[b, h] < n).nonzero()[:, 0]  # level 0 holds flat indices [0, N)
            assert len(slots) > 0
            assert torch.equal(finest[b, h, head_index[b, h, slots]], y[b, h, slots])
    # Where coarser entries reach a position too, finest ignores them and mean does not.
    mean = scatter_back_ref(y, index, n=n, config=dataclasses.replace(config, combine="mean"))
    assert not torch.allclose(finest, mean)


@pytest.mark.parametrize("combine", ["mean", "finest"])
def test_reference_gradcheck(combine: str) -> None:
    query, _, index, config, gen = selection_problem("N176-L5-p2-k4-m4-H3-G3-D40", batch=1)
    y = torch.randn(*query.shape[:2], index.shape[2], 3, generator=gen, device=DEVICE,
                    dtype=torch.float64, requires_grad=True)
    config = dataclasses.replace(config, combine=combine)
    assert torch.autograd.gradcheck(
        lambda t: scatter_back_ref(t, index, n=query.shape[2], config=config), (y,))
