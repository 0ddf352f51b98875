"""The published implementation's outputs (../shared/golden) reproduced by the reference operator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lighthouse_kernels import (
    LighthouseConfig,
    lighthouse_attention,
    level_offsets,
    lighthouse_attention_ref,
    select_indices,
)

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden"
FILES = sorted(GOLDEN.glob("golden_cfg*.safetensors"))


def _load(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["config"])
    return meta, load_file(str(path))


def _config(meta: dict, *, force_first_window: bool) -> LighthouseConfig:
    return LighthouseConfig(levels=meta["L"], pooling=meta["p"], topk=meta["k"], tile=128,
                            force_first_window=force_first_window)


def test_golden_files_present() -> None:
    assert len(FILES) == 3, f"expected 3 golden files in {GOLDEN}"


@pytest.mark.parametrize("attention", [lighthouse_attention_ref, lighthouse_attention],
                         ids=["reference", "kernels"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_golden_without_forced_window(path: Path, attention) -> None:
    meta, tensors = _load(path)
    config = _config(meta, force_first_window=False)
    query, key, value = (tensors[name].transpose(1, 2) for name in "qkv")
    index = select_indices(query, key, config=config)
    assert index.shape[-1] == meta["selected_len"] == config.selected_length(meta["N"])
    assert torch.equal(index, tensors["indices"])
    out = attention(query, key, value, config=config).transpose(1, 2)
    assert (out - tensors["out"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_golden_with_forced_window_covers_every_position(path: Path) -> None:
    meta, tensors = _load(path)
    query, key, value = (tensors[name].transpose(1, 2) for name in "qkv")
    assert (tensors["out"].abs().amax(-1) == 0).any(), "the published output has the gap"
    out = lighthouse_attention_ref(query, key, value,
                                   config=_config(meta, force_first_window=True))
    assert (out.abs().amax(-1) > 0).all(), "a base position got no contribution"
    # Tiles select independently: forcing tile 0's first window leaves every other tile's
    # entries exactly as the published code chose them.
    config = _config(meta, force_first_window=True)
    offsets = level_offsets(meta["N"], config.levels, config.pooling)
    tile0_end = meta["N"] // config.num_tiles

    def past_tile0(index: torch.Tensor) -> list[set[int]]:
        level = torch.bucketize(index, torch.tensor(offsets[1:]), right=True)
        start = (index - torch.tensor(offsets)[level]) * config.pooling**level
        return [set(row[mask].tolist()) for row, mask in zip(index[0], (start >= tile0_end)[0])]

    assert past_tile0(select_indices(query, key, config=config)) == past_tile0(tensors["indices"])
