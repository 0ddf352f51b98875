"""Activation checkpointing and per-layer compilation keep the loss and gradients, and
selective checkpointing really skips recomputing the attention kernels."""

from __future__ import annotations

import contextlib
import copy
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig

from lh_convert.convert.attention import ATTENTION_NAME, probe
from lh_convert.convert.settings import LighthouseSettings
from lh_convert.train.activation_checkpointing import _saved_ops, wrap_decoder_layers
from lh_convert.util.errors import LhConvertError
from lh_convert.train.loss import CausalLMLoss

N = 64  # long enough for Lighthouse at L=2, p=2, k=16, tile 8


class CountOps(TorchDispatchMode):
    """Counts the ops that really execute (an op served from a checkpoint cache is not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))


def _model() -> torch.nn.Module:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                         max_position_embeddings=N)
    config.lighthouse = LighthouseSettings(levels=2, pooling=2, topk=16, tile=8,
                                           dense_layers=(0, -1)).to_dict()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_NAME,
                                             dtype=torch.float32)
    report = probe(model, expect_lighthouse=True)
    assert report.layers("lighthouse") == [1, 2]
    model.config.use_cache = False
    return model


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, counter: CountOps | None = None):
    wrapper = CausalLMLoss(model, chunk=32)
    with counter if counter is not None else contextlib.nullcontext():
        loss, _ = wrapper(ids)
        loss.backward()
    grads = {name: p.grad.clone() for name, p in _named_parameters(model)}
    return loss.detach(), grads


def _named_parameters(model: torch.nn.Module):
    """Parameter names without the wrappers' prefixes, so wrapped and plain models compare."""
    for name, parameter in model.named_parameters():
        yield name.replace("._checkpoint_wrapped_module", "").replace("._orig_mod", ""), parameter


@pytest.fixture(scope="module")
def reference():
    model = _model()
    ids = torch.randint(0, 256, (1, N), generator=torch.Generator().manual_seed(1))
    loss, grads = _loss_and_grads(model, ids)
    return model, ids, loss, grads


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_keeps_loss_and_gradients(reference, mode: str) -> None:
    base, ids, loss, grads = reference
    model = copy.deepcopy(base)
    model.zero_grad(set_to_none=True)
    wrap_decoder_layers(model, checkpointing=mode)
    got_loss, got_grads = _loss_and_grads(model, ids)
    assert got_loss == loss
    assert got_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_selective_checkpointing_does_not_recompute_attention(reference) -> None:
    base, ids, _, _ = reference
    executed = {}
    for mode in ("full", "selective"):
        model = copy.deepcopy(base)
        wrap_decoder_layers(model, checkpointing=mode)
        counter = CountOps()
        _loss_and_grads(model, ids, counter)
        executed[mode] = counter.counts
    select, sdpa = torch.ops.lighthouse.select.default, _attention_ops(executed["full"])
    gather = torch.ops.lighthouse.gather_pool.default
    assert executed["full"][select] == 4        # 2 Lighthouse layers, forward + recompute
    assert executed["selective"][select] == 2   # forward only
    assert executed["full"][gather] == 12       # Q, K and V of 2 layers, twice
    assert executed["selective"][gather] == 6
    assert sum(executed["full"][op] for op in sdpa) == 8          # 4 layers, twice
    assert sum(executed["selective"][op] for op in sdpa) == 4


def _attention_ops(counts: Counter) -> list:
    ops = [op for op in counts if op in _saved_ops() and "scaled_dot_product" in str(op)]
    assert ops, f"no SDPA kernel ran; ops seen: {sorted(map(str, counts))[:20]}"
    return ops


def test_compiled_layers_match_eager_and_compile_once_per_kind(reference) -> None:
    base, ids, loss, grads = reference
    model = copy.deepcopy(base)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    wrap_decoder_layers(model, checkpointing="selective", compile=True, backend="aot_eager")
    got_loss, got_grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(got_loss, loss, rtol=0, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=0, atol=1e-5, msg=name)
    # One graph for the dense layers, one for the Lighthouse layers: the layer index is not
    # baked into the compiled code, so four layers do not mean four compilations.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(LhConvertError, match="choose one of selective, full, none"):
        wrap_decoder_layers(_model(), checkpointing="sometimes")
