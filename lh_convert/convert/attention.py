"""Lighthouse as a transformers attention implementation, and the probe that proves it runs.

``register()`` adds the name ``lighthouse`` to transformers' ``AttentionInterface`` and
``AttentionMaskInterface`` (no transformers class is patched). A model built with
``attn_implementation="lighthouse"`` then calls ``lighthouse_attention_forward`` in every
layer; that function reads the settings stored in ``config.lighthouse``, runs plain SDPA in
the dense layers and wherever SPEC §4 requires a fallback, and Lighthouse elsewhere.

Every call is counted per layer and path, so ``probe()`` can show after loading that each
non-dense layer really ran Lighthouse: a transformers upgrade that bypassed the interface
would make the probe fail instead of silently training dense.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lighthouse_kernels import LighthouseConfig, lighthouse_attention
from lighthouse_kernels.lighthouse import fallback_reason, log_fallback_once

from ..util.errors import LhConvertError
from .settings import CONFIG_KEY, LighthouseSettings, settings_of

ATTENTION_NAME = "lighthouse"

# Paths a call can take, as counted per layer.
LIGHTHOUSE, DENSE_LAYER, FALLBACK = "lighthouse", "dense-layer", "fallback"


@lru_cache(maxsize=64)
def _settings_from_items(items: tuple) -> tuple[LighthouseSettings, LighthouseConfig]:
    settings = LighthouseSettings.from_dict(dict(items))
    return settings, settings.kernel


class CallCounter:
    """Counts attention calls per ``(layer, path)``; read by ``probe``."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, str]] = Counter()

    def add(self, layer: int, path: str) -> None:
        self.counts[(layer, path)] += 1

    def reset(self) -> None:
        self.counts.clear()


CALLS = CallCounter()
_probe_override: LighthouseConfig | None = None


