"""``lh-convert doctor``: versions, devices, and a live check that Lighthouse is wired in."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable

import torch

from .convert.attention import probe
from .convert.settings import LighthouseSettings
from .util.errors import LhConvertError

PACKAGES = ("torch", "triton", "transformers", "safetensors", "huggingface-hub", "click",
            "lm-eval", "gguf", "accelerate")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tiny_lighthouse_model() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    config.lighthouse = LighthouseSettings().to_dict()
    return AutoModelForCausalLM.from_config(config, attn_implementation="lighthouse")


def run_doctor(*, echo: Callable[[str], None]) -> bool:
    """Print the environment and run the registration probe; True when everything works."""
    echo(f"python       {platform.python_version()} ({platform.machine()})")
    for package in PACKAGES:
        echo(f"{package:12s} {_version(package)}")
    if torch.cuda.is_available():
        echo(f"CUDA         {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
             f"{torch.cuda.get_device_name(0)}")
    else:
        echo("CUDA         not available: training runs on CPU (slow), kernels use the PyTorch reference")
    try:
        report = probe(_tiny_lighthouse_model())
    except LhConvertError as error:
        echo(f"probe        FAILED: {error}")
        return False
    echo(f"probe        ok: attn_implementation='lighthouse' dispatches per layer ({report.summary()})")
    return True
