"""The Triton selection (``scores`` and ``select``) against ``scores_ref`` and ``select_ref``:
the same indices in the same order, ties, the forced first window and every knob of SPEC §2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lighthouse_kernels.select as select_module
from lighthouse_kernels import LighthouseConfig, level_offsets, select_indices
from lighthouse_kernels._triton_utils import use_triton
from lighthouse_kernels.pyramid import scores, scores_ref
from lighthouse_kernels.select import select, select_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (N, L, p, k, m) -> coarsest entries per tile in the comment: p = 2, 4, 8, L = 2..5, one tile
# and several, tile contents that are not powers of two.
CONFIGS = {
    "N512-L3-p4-k32-m16": (512, 3, 4, 32, 16),  # 16 per tile, 2 tiles
    "N384-L2-p2-k16-m8": (384, 2, 2, 16, 8),  # 96, 2
    "N1024-L4-p2-k16-m4": (1024, 4, 2, 16, 4),  # 32, 4
    "N1536-L2-p8-k32-m16": (1536, 2, 8, 32, 16),  # 96, 2
    "N2048-L5-p2-k8-m4": (2048, 5, 2, 8, 4),  # 64, 2
    "N288-L2-p4-k24-m8": (288, 2, 4, 24, 8),  # 24, 3
    "N800-L3-p2-k40-m8": (800, 3, 2, 40, 8),  # 40, 5
    "N1024-L3-p4-k16-m16": (1024, 3, 4, 16, 16),  # 64, 1
    "N4096-L5-p4-k8-m8": (4096, 5, 4, 8, 8),  # 16, 1
    "N2048-L3-p8-k32-m16": (2048, 3, 8, 32, 16),  # 16, 2
    "N4352-L3-p4-k16-m16": (4352, 3, 4, 16, 16),  # 272, 1
    "N65536-L3-p4-k2048-m128": (65536, 3, 4, 2048, 128),  # 256, 16: the paper's setting
}
# More realistic sizes where the kernels are compiled.
GPU_CONFIGS = {
    "N524288-L3-p4-k2048-m128": (524288, 3, 4, 2048, 128),  # 2048, 16: two chunks
    "N262144-L2-p4-k4096-m128": (262144, 2, 4, 4096, 128),  # 2048, 32
    "N98304-L3-p2-k1536-m128": (98304, 3, 2, 1536, 128),  # 2048, 12
    "N131072-L2-p8-k2048-m128": (131072, 2, 8, 2048, 128),  # 1024, 16
    "N262144-L4-p8-k512-m64": (262144, 4, 8, 512, 64),  # 64, 8
}
if DEVICE == "cuda":
    CONFIGS |= GPU_CONFIGS


def _config(name: str, *, force: bool = True) -> tuple[int, LighthouseConfig]:
    n, levels, pooling, topk, tile = CONFIGS[name]
    config = LighthouseConfig(levels=levels, pooling=pooling, topk=topk, tile=tile,
                              force_first_window=force)
    assert config.length_problem(n) is None
    return n, config


def _level_scores(n: int, config: LighthouseConfig, *, kind: str, batch: int = 2, kv_heads: int = 3,
                  seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-level ``[B, G, N/p^l]`` scores, coarser levels max-pooled as ``scores_ref`` makes them.

    "random": uniform floats, few ties. "tied": integers 0..3, ties everywhere, also between a
    parent and its best child.
    """
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    result = []
    for _ in range(2):
        if kind == "random":
            level0 = torch.rand(batch, kv_heads, n, generator=gen, device=DEVICE)
        else:
            level0 = torch.randint(0, 4, (batch, kv_heads, n), generator=gen, device=DEVICE).float()
        levels = [level0]
        for _ in range(1, config.levels):
            levels.append(levels[-1].view(batch, kv_heads, -1, config.pooling).amax(-1))
        result.append(levels)
    return result[0], result[1]


def _check_triton_in_use(tensor: torch.Tensor) -> None:
    assert use_triton(tensor), ("the Triton path is not in use (were the kernels imported before "
                                "TRITON_INTERPRET=1 was set?): nothing would be tested")


@pytest.mark.parametrize("force", [True, False], ids=["forced", "unforced"])
@pytest.mark.parametrize("kind", ["random", "tied"])
@pytest.mark.parametrize("name", CONFIGS)
def test_select_equals_reference(name: str, kind: str, force: bool) -> None:
    n, config = _config(name, force=force)
    large = n >= 65536  # B=1 and H=8 on a GPU, as in the paper's benchmarks
    score_qk, score_kq = _level_scores(n, config, kind=kind, batch=1 if large else 2,
                                       kv_heads=(8 if DEVICE == "cuda" else 2) if large else 3,
                                       seed=n + config.levels)
    _check_triton_in_use(score_qk[0])
    expected = select_ref(score_qk, score_kq, config=config)
    assert torch.equal(select(score_qk, score_kq, config=config), expected)
    # The flat layout that ``scores`` returns gives the same.
    flat_qk, flat_kq = torch.cat(score_qk, dim=2), torch.cat(score_kq, dim=2)
    assert torch.equal(select(flat_qk, flat_kq, config=config), expected)


