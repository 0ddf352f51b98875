"""The chunked LM-head loss equals transformers' own loss, value and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lh_convert.train.loss import causal_lm_loss


@pytest.mark.parametrize("chunk", [7, 64, 1000], ids=["odd-chunk", "even-chunk", "one-chunk"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_chunked_loss_matches_transformers(chunk: int, tied: bool) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, 97, (2, 130))
    expected = model(input_ids=ids, labels=ids, use_cache=False).loss
    expected.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss, late = causal_lm_loss(model, ids, chunk=chunk, late_fraction=0.25)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, reference[name], atol=1e-6), name
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(),
                                                      reduction="none").view(2, -1)
    first = int(129 * 0.75)
    assert torch.allclose(late, per_token[:, first:].mean(), atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_gradients_match_recomputed_ones_under_bf16_autocast(compiled: bool) -> None:
    """The training path (gradients computed in the forward) against plain autograd through
    the same chunked loss, in bf16 autocast as training runs it; ignored labels included."""
    from lh_convert.train.loss import _chunk_loss_sum, _LinearCrossEntropy

    torch.manual_seed(0)
    hidden, weight, bias = (torch.randn(*shape, requires_grad=True)
                            for shape in ((300, 64), (97, 64), (97,)))
    labels = torch.randint(0, 97, (300,))
    labels[::7] = -100
    results = []
    for loss_sum in (lambda: _LinearCrossEntropy.apply(hidden, weight, bias, labels, 64, compiled),
                     lambda: _chunk_loss_sum(hidden, weight, bias, labels)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total = loss_sum()
        (0.5 * total).backward()
        results.append([total.detach()] + [t.grad.clone() for t in (hidden, weight, bias)])
        for tensor in (hidden, weight, bias):
            tensor.grad = None
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        assert (got - want).abs().max() <= 5e-3 * want.abs().max()
