"""Activation checkpointing and ``torch.compile`` of the decoder layers, as torchtitan applies them.

Each decoder layer is wrapped in a non-reentrant checkpoint, then (optionally) compiled with
the checkpoint inside the compiled region, so the compiler sees the recompute and fuses the
elementwise work (norms, RoPE, SiLU, residual adds) in the forward, the recompute and the
backward alike.

Modes:

- ``"full"``: keep only each layer's input; recompute the whole layer in the backward.
- ``"selective"``: like full, but keep the outputs of the attention kernels (SDPA's output
  and log-sum-exp; Lighthouse's scores, selection and gathered Q, K, V) from the forward, so
  the backward recomputes only the cheap rest (projections, norms, RoPE, MLP, scatter-back).
  For the paper's 367M shape at 64K tokens that is 128 MiB more per dense layer and about
  170 MiB per Lighthouse layer (its SDPA runs on the ``S`` = 20480 selected entries).
- ``"none"``: no checkpointing.

A wrapped layer's state-dict keys gain ``_checkpoint_wrapped_module`` / ``_orig_mod``
prefixes; ``torch.distributed.checkpoint.state_dict`` (which the training checkpoints use)
strips them, so checkpoints are the same in every mode.
"""

from __future__ import annotations

import importlib
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from ..util.errors import LhConvertError
from .recipes import CHECKPOINTING_MODES as MODES


def _saved_ops() -> frozenset:
    """The ops whose outputs selective checkpointing keeps (those that exist in this torch)."""
    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    ops = {getattr(torch.ops.aten, name).default for name in names if hasattr(torch.ops.aten, name)}
    importlib.import_module("lighthouse_kernels.lighthouse")  # registers the lighthouse:: ops
    ops |= {torch.ops.lighthouse.scores.default, torch.ops.lighthouse.select.default,
            torch.ops.lighthouse.gather_pool.default}
    return frozenset(ops)


def _attention_policy(saved: frozenset, ctx, func, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if func in saved else CheckpointPolicy.PREFER_RECOMPUTE


def selective_context_fn() -> tuple:
    """``context_fn`` for ``torch.utils.checkpoint``: keep the attention kernels' outputs."""
    return create_selective_checkpoint_contexts(partial(_attention_policy, _saved_ops()))


def wrap_decoder_layers(model: torch.nn.Module, *, checkpointing: str,
                        compile: bool = False, backend: str = "inductor") -> None:
    """Wrap every decoder layer of a transformers causal LM in place (see the module docstring).

    ``checkpointing`` is one of ``MODES``; ``backend`` is the ``torch.compile`` backend (tests
    use ``"aot_eager"``).
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if checkpointing not in MODES:
        raise LhConvertError(f"activation checkpointing {checkpointing!r} is not known; choose "
                             f"one of {', '.join(MODES)}")
    layers = decoder_layers(model)
    if compile:
        # Each new shape compiles once; sequence lengths are few, so no dynamic shapes.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    for index, layer in enumerate(layers):
        if checkpointing == "selective":
            layer = checkpoint_wrapper(layer, context_fn=selective_context_fn)
        elif checkpointing == "full":
            layer = checkpoint_wrapper(layer)
        if compile:
            layer = torch.compile(layer, dynamic=False, backend=backend)
        layers[index] = layer


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ``ModuleList`` of decoder layers of a transformers causal LM."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise LhConvertError(f"{type(model).__name__} has no model.layers; only decoder-only "
                             f"Llama-style models can be trained")
    return layers
