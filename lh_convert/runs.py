"""Load a run folder's model, with Lighthouse or dense attention, and prove which one runs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .attention import ATTENTION_NAME, ProbeReport, probe
from .checkpoint import verify_safetensors_dir
from .manifest import RunManifest, read_manifest


def run_weights_dir(run_dir: Path) -> Path:
    """The folder holding the run's current weights and config (the run folder itself)."""
    return Path(run_dir)


def load_run_model(run_dir: Path, *, lighthouse: bool, dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu"
                   ) -> tuple[PreTrainedModel, RunManifest, ProbeReport]:
    """The run's model with ``attn_implementation`` lighthouse (or sdpa), probed after loading.

    Returns the model, the manifest and the probe's report of which path every layer took.
    """
    manifest = read_manifest(run_dir)
    weights = run_weights_dir(run_dir)
    verify_safetensors_dir(weights)
    config = AutoConfig.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(
        weights, config=config, dtype=dtype or "auto",
        attn_implementation=ATTENTION_NAME if lighthouse else "sdpa").to(device)
    return model, manifest, probe(model, expect_lighthouse=lighthouse)
