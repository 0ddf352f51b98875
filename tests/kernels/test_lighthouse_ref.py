"""Properties of the reference Lighthouse operator on random inputs (SPEC §1-4)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from lighthouse_kernels import (
    LighthouseConfig,
    attend_selected,
    dense_causal_attention,
    level_offsets,
    lighthouse_attention,
    lighthouse_attention_ref,
    select_indices,
)
from lighthouse_kernels.scatter import contributions_ref

# (N, L, p, k, m): every knob, several tile counts, odd tile contents.
CONFIGS = {
    "N512-L3-p4-k32-m16": (512, 3, 4, 32, 16),
    "N384-L2-p2-k16-m8": (384, 2, 2, 16, 8),
    "N1024-L4-p2-k16-m4": (1024, 4, 2, 16, 4),
    "N1536-L2-p8-k32-m16": (1536, 2, 8, 32, 16),
    "N2048-L5-p2-k8-m4": (2048, 5, 2, 8, 4),
}
# (query heads, KV heads): GQA ratios 1, 3, 4, 8 and odd head counts.
HEADS = {"H3-G3": (3, 3), "H6-G2": (6, 2), "H8-G2": (8, 2), "H5-G1": (5, 1), "H8-G1": (8, 1)}


def _config(name: str, force: bool = True) -> tuple[int, LighthouseConfig]:
    n, levels, pooling, topk, tile = CONFIGS[name]
    return n, LighthouseConfig(levels=levels, pooling=pooling, topk=topk, tile=tile,
                               force_first_window=force)


def _qkv(n: int, heads: int, kv_heads: int, *, dim: int = 8, batch: int = 2, seed: int = 0,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, h, n, dim, generator=gen, dtype=dtype)
                 for h in (heads, kv_heads, kv_heads))


def _decode(index: torch.Tensor, n: int, config: LighthouseConfig) -> tuple[torch.Tensor, ...]:
    """Flat pyramid index -> (level, position in level)."""
    offsets = torch.tensor(level_offsets(n, config.levels, config.pooling))
    level = torch.bucketize(index, offsets[1:], right=True)
    return level, index - offsets[level]


def _brute_force_select(query: torch.Tensor, key: torch.Tensor, config: LighthouseConfig) -> torch.Tensor:
    """SPEC §2 and §3 written as plainly as possible: Python loops, sets, rational sort keys."""
    batch, heads, n, _ = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    levels, p, half = config.levels, config.pooling, config.tile // 2
    offsets = level_offsets(n, levels, p)
    per_tile = n // p ** (levels - 1) // config.num_tiles
    result = []
    for b in range(batch):
        rows = []
        for g in range(kv_heads):
            q_norm = [max(query[b, h, i].norm().item() for h in range(g * group, (g + 1) * group))
                      for i in range(n)]
            k_norm = [key[b, g, i].norm().item() for i in range(n)]

            def level_score(norms: list[float], level: int, i: int) -> float:
                return max(norms[i * p**level:(i + 1) * p**level])

            emitted = []  # (sort key, flat index)
            for tile in range(config.num_tiles):
                candidates = list(range(tile * per_tile, (tile + 1) * per_tile))
                for level in range(levels - 1, 0, -1):
                    def qk(i: int) -> float:
                        if config.force_first_window and i == 0:
                            return float("inf")
                        return level_score(q_norm, level, i)
                    by_qk = sorted(candidates, key=lambda i: (-qk(i), i))[:half]
                    rest = [i for i in candidates if i not in by_qk]
                    by_kq = sorted(rest, key=lambda i: (-level_score(k_norm, level, i), i))[:half]
                    parents = set(by_qk) | set(by_kq)
                    for i in candidates:
                        if i in parents:
                            sort_key = Fraction((i + 1) * p**level) - Fraction(1, 2**level)
                        else:
                            sort_key = Fraction(i * p**level)
                        emitted.append((sort_key, offsets[level] + i))
                    candidates = sorted(p * i + j for i in parents for j in range(p))
                emitted.extend((Fraction(i), i) for i in candidates)
            rows.append([flat for _, flat in sorted(emitted)])
        result.append(rows)
    return torch.tensor(result)


def _tied_inputs(n: int, heads: int, kv_heads: int, seed: int) -> tuple[torch.Tensor, ...]:
    """One-hot rows scaled by small integers: exact norms with many ties."""
    gen = torch.Generator().manual_seed(seed)

    def make(h: int) -> torch.Tensor:
        scale = torch.randint(1, 4, (1, h, n, 1), generator=gen).float()
        hot = F.one_hot(torch.randint(0, 8, (1, h, n), generator=gen), 8).float()
        return hot * scale
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.parametrize("force", [True, False], ids=["forced", "unforced"])
@pytest.mark.parametrize("name", CONFIGS)
def test_selection_equals_brute_force_with_ties(name: str, force: bool) -> None:
    n, config = _config(name, force)
    query, key, _ = _tied_inputs(n, 4, 2, seed=len(name))
    assert torch.equal(select_indices(query, key, config=config),
                       _brute_force_select(query, key, config))


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("name", CONFIGS)
def test_leaves_partition_and_count(name: str, heads: str) -> None:
    n, config = _config(name)
    query, key, _ = _qkv(n, *HEADS[heads])
    index = select_indices(query, key, config=config)
    assert index.shape == (2, HEADS[heads][1], config.selected_length(n))
    level, position = _decode(index, n, config)
    for b in range(index.shape[0]):
        for g in range(index.shape[1]):
            selected = set(zip(level[b, g].tolist(), position[b, g].tolist()))
            assert len(selected) == index.shape[2], "an entry was emitted twice"
            covered = torch.zeros(n, dtype=torch.long)
            for lvl, i in selected:
                has_child = lvl > 0 and any((lvl - 1, i * config.pooling + j) in selected
                                            for j in range(config.pooling))
                if not has_child:
                    covered[i * config.pooling**lvl:(i + 1) * config.pooling**lvl] += 1
            assert torch.equal(covered, torch.ones(n, dtype=torch.long)), "leaves must partition [0, N)"
            # The forced first window (project rule) is expanded down to level 0.
            assert all((lvl, 0) in selected for lvl in range(config.levels))


@pytest.mark.parametrize("force,expect_gap", [(True, False), (False, True)], ids=["forced", "unforced"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_position_has_a_contributor(name: str, force: bool, expect_gap: bool) -> None:
    n, config = _config(name, force)
    query, key, _ = _qkv(n, 4, 2)
    # Make the first coarse window unattractive so that, unforced, it stays a leaf.
    query[:, :, :config.coarsest_window] *= 1e-3
    key[:, :, :config.coarsest_window] *= 1e-3
    ones = torch.ones_like(key)  # softmax rows sum to one: the output counts contributors
    fan_in = lighthouse_attention_ref(query, key, ones, config=config)[..., 0]
    assert torch.allclose(fan_in, fan_in.round(), atol=1e-5)
    assert fan_in.max().item() <= config.levels + 1e-5
    assert (fan_in.min().item() < 0.5) == expect_gap


@pytest.mark.parametrize("name", CONFIGS)
def test_causal_in_values_and_in_norm_preserving_changes(name: str) -> None:
    n, config = _config(name)
    query, key, value = _qkv(n, 6, 2)
    t = n // 2 + 3
    out = lighthouse_attention_ref(query, key, value, config=config)
    changed_v = value.clone()
    changed_v[:, :, t + 1:] = torch.randn_like(changed_v[:, :, t + 1:])
    out_v = lighthouse_attention_ref(query, key, changed_v, config=config)
    assert torch.equal(out[:, :, :t + 1], out_v[:, :, :t + 1])
    assert not torch.allclose(out[:, :, t + 1:], out_v[:, :, t + 1:])
    # Rotating future queries and keys keeps their norms, hence the selection.
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    rotated_q, rotated_k = query.clone(), key.clone()
    rotated_q[:, :, t + 1:] = query[:, :, t + 1:] @ rotation
    rotated_k[:, :, t + 1:] = key[:, :, t + 1:] @ rotation
    out_qk = lighthouse_attention_ref(rotated_q, rotated_k, value, config=config)
    assert torch.allclose(out[:, :, :t + 1], out_qk[:, :, :t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, :, t + 1:], out_qk[:, :, t + 1:])


@pytest.mark.parametrize("heads", ["H6-G2", "H8-G2", "H3-G3"])
@pytest.mark.parametrize("name", ["N512-L3-p4-k32-m16", "N384-L2-p2-k16-m8"])
def test_gqa_equals_group_score_on_repeated_kv(name: str, heads: str) -> None:
    n, config = _config(name)
    num_heads, kv_heads = HEADS[heads]
    group = num_heads // kv_heads
    query, key, value = _qkv(n, num_heads, kv_heads)
    index = select_indices(query, key, config=config)
    out = lighthouse_attention_ref(query, key, value, config=config)
    # Each query head alone, with its group's max query norm as its score and its own copy of K/V.
    group_max = query.norm(dim=-1).view(2, kv_heads, group, n).amax(2).repeat_interleave(group, 1)
    stand_in = F.pad(group_max.unsqueeze(-1), (0, query.shape[-1] - 1))  # a query whose norm is the score
    repeated_k, repeated_v = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    per_head_index = select_indices(stand_in, repeated_k, config=config)
    assert torch.equal(per_head_index, index.repeat_interleave(group, 1))
    per_head_out = attend_selected(query, repeated_k, repeated_v, per_head_index, config=config)
    assert torch.allclose(out, per_head_out, atol=1e-6)


def test_gradients_match_finite_differences() -> None:
    config = LighthouseConfig(levels=2, pooling=2, topk=8, tile=4)
    query, key, value = (t.requires_grad_() for t in _qkv(64, 2, 1, dim=4, batch=1, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: lighthouse_attention_ref(q, k, v, config=config), (query, key, value),
        fast_mode=True)


def test_gradcheck_three_levels_gqa() -> None:
    config = LighthouseConfig(levels=3, pooling=2, topk=8, tile=4)
    query, key, value = (t.requires_grad_() for t in _qkv(128, 4, 2, dim=4, batch=1, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: lighthouse_attention_ref(q, k, v, config=config, scale=0.3),
        (query, key, value), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_all_inputs_receive_finite_gradients(dtype: torch.dtype) -> None:
    n, config = _config("N512-L3-p4-k32-m16")
    query, key, value = (t.requires_grad_() for t in _qkv(n, 6, 2, dtype=dtype))
    out = lighthouse_attention(query, key, value, config=config)
    assert out.dtype == dtype and out.shape == query.shape
    out.float().square().sum().backward()
    for tensor in (query, key, value):
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [500, 256, 528], ids=["not-divisible", "too-short", "uneven-tiles"])
def test_dense_fallback_for_lengths_that_break_constraints(n: int) -> None:
    config = LighthouseConfig(levels=3, pooling=4, topk=32, tile=16)
    assert config.length_problem(n) is not None
    query, key, value = _qkv(n, 4, 2)
    assert torch.equal(lighthouse_attention(query, key, value, config=config),
                       dense_causal_attention(query, key, value))


def test_dense_fallback_when_decoding_with_a_cache() -> None:
    config = LighthouseConfig(levels=3, pooling=4, topk=32, tile=16)
    query, key, value = _qkv(512, 4, 2)
    full = dense_causal_attention(query, key, value)
    last = lighthouse_attention(query[:, :, -3:], key, value, config=config)
    assert torch.allclose(last, full[:, :, -3:], atol=1e-6)


def test_shape_errors_are_clear() -> None:
    config = LighthouseConfig(levels=3, pooling=4, topk=32, tile=16)
    query, key, value = _qkv(512, 5, 2)
    with pytest.raises(ValueError, match="H a multiple of G"):
        lighthouse_attention(query, key, value, config=config)


@pytest.mark.parametrize("kwargs,field", [
    ({"levels": 1}, "levels"), ({"pooling": 3}, "pooling"), ({"tile": 96}, "tile"),
    ({"tile": 4, "pooling": 4}, "tile"), ({"topk": 2000}, "topk"),
])
def test_impossible_parameters_name_the_constraint(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}=\d+: needs .*\(try {field}=\d+\)"):
        LighthouseConfig(**kwargs)


def test_combine_defaults_to_sum_and_is_serialised() -> None:
    assert LighthouseConfig().combine == "sum"
    assert LighthouseConfig(combine="finest").to_dict()["combine"] == "finest"


@pytest.mark.parametrize("combine", ["avg", "Mean", "", None])
def test_unknown_combine_rule_is_refused_in_one_line(combine: object) -> None:
    with pytest.raises(ValueError) as error:
        LighthouseConfig(combine=combine)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"combine={combine!r}: needs one of")
    assert all(f"'{rule}'" in message for rule in ("sum", "mean", "finest"))


@pytest.mark.parametrize("combine", ["mean", "finest"])
def test_combine_rule_end_to_end_kernels_match_reference(combine: str) -> None:
    """The rule travels from the config through lighthouse_attention and attend_selected."""
    n, summed = _config("N512-L3-p4-k32-m16")
    config = dataclasses.replace(summed, combine=combine)
    inputs = [t.requires_grad_() for t in _qkv(n, 6, 2)]
    outputs, grads = [], []
    for attention in (lighthouse_attention, lighthouse_attention_ref):
        out = attention(*inputs, config=config)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), inputs))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=1e-5)
    for kernel_grad, ref_grad in zip(*grads):
        torch.testing.assert_close(kernel_grad, ref_grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        index = select_indices(*inputs[:2], config=config)
        total = attend_selected(*inputs, index, config=summed)
        combined = attend_selected(*inputs, index, config=config)
    assert torch.allclose(combined, outputs[1], atol=1e-6)
    if combine == "mean":
        count = contributions_ref(index, n=n, config=config).sum(dim=2).repeat_interleave(3, 1)
        assert torch.allclose(combined * count.unsqueeze(-1), total, atol=1e-5)
    assert not torch.allclose(combined, total)