def lighthouse_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None,
                                 scaling: float | None = None, dropout: float = 0.0,
                                 **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: query ``[B, H, N, D]``, key/value ``[B, G, N, D]``,
    returns ``([B, N, H, D], None)``."""
    dense, kernel_config = _layer_plan(module)
    if dense:
        _count(module, DENSE_LAYER)
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    kernel_config = _probe_override or kernel_config
    if attention_mask is not None:
        reason = "an attention mask was passed (padding or packed documents)"
    elif kwargs.get("use_cache"):
        reason = "a KV cache is in use (generation); pass use_cache=False to train"
    elif dropout:
        reason = "attention dropout is not supported"
    else:
        reason = fallback_reason(query, key, config=kernel_config)
    if reason is not None:
        log_fallback_once(reason)
        _count(module, FALLBACK)
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    _count(module, LIGHTHOUSE)
    out = lighthouse_attention(query, key, value, config=kernel_config, scale=scaling)
    return out.transpose(1, 2), None


_PLAN = "_lighthouse_plan"


def _layer_plan(module: torch.nn.Module) -> tuple[bool, LighthouseConfig]:
    """Whether ``module``'s layer stays dense, and the kernel settings, from ``config.lighthouse``.

    Eagerly this is read from the config on every call (so a changed config takes effect)
    and remembered on the module. Under ``torch.compile`` the remembered plan is used: it
    holds only a bool and a shared settings object, so every Lighthouse layer passes the
    same guards and compiles once, where reading ``layer_idx`` would compile each layer anew.
    """
    if torch.compiler.is_compiling() and _PLAN in module.__dict__:
        return module.__dict__[_PLAN]
    stored = getattr(module.config, CONFIG_KEY, None)
    if not isinstance(stored, dict):
        raise LhConvertError("attn_implementation='lighthouse' needs config.lighthouse settings; "
                             "load a run folder written by `lh-convert convert`")
    settings, kernel_config = _settings_from_items(tuple(sorted(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in stored.items())))
    dense = module.layer_idx in settings.dense_layer_set(module.config.num_hidden_layers)
    plan = (dense, kernel_config)
    module.__dict__[_PLAN] = plan
    return plan


def set_lighthouse_settings(model: torch.nn.Module, settings: LighthouseSettings) -> None:
    """Change a loaded model's Lighthouse settings (a training schedule that sparsifies step by
    step): the config, and every layer's remembered plan, so compiled layers see the change
    (their guards on the plan recompile them once per distinct setting)."""
    setattr(model.config, CONFIG_KEY, settings.to_dict())
    for module in model.modules():
        if _PLAN in module.__dict__:
            del module.__dict__[_PLAN]
            _layer_plan(module)


def _count(module: torch.nn.Module, path: str) -> None:
    # Compiled code skips the count: a Python side effect keyed by the layer index would make
    # every layer compile separately. The probe runs eagerly, before any compilation.
    if not torch.compiler.is_compiling():
        CALLS.add(module.layer_idx, path)


def register() -> None:
    """Make ``attn_implementation="lighthouse"`` available to every transformers model."""
    AttentionInterface.register(ATTENTION_NAME, lighthouse_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextlib.contextmanager
def _override_kernel_config(config: LighthouseConfig) -> Iterator[None]:
    global _probe_override
    previous, _probe_override = _probe_override, config
    try:
        yield
    finally:
        _probe_override = previous


# Small enough that any model accepts it: needs sequences of a multiple of 2 and >= 8 tokens.
PROBE_KERNEL = LighthouseConfig(levels=2, pooling=2, topk=4, tile=4)
PROBE_LENGTH = 32


@dataclass(frozen=True)
class ProbeReport:
    """Which path each layer took during one probe forward."""

    paths: dict[int, str]

    def layers(self, path: str) -> list[int]:
        return [layer for layer, taken in sorted(self.paths.items()) if taken == path]

    def summary(self) -> str:
        return (f"{len(self.layers(LIGHTHOUSE))} layers ran Lighthouse, "
                f"{len(self.layers(DENSE_LAYER))} dense by configuration "
                f"{self.layers(DENSE_LAYER)}")


@torch.no_grad()
def probe(model: torch.nn.Module, *, expect_lighthouse: bool = True) -> ProbeReport:
    """Run one short forward and check which attention path every layer took.

    With ``expect_lighthouse``, every layer outside ``dense_layers`` must have run Lighthouse
    exactly once and every dense layer plain SDPA. Without it, every layer must have run
    plain SDPA through the dispatcher (a model loaded with all layers dense). The probe uses small Lighthouse parameters so any model can run it on CPU;
    the dispatch it checks is the same as with the real parameters.
    """
    config = model.config
    num_layers = config.num_hidden_layers
    input_ids = torch.arange(PROBE_LENGTH, device=model.device).remainder(config.vocab_size)
    CALLS.reset()
    with _override_kernel_config(PROBE_KERNEL):
        model(input_ids=input_ids.unsqueeze(0), use_cache=False)
    paths: dict[int, str] = {}
    for (layer, path), count in CALLS.counts.items():
        if count != 1 or layer in paths:
            raise LhConvertError(f"attention probe: layer {layer} ran attention {count} times "
                                 f"({path}); expected exactly one call per layer")
        paths[layer] = path
    CALLS.reset()
    report = ProbeReport(paths=paths)
    if expect_lighthouse:
        dense = settings_of(config).dense_layer_set(num_layers)
        expected = {layer: DENSE_LAYER if layer in dense else LIGHTHOUSE for layer in range(num_layers)}
        if paths != expected:
            wrong = sorted(layer for layer in range(num_layers) if paths.get(layer) != expected[layer])
            raise LhConvertError(
                f"attention probe: layers {wrong} did not run as configured "
                f"(got {[paths.get(i, 'not called') for i in wrong]}); the model is not using "
                f"attn_implementation='lighthouse' (transformers {_transformers_version()}): "
                f"run `lh-convert doctor` and report it")
    elif report.layers(DENSE_LAYER) != list(range(num_layers)):
        wrong = [layer for layer in range(num_layers) if paths.get(layer) != DENSE_LAYER]
        raise LhConvertError(f"attention probe: layers {wrong} did not run dense SDPA in a dense "
                             f"stage (got {[paths.get(i, 'not called') for i in wrong]})")
    return report


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


register()
