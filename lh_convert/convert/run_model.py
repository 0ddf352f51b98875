"""Load a run folder's model, with Lighthouse or dense attention, and prove which one runs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..util import hf_load
from ..util.checksums import verify_checksums
from ..util.errors import LhConvertError
from ..util.formats import first_non_finite, verify_safetensors_dir
from .attention import ATTENTION_NAME, ProbeReport, probe
from .manifest import RunManifest, read_manifest
from .settings import CONFIG_KEY, LighthouseSettings, settings_of


def load_run_model(run_dir: Path, *, lighthouse: bool, dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu", checkpoint: Path | None = None
                   ) -> tuple[PreTrainedModel, RunManifest, ProbeReport]:
    """The run's model, Lighthouse in the configured layers or dense in all, probed after loading.

    ``checkpoint``: a training checkpoint folder (``train.checkpoint.latest_checkpoint``) whose
    ``model.safetensors`` replaces the converted weights; None keeps the converted ones.
    Returns the model, the manifest and the probe's report of which path every layer took.
    """
    manifest = read_manifest(run_dir)
    verify_safetensors_dir(Path(run_dir))  # a truncated file first: the more specific message
    verify_checksums(Path(run_dir), fix="the run folder's converted files changed; convert again "
                                        "into a new --out")
    config = hf_load.load_config(run_dir)
    if not lighthouse:
        # Dense everywhere, still through the counting dispatcher, so the probe (and the
        # training loop) can show every layer ran plain SDPA rather than assume it.
        settings = settings_of(config)
        setattr(config, CONFIG_KEY, LighthouseSettings.from_dict(
            {**settings.to_dict(), "dense_layers": list(range(config.num_hidden_layers))}).to_dict())
    model = hf_load.load_causal_lm(
        run_dir, config=config, dtype=dtype or "auto", attn_implementation=ATTENTION_NAME)
    if checkpoint is not None:
        from safetensors.torch import load_file

        fix = f"delete that folder ({Path(checkpoint).name}) to use the previous checkpoint"
        verify_safetensors_dir(checkpoint)
        verify_checksums(Path(checkpoint), fix=fix)
        state = load_file(str(checkpoint / "model.safetensors"))
        bad = first_non_finite(state)
        if bad is not None:
            raise LhConvertError(f"checkpoint {checkpoint} holds non-finite weights (NaN or "
                                 f"infinite values in {bad[0]}); {fix}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise LhConvertError(f"checkpoint {checkpoint} does not fit the run's model (missing "
                                 f"{missing[:3]}, unexpected {unexpected[:3]}); it belongs to "
                                 f"another run")
    model.to(device)
    return model, manifest, probe(model, expect_lighthouse=lighthouse)

