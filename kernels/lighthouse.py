"""The Lighthouse attention operator (SPEC §1): a training-time wrapper around causal SDPA.

``lighthouse_attention`` is the public entry point: it checks shapes, falls back to dense
causal SDPA where SPEC §4 says so, and otherwise runs pool -> score -> select -> gather ->
SDPA -> scatter-back. Gradients flow through pooling, gather, SDPA and scatter; the selection
carries none.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .config import LighthouseConfig
from .gather import gather_pool, gather_ref
from .pyramid import scores_ref
from .scatter import scatter_back, scatter_back_ref
from .select import select_ref

logger = logging.getLogger(__name__)
_logged_fallbacks: set[str] = set()


def dense_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                           scale: float | None = None) -> torch.Tensor:
    """Causal SDPA with native GQA: query ``[B, H, N, D]``, key/value ``[B, G, N, D]``."""
    return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale,
                                          enable_gqa=query.shape[1] != key.shape[1])


@torch.no_grad()
def select_indices(query: torch.Tensor, key: torch.Tensor, *,
                   config: LighthouseConfig) -> torch.Tensor:
    """Selected pyramid entries ``[B, G, S]`` (flat pyramid indices, gathered order).

    Triton kernels where ``use_triton(query)`` (the same indices as the reference whenever the
    kernels' float32 norms, which may differ from PyTorch's in the last bit, leave the order
    of the scores unchanged), otherwise the PyTorch reference.
    """
    from ._triton_utils import use_triton
    from .pyramid import scores
    from .select import select

    if use_triton(query):
        score_qk, score_kq = scores(query, key, levels=config.levels, pooling=config.pooling)
        return select(score_qk, score_kq, config=config)
    score_qk, score_kq = scores_ref(query, key, levels=config.levels, pooling=config.pooling)
    return select_ref(score_qk, score_kq, config=config)


def attend_selected(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    index: torch.Tensor, *, config: LighthouseConfig,
                    scale: float | None = None) -> torch.Tensor:
    """Gather ``index`` from the pyramids, run causal SDPA on them, scatter back: ``[B, H, N, D]``.

    The scatter-back combines the entries that reach a position by ``config.combine`` (SPEC §7).
    """
    gathered_q = gather_pool(query, index, config=config)
    gathered_k = gather_pool(key, index, config=config)
    gathered_v = gather_pool(value, index, config=config)
    attended = dense_causal_attention(gathered_q, gathered_k, gathered_v, scale=scale)
    return scatter_back(attended, index, n=query.shape[2], config=config)


def fallback_reason(query: torch.Tensor, key: torch.Tensor, *,
                    config: LighthouseConfig) -> str | None:
    """Why this call must run dense (SPEC §4), or None when Lighthouse applies."""
    if query.shape[2] != key.shape[2]:
        return f"query length {query.shape[2]} != key length {key.shape[2]} (KV cache in use)"
    return config.length_problem(query.shape[2])


def log_fallback_once(reason: str) -> None:
    if reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        logger.warning("Lighthouse falls back to dense SDPA: %s", reason)


def lighthouse_attention_ref(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                             config: LighthouseConfig, scale: float | None = None) -> torch.Tensor:
    """Lighthouse attention in plain PyTorch, no fallback: the specification of the operator.

    query: ``[B, H, N, D]``; key, value: ``[B, G, N, D]`` with ``H = g*G``.
    Returns ``[B, H, N, D]``. ``N`` must satisfy ``config.length_problem(N) is None``.
    ``config.combine`` picks the scatter-back rule (SPEC §7).
    """
    with torch.no_grad():
        score_qk, score_kq = scores_ref(query, key, levels=config.levels, pooling=config.pooling)
        index = select_ref(score_qk, score_kq, config=config)
    attended = dense_causal_attention(gather_ref(query, index, config=config),
                                      gather_ref(key, index, config=config),
                                      gather_ref(value, index, config=config), scale=scale)
    return scatter_back_ref(attended, index, n=query.shape[2], config=config)


def lighthouse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                         config: LighthouseConfig, scale: float | None = None) -> torch.Tensor:
    """Lighthouse attention, or dense causal SDPA where SPEC §4 requires it.

    query: ``[B, H, N, D]``; key, value: ``[B, G, N, D]`` with ``H`` a multiple of ``G``.
    Returns ``[B, H, N, D]`` in ``query.dtype``. ``config.combine`` picks the scatter-back
    rule (SPEC §7); the dense fallback ignores it.
    """
    if query.dim() != 4 or key.shape != value.shape or query.shape[0] != key.shape[0] \
            or query.shape[3] != key.shape[3] or query.shape[1] % key.shape[1]:
        raise ValueError(f"lighthouse_attention needs query [B, H, N, D] and key/value [B, G, N, D] "
                         f"with H a multiple of G; got {tuple(query.shape)}, {tuple(key.shape)}, "
                         f"{tuple(value.shape)}")
    reason = fallback_reason(query, key, config=config)
    if reason is not None:
        log_fallback_once(reason)
        if query.shape[2] != key.shape[2]:
            # Decoding with a cache: the last queries attend to every cached key.
            return F.scaled_dot_product_attention(
                query, key, value, scale=scale, enable_gqa=query.shape[1] != key.shape[1],
                attn_mask=_suffix_causal_mask(query.shape[2], key.shape[2], query.device))
        return dense_causal_attention(query, key, value, scale=scale)
    index = select_indices(query, key, config=config)
    return attend_selected(query, key, value, index, config=config, scale=scale)


def _suffix_causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(kv_len - q_len, kv_len, device=device).unsqueeze(1)
    return torch.arange(kv_len, device=device).unsqueeze(0) <= rows
