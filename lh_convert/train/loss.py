"""Next-token loss computed in chunks of positions, so full-vocabulary logits never exist at once.

At 64K tokens and a 49K vocabulary, float32 logits take 12.9 GB per copy; the model's own
``labels=`` path materialises them (and their gradient) for the whole sequence. Here the LM
head runs on ``chunk`` positions at a time. When gradients are needed, each chunk's
gradients (for the hidden states, the head's weight and bias) are computed right in the
forward, while its logits exist, and kept until the backward scales them by the incoming
gradient: the loss is a plain sum, so its gradient is known up to that one scalar. That
costs one hidden-sized and one head-sized buffer, and saves recomputing every chunk's
logits in the backward (a quarter of the LM head's matrix work, and its softmax).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


IGNORE = -100


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="sum",
                           ignore_index=IGNORE)


def _chunk_gradients(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     target: torch.Tensor):
    """One chunk's loss sum and its gradients for the rows, the weight and the bias."""
    logits = F.linear(rows, weight, bias).float()
    valid = target != IGNORE
    safe = target.clamp_min(0).unsqueeze(1)
    log_norm = torch.logsumexp(logits, dim=1)
    loss_sum = ((log_norm - logits.gather(1, safe).squeeze(1)) * valid).sum()
    # d(sum of losses)/d(logits) = softmax - one_hot, zero on ignored rows.
    grad_logits = torch.exp(logits - log_norm.unsqueeze(1))
    grad_logits = grad_logits.scatter_add(1, safe, -torch.ones_like(safe, dtype=grad_logits.dtype))
    grad_logits = (grad_logits * valid.unsqueeze(1)).to(rows.dtype)
    # F.linear, like the forward's, so autocast runs these in bf16 too.
    grad_rows = F.linear(grad_logits, weight.t())
    grad_weight = F.linear(grad_logits.t(), rows.t()).float()
    grad_bias = grad_logits.sum(0).float() if bias is not None else None
    return loss_sum, grad_rows, grad_weight, grad_bias


@lru_cache(maxsize=1)
def _compiled_chunk_gradients():
    # One fused kernel for the softmax, the one-hot and the casts around the two matmuls.
    return torch.compile(_chunk_gradients, dynamic=False)


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of next-token cross-entropy of ``hidden @ weight.T + bias`` over chunks of rows,
    with its gradients computed in the forward (see the module docstring).

    hidden: ``[T, d]``; labels: ``[T]`` (``IGNORE`` rows count for nothing).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, chunk: int, compiled: bool) -> torch.Tensor:
        step = _compiled_chunk_gradients() if compiled else _chunk_gradients
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            loss_sum, grad_rows, weight_part, bias_part = step(
                hidden[start:start + chunk], weight, bias, labels[start:start + chunk])
            total += loss_sum
            grad_hidden[start:start + chunk] = grad_rows
            grad_weight += weight_part
            if grad_bias is not None:
                grad_bias += bias_part
        ctx.save_for_backward(grad_hidden, grad_weight,
                              grad_bias if grad_bias is not None else grad_weight.new_empty(0))
        ctx.has_bias = bias is not None
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        bias_grad = (grad_bias * grad_total).to(ctx.weight_dtype) if ctx.has_bias else None
        return (grad_hidden * grad_total.to(grad_hidden.dtype),
                (grad_weight * grad_total).to(ctx.weight_dtype), bias_grad, None, None, None)


def linear_cross_entropy_sum(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                             *, chunk: int, compiled: bool = False) -> torch.Tensor:
    """Cross-entropy of ``head(hidden)`` against ``labels``, summed, ``chunk`` positions at a time.

    hidden: ``[B, N, d]``; labels: ``[B, N]``, ``IGNORE`` where a position has no target.
    With gradients enabled each chunk's gradients are computed in the forward (module
    docstring); ``compiled`` runs that chunk math through ``torch.compile``.
    """
    if torch.is_grad_enabled():
        return _LinearCrossEntropy.apply(hidden.flatten(0, 1), head.weight, head.bias,
                                         labels.flatten(), chunk, compiled)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk):
        total = total + _chunk_loss_sum(hidden[:, start:start + chunk], head.weight, head.bias,
                                        labels[:, start:start + chunk])
    return total


def chunked_next_token_loss(hidden: torch.Tensor, lm_head: torch.nn.Linear, input_ids: torch.Tensor,
                            *, chunk: int, first_position: int = 0, compiled: bool = False
                            ) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over positions ``>= first_position``, and its count.

    hidden: ``[B, N, d]`` final hidden states; input_ids: ``[B, N]``. Position ``t`` predicts
    token ``t + 1``; the last position has no target. Returns ``(loss_sum, num_targets)``.
    """
    targets = input_ids[:, first_position + 1:]
    total = linear_cross_entropy_sum(hidden[:, first_position:-1], lm_head, targets, chunk=chunk,
                                     compiled=compiled)
    return total, targets.numel()


def causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, *, chunk: int,
                   late_fraction: float | None = None, compiled: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean next-token loss of a transformers causal LM, and optionally of its last positions.

    ``late_fraction=0.25`` also returns the mean loss over the last quarter of positions
    (the "late-position loss" that long context is for), computed from the same forward.
    """
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    total, count = chunked_next_token_loss(hidden, head, input_ids, chunk=chunk, compiled=compiled)
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

    def __init__(self, lm: torch.nn.Module, *, chunk: int, compiled: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.chunk = chunk
        self.compiled = compiled

    def forward(self, input_ids: torch.Tensor, late_fraction: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return causal_lm_loss(self.lm, input_ids, chunk=self.chunk, late_fraction=late_fraction,
                              compiled=self.compiled)
