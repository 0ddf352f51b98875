"""Next-token loss computed in chunks of positions, so full-vocabulary logits never exist at once.

At 64K tokens and a 49K vocabulary, float32 logits take 12.9 GB per copy; the model's own
``labels=`` path materialises them (and their gradient) for the whole sequence. Here the LM
head runs on ``chunk`` positions at a time inside activation checkpointing, so the forward
keeps only the hidden states and the backward recomputes one chunk's logits at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="sum",
                           ignore_index=-100)


def chunked_next_token_loss(hidden: torch.Tensor, lm_head: torch.nn.Linear, input_ids: torch.Tensor,
                            *, chunk: int, first_position: int = 0) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over positions ``>= first_position``, and its count.

    hidden: ``[B, N, d]`` final hidden states; input_ids: ``[B, N]``. Position ``t`` predicts
    token ``t + 1``; the last position has no target. Returns ``(loss_sum, num_targets)``.
    """
    targets = input_ids[:, 1:]
    hidden = hidden[:, :-1]
    total = hidden.new_zeros((), dtype=torch.float32)
    count = 0
    for start in range(first_position, hidden.shape[1], chunk):
        end = min(start + chunk, hidden.shape[1])
        part = hidden[:, start:end]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, part, lm_head.weight, lm_head.bias,
                                       targets[:, start:end], use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(part, lm_head.weight, lm_head.bias, targets[:, start:end])
        count += targets[:, start:end].numel()
    return total, count


def causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, *, chunk: int,
                   late_fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean next-token loss of a transformers causal LM, and optionally of its last positions.

    ``late_fraction=0.25`` also returns the mean loss over the last quarter of positions
    (the "late-position loss" that long context is for), computed from the same forward.
    """
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    total, count = chunked_next_token_loss(hidden, head, input_ids, chunk=chunk)
    late = None
    if late_fraction is not None:
        first = int((input_ids.shape[1] - 1) * (1 - late_fraction))
        with torch.no_grad():
            late_total, late_count = chunked_next_token_loss(hidden.detach(), head, input_ids,
                                                             chunk=chunk, first_position=first)
        late = late_total / late_count
    return total / count, late


class CausalLMLoss(torch.nn.Module):
    """A causal LM whose forward returns ``causal_lm_loss``: one module that owns the
    embeddings, the final norm and the LM head, so FSDP2 can shard it as the root (tied
    embeddings stay in one group) and its hooks run around the chunked loss."""

    def __init__(self, lm: torch.nn.Module, *, chunk: int) -> None:
        super().__init__()
        self.lm = lm
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, late_fraction: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return causal_lm_loss(self.lm, input_ids, chunk=self.chunk, late_fraction=late_fraction)
