"""Header-only checks of weight files: safetensors (single and sharded) and GGUF."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lh_convert.util.errors import LhConvertError
from lh_convert.util.formats import (
    SAFETENSORS_INDEX_NAME,
    read_gguf_summary,
    unloaded_gguf_tensors,
    verify_safetensors_dir,
)


# ---- verify_safetensors_dir ----------------------------------------------------------------------


def test_verify_accepts_single_file_and_sharded_checkpoints(
    make_tiny_checkpoint, tmp_path: Path
) -> None:
    folder = make_tiny_checkpoint("llama")
    verify_safetensors_dir(folder)
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / SAFETENSORS_INDEX_NAME).is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    verify_safetensors_dir(sharded)


def test_verify_detects_a_file_cut_in_half(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        LhConvertError,
        match=rf"checkpoint file {weights} is truncated or corrupt \(.*\); re-download it",
    ):
        verify_safetensors_dir(folder)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05\x00",
        struct.pack("<Q", 10**12) + b"{}",
        struct.pack("<Q", 8) + b"not json",
        struct.pack("<Q", 2) + b"[]",
    ],
    ids=["empty", "short", "huge-header-length", "bad-json", "not-an-object"],
)
def test_verify_detects_corrupt_headers(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(LhConvertError, match="is truncated or corrupt"):
        verify_safetensors_dir(tmp_path)


def test_verify_detects_trailing_garbage(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    with open(folder / "model.safetensors", "ab") as handle:
        handle.write(b"extra")
    with pytest.raises(LhConvertError, match="the header describes"):
        verify_safetensors_dir(folder)


def test_verify_detects_index_naming_a_missing_shard(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    index = {
        "metadata": {},
        "weight_map": {
            "model.norm.weight": "model.safetensors",
            "lm_head.weight": "model-2.safetensors",
        },
    }
    (folder / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(
        LhConvertError, match="lists shards that are not in .*: model-2.safetensors"
    ):
        verify_safetensors_dir(folder)


def test_verify_requires_safetensors(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(
        LhConvertError,
        match=r"no \*.safetensors files in .*pickled \*.bin checkpoints are not loaded",
    ):
        verify_safetensors_dir(tmp_path)


# ---- GGUF headers --------------------------------------------------------------------------------


def test_gguf_summary_and_unloaded_tensors(make_tiny_checkpoint, make_tiny_gguf) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    extra = {"rope_freqs.weight": np.ones(8, np.float32)}
    summary = read_gguf_summary(make_tiny_gguf(folder, extra_tensors=extra))
    assert summary.architecture == "llama"
    assert {"token_embd.weight", "blk.1.attn_q.weight", "rope_freqs.weight"} <= set(
        summary.tensor_names
    )
    model_keys = set(load_file(folder / "model.safetensors"))
    skipped = unloaded_gguf_tensors(summary, model_keys=model_keys, num_layers=2)
    assert skipped == ["rope_freqs.weight"]


@pytest.mark.parametrize("keep", [0.5, 0.05], ids=["half", "header-only"])
def test_gguf_truncated(make_tiny_checkpoint, make_tiny_gguf, keep: float) -> None:
    gguf_file = make_tiny_gguf(make_tiny_checkpoint("llama", num_hidden_layers=2))
    gguf_file.write_bytes(gguf_file.read_bytes()[: int(gguf_file.stat().st_size * keep)])
    with pytest.raises(
        LhConvertError, match=rf"checkpoint file {gguf_file} is truncated or corrupt"
    ):
        read_gguf_summary(gguf_file)


def test_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(LhConvertError, match="is truncated or corrupt"):
        read_gguf_summary(tmp_path / "model.gguf")
