"""convert -> export on tiny random models of every supported architecture, and on the real GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lh_convert.convert.settings import LighthouseSettings
from lh_convert.demo import PARAGRAPH, text_loss
from lh_convert.export.to_hf import export
from lh_convert.convert.manifest import read_manifest
from lh_convert.convert.run_model import load_run_model
from lh_convert.convert.surgery import convert

ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3"]
# Valid for every multiple of 64 tokens from 64 up (SPEC §2): 2 tiles of >= 8 coarse entries.
TINY_SETTINGS = LighthouseSettings(levels=2, pooling=2, topk=16, tile=8, dense_layers=(0, -1))


def _plain_model_with_rope(source: Path, *, ctx: int) -> torch.nn.Module:
    """The source weights in plain transformers, RoPE base raised by the NTK rule by hand."""
    config = AutoConfig.from_pretrained(source)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    scale = ctx / config.max_position_embeddings
    theta = config.rope_parameters["rope_theta"] * scale ** (head_dim / (head_dim - 2))
    config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    config.max_position_embeddings = ctx
    return AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_convert_then_export_matches_plain_transformers(model_type: str, make_tiny_checkpoint,
                                                        tmp_path: Path) -> None:
    source = make_tiny_checkpoint(model_type)
    run_dir, out_dir = tmp_path / "run", tmp_path / "exported"
    result = convert(model=str(source), ctx=1024, out=run_dir, settings=TINY_SETTINGS)
    manifest = read_manifest(run_dir)
    assert manifest == result.manifest
    assert manifest.target_context == 1024 and manifest.original_context == 256
    assert manifest.lighthouse_layers == [1, 2]
    assert sorted(p.name for p in run_dir.glob("*.safetensors"))
    assert not list(tmp_path.glob(".*tmp-*")), "a temporary folder was left behind"

    exported = export(run=run_dir, out=out_dir)
    assert exported.max_abs_diff <= 1e-5
    saved = json.loads((out_dir / "config.json").read_text())
    assert "lighthouse" not in saved and "auto_map" not in saved
    assert saved["max_position_embeddings"] == 1024
    assert saved["model_type"] == model_type

    ids = torch.randint(0, 512, (2, 96), generator=torch.Generator().manual_seed(0))
    expected = _plain_model_with_rope(source, ctx=1024)(input_ids=ids).logits
    plain = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    assert saved["architectures"] == json.loads((source / "config.json").read_text())["architectures"]
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        # The run itself, loaded dense, is the same model.
        run_model, _, _ = load_run_model(run_dir, lighthouse=False)
        assert torch.allclose(run_model(input_ids=ids, use_cache=False).logits, expected, atol=1e-5)
    assert plain.config.rope_parameters["rope_type"] == "default"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_lighthouse_run_trains_with_finite_gradients(model_type: str, make_tiny_checkpoint,
                                                     tmp_path: Path) -> None:
    source = make_tiny_checkpoint(model_type)
    convert(model=str(source), ctx=1024, out=tmp_path / "run", settings=TINY_SETTINGS)
    model, _, report = load_run_model(tmp_path / "run", lighthouse=True, dtype=torch.float32)
    assert report.layers("lighthouse") == [1, 2]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, 512, (2, 256), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(6):
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_run_rotary_frequencies_are_the_new_ones(make_tiny_checkpoint, tmp_path: Path) -> None:
    source = make_tiny_checkpoint("llama")
    convert(model=str(source), ctx=2048, out=tmp_path / "run", rope="linear", settings=TINY_SETTINGS)
    model, _, _ = load_run_model(tmp_path / "run", lighthouse=True)
    head_dim = 16
    base = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    assert torch.allclose(model.model.rotary_emb.inv_freq.double(), base / 8, rtol=1e-6)


@pytest.mark.slow
def test_real_smollm2_gguf_converts_exports_and_reloads(smollm2: dict, smollm2_gguf: Path,
                                                        tmp_path: Path) -> None:
    # The source model as load_model gives it (tests/conftest.py: loaded once a session).
    before = text_loss(smollm2["model"], smollm2["tokenizer"])
    run_dir, out_dir = tmp_path / "run", tmp_path / "exported"
    manifest = convert(model=str(smollm2_gguf), ctx=65536, out=run_dir).manifest
    assert (manifest.model_type, manifest.num_layers, manifest.target_context) == ("llama", 30, 65536)
    assert manifest.lighthouse_layers == list(range(2, 28))
    _, _, report = load_run_model(run_dir, lighthouse=True)
    assert len(report.layers("lighthouse")) == 26
    result = export(run=run_dir, out=out_dir)
    assert result.max_abs_diff <= 1e-4
    plain = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    after = text_loss(plain, AutoTokenizer.from_pretrained(out_dir), PARAGRAPH)
    print(f"SmolLM2-135M loss on the paragraph: {before:.3f} before, {after:.3f} after (64K RoPE)")
    assert before < 4.0 and after < 4.0