STREAMED = ["N384-L2-p2-k16-m8", "N288-L2-p4-k24-m8", "N800-L3-p2-k40-m8", "N4352-L3-p4-k16-m16"]


@pytest.mark.parametrize("kind", ["random", "tied"])
@pytest.mark.parametrize("name", STREAMED)
def test_streamed_chunks_and_one_tile_per_program(name: str, kind: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of m coarsest candidates (the smallest chunk), a partial last one, and the GPU's
    launch shape of one tile per program, on any device."""
    n, config = _config(name)
    device_kind = "cuda" if DEVICE == "cuda" else "cpu"
    monkeypatch.setitem(select_module.COARSE_CHUNK, device_kind, 1)
    monkeypatch.setitem(select_module.TILES_PER_PROGRAM, device_kind, 1)
    score_qk, score_kq = _level_scores(n, config, kind=kind, batch=1, kv_heads=2, seed=1)
    assert torch.equal(select(score_qk, score_kq, config=config),
                       select_ref(score_qk, score_kq, config=config))


@pytest.mark.parametrize("with_nan", [False, True], ids=["no-nan", "nan"])
@pytest.mark.parametrize("force", [True, False], ids=["forced", "unforced"])
def test_select_orders_every_float_like_torch_sort(force: bool, with_nan: bool) -> None:
    """Signed zeros, subnormals, negatives, +inf (and NaN, which torch.sort puts first) sort
    like torch.sort's stable descending order. Not -inf: the reference masks with it."""
    n, config = 512, LighthouseConfig(levels=3, pooling=4, topk=32, tile=16,
                                      force_first_window=force)
    values = torch.tensor([-0.0, 0.0, 1.0, -1.0, float("inf"), 1e-45, -1e-45, 3.4e38, -3.4e38,
                           0.5, 2.0], device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(7)

    def level_scores() -> list[torch.Tensor]:
        result = [values[torch.randint(0, len(values), (2, 3, n // 4**level), generator=gen,
                                       device=DEVICE)] for level in range(3)]
        if with_nan:
            for level in result:
                level[torch.rand(level.shape, generator=gen, device=DEVICE) < 0.1] = float("nan")
        return result

    score_qk, score_kq = level_scores(), level_scores()
    assert torch.equal(select(score_qk, score_kq, config=config),
                       select_ref(score_qk, score_kq, config=config))


def test_each_tile_fills_its_own_slots() -> None:
    """Why no global sort is needed: every entry a tile emits has its SPEC §3 key inside the
    tile's range [2L*start, 2L*end), leaves at their window start and parents before the next
    window, so tile t's entries are exactly slots [t*S/T, (t+1)*S/T) of the gathered order."""
    for name in CONFIGS:
        n, config = _config(name)
        if n >= 65536:
            continue
        score_qk, score_kq = _level_scores(n, config, kind="tied", seed=3)
        index = select_ref(score_qk, score_kq, config=config)
        offsets = torch.tensor(level_offsets(n, config.levels, config.pooling), device=DEVICE)
        level = torch.bucketize(index, offsets[1:], right=True)
        window = config.pooling ** level
        start, end = (index - offsets[level]) * window, (index - offsets[level] + 1) * window
        tile_span = n // config.num_tiles
        tile_of_slot = torch.arange(index.shape[-1], device=DEVICE) // (index.shape[-1]
                                                                        // config.num_tiles)
        assert torch.equal(start // tile_span, tile_of_slot.expand_as(start)), name
        assert torch.equal((end - 1) // tile_span, tile_of_slot.expand_as(end)), name


# (query heads, KV heads): GQA ratios 1, 3, 4, 8.
HEADS = {"H3-G3": (3, 3), "H6-G2": (6, 2), "H4-G1": (4, 1), "H8-G1": (8, 1)}
FUSED = ["N512-L3-p4-k32-m16", "N384-L2-p2-k16-m8", "N2048-L5-p2-k8-m4", "N2048-L3-p8-k32-m16",
         "N800-L3-p2-k40-m8"]


def _one_hot_inputs(n: int, heads: int, kv_heads: int, *, dim: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot rows scaled by 1..3: norms are exact in any summation order, ties everywhere."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def make(h: int) -> torch.Tensor:
        scale = torch.randint(1, 4, (2, h, n, 1), generator=gen, device=DEVICE).float()
        hot = torch.randint(0, dim, (2, h, n), generator=gen, device=DEVICE)
        return F.one_hot(hot, dim).float() * scale
    return make(heads), make(kv_heads)


@pytest.mark.parametrize("force", [True, False], ids=["forced", "unforced"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("name", FUSED)
def test_select_indices_equals_reference_with_ties(name: str, heads: str, force: bool) -> None:
    """The public entry point (Triton scores, then the cascade) on exactly representable norms."""
    n, config = _config(name, force=force)
    query, key = _one_hot_inputs(n, *HEADS[heads], dim=16, seed=n)
    _check_triton_in_use(query)
    expected = select_ref(*scores_ref(query, key, levels=config.levels, pooling=config.pooling),
                          config=config)
    assert torch.equal(select_indices(query, key, config=config), expected)
    assert torch.equal(select_indices(query.bfloat16(), key.bfloat16(), config=config), expected)


@pytest.mark.parametrize("name", ["N65536-L3-p4-k2048-m128"]
                         + (list(GPU_CONFIGS) if DEVICE == "cuda" else []))
def test_select_indices_equals_reference_large(name: str) -> None:
    n, config = _config(name)
    heads, kv_heads = (8, 2) if DEVICE == "cuda" else (4, 1)
    query, key = _one_hot_inputs(n, heads, kv_heads, dim=16, seed=1)
    expected = select_ref(*scores_ref(query, key, levels=config.levels, pooling=config.pooling),
                          config=config)
    assert torch.equal(select_indices(query, key, config=config), expected)


SCORE_CASES = {
    "N512-L3-p4-H6-G2-D40": (512, 3, 4, 6, 2, 40),
    "N256-L5-p2-H3-G3-D16": (256, 5, 2, 3, 3, 16),
    "N1024-L3-p8-H4-G1-D64": (1024, 3, 8, 4, 1, 64),
    "N384-L2-p2-H9-G3-D128": (384, 2, 2, 9, 3, 128),
}
if DEVICE == "cuda":
    SCORE_CASES["N65536-L3-p4-H8-G2-D128"] = (65536, 3, 4, 8, 2, 128)


@pytest.mark.parametrize("layout", ["BHND", "BNHD"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", SCORE_CASES)
def test_scores_match_reference(case: str, dtype: torch.dtype, layout: str) -> None:
    """Every level to float32 rounding of the sums of squares (their order differs), in the
    flat layout; coarser levels are exact maxima of the kernel's own finer level. "BNHD" is
    the strided view Hugging Face attention layers pass."""
    n, levels, pooling, heads, kv_heads, dim = SCORE_CASES[case]
    gen = torch.Generator(device=DEVICE).manual_seed(dim)
    query = torch.randn(2, n, heads, dim, generator=gen, device=DEVICE).to(dtype).transpose(1, 2)
    key = torch.randn(2, n, kv_heads, dim, generator=gen, device=DEVICE).to(dtype).transpose(1, 2)
    if layout == "BHND":
        query, key = query.contiguous(), key.contiguous()
    _check_triton_in_use(query)
    score_qk, score_kq = scores(query, key, levels=levels, pooling=pooling)
    expected_qk, expected_kq = scores_ref(query, key, levels=levels, pooling=pooling)
    offsets = level_offsets(n, levels, pooling)
    for score, expected in ((score_qk, expected_qk), (score_kq, expected_kq)):
        assert score.dtype == torch.float32 and score.shape == (2, kv_heads, offsets[-1])
        torch.testing.assert_close(score, torch.cat(expected, dim=2), rtol=2e-6, atol=0)
        for level in range(1, levels):
            finer = score[..., offsets[level - 1]:offsets[level]]
            coarser = finer.view(2, kv_heads, -1, pooling).amax(-1)
            assert torch.equal(score[..., offsets[level]:offsets[level + 1]], coarser)


def test_custom_ops_pass_opcheck() -> None:
    n, config = _config("N288-L2-p4-k24-m8")
    query, key = _one_hot_inputs(n, 6, 2, dim=8, seed=0)
    torch.library.opcheck(torch.ops.lighthouse.scores, (query, key, config.levels, config.pooling))
    score_qk, score_kq = scores(query, key, levels=config.levels, pooling=config.pooling)
    torch.library.opcheck(torch.ops.lighthouse.select,
                          (score_qk, score_kq, n, config.levels, config.pooling, config.topk,
                           config.tile, config.force_first_window))


def test_select_rejects_bad_scores() -> None:
    n, config = _config("N512-L3-p4-k32-m16")
    score_qk, score_kq = _level_scores(n, config, kind="random")
    with pytest.raises(ValueError, match="flat pyramid"):
        select(torch.cat(score_qk, 2)[..., 1:], torch.cat(score_kq, 2)[..., 1:], config=config)
    with pytest.raises(TypeError, match="float32"):
        select([s.double() for s in score_qk], [s.double() for s in score_kq], config=config)
    with pytest.raises(ValueError, match="too short"):
        select(score_qk, score_kq, config=LighthouseConfig(levels=3, pooling=4, topk=64, tile=16))
