"""Context parallelism (CP): one sequence split over the ``cp`` ranks of a ("dp", "cp") mesh.

The sequence is cut into ``2*cp`` equal chunks and rank ``r`` holds chunks ``r`` and
``2*cp-1-r`` (PyTorch's head-tail load balancer), so every rank does the same causal work.
Attention runs as PyTorch's own load-balanced ring attention (``_templated_ring_attention``):

- dense layers: ring attention over the sharded ``q, k, v``;
- Lighthouse layers: every chunk runs the selection on its own (per-chunk budget
  ``topk/(2*cp)``), the chunks' gathered sub-sequences are, in chunk order, exactly the
  single-GPU gathered sequence, so ring attention over them is the single-GPU attention;
  outputs scatter back locally, and the few outputs that the shifted scatter-back carries past
  a chunk's end are added to the next chunk (one small autograd ``all_to_all_single``).

With ``topk/tile`` a multiple of ``2*cp`` this computes the single-GPU Lighthouse function
up to float rounding (``docs/context_parallel.md`` states the semantics). Every tensor
exchange is a PyTorch collective; there is no home-made one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.experimental._context_parallel._attention import (
    _context_parallel_shard,
    _cp_options,
    _templated_ring_attention,
    _templated_ring_attention_backward,
    context_parallel_unshard,
)
from torch.distributed.tensor.experimental._context_parallel._load_balancer import (
    _HeadTailLoadBalancer,
)
from transformers import AttentionInterface

from lighthouse_kernels import LighthouseConfig, level_offsets, select_indices
from lighthouse_kernels.gather import gather_pool
from lighthouse_kernels.scatter import scatter_back

from ..convert.attention import CALLS, DENSE_LAYER, LIGHTHOUSE
from ..convert.settings import settings_of
from ..util.errors import LhConvertError
from .loss import IGNORE, linear_cross_entropy_sum

CP_ATTENTION_NAME = "lighthouse-cp"
_SEQ_DIM = 2  # of q, k, v [B, H, N, D]
aten = torch.ops.aten


# ---- the plan: mesh and checks ------------------------------------------------------------------


@dataclass(frozen=True)
class ContextParallelPlan:
    """A 2-D ("dp", "cp") mesh: ranks of one "cp" row share one batch and split its sequence."""

    mesh: DeviceMesh

    @property
    def cp(self) -> int:
        return self.mesh["cp"].size()

    @property
    def dp(self) -> int:
        return self.mesh["dp"].size()

    @property
    def cp_rank(self) -> int:
        return self.mesh.get_local_rank("cp")

    @property
    def dp_rank(self) -> int:
        return self.mesh.get_local_rank("dp")

    @property
    def group(self) -> dist.ProcessGroup:
        return self.mesh["cp"].get_group()


def chunk_config(config: LighthouseConfig, *, cp: int, chunk: int) -> LighthouseConfig:
    """The selection settings of load-balanced chunk ``chunk`` (of ``2*cp``): budget
    ``topk/(2*cp)``, so its tiles are exactly the single-GPU tiles that fall inside it; only
    the sequence's first chunk forces its first window (SPEC §2's rule is about position 0)."""
    return LighthouseConfig(levels=config.levels, pooling=config.pooling,
                            topk=config.topk // (2 * cp), tile=config.tile,
                            force_first_window=config.force_first_window and chunk == 0,
                            combine=config.combine)


def check_context_parallel(*, world: int, cp: int, seq_len: int,
                           lighthouse: LighthouseConfig | None) -> None:
    """Raise a one-line ``LhConvertError`` unless ``cp`` can split this run.

    ``lighthouse``: the kernel settings when some layer runs Lighthouse, None for a dense stage.
    """
    if cp < 1 or world % cp:
        raise LhConvertError(f"--cp {cp} must be >= 1 and divide the {world} processes; "
                             f"choose a divisor of {world}")
    if seq_len % (2 * cp):
        raise LhConvertError(f"sequence length {seq_len} does not split into 2*cp = {2 * cp} "
                             f"equal load-balanced chunks; use a length that is a multiple of {2 * cp}")
    if lighthouse is None:
        return
    if lighthouse.combine != "sum":
        # A chunk's spilled outputs are added to the next chunk's first positions; a mean or
        # the finest contributor would need the other chunk's counts too.
        raise LhConvertError(f"combine = {lighthouse.combine!r} does not run under context "
                             f"parallelism yet; use combine = \"sum\" with --cp, or one process")
    problem = lighthouse.length_problem(seq_len)
    if problem is not None:
        raise LhConvertError(f"Lighthouse cannot run at this length ({problem}); under context "
                             f"parallelism it cannot fall back to dense SDPA")
    if lighthouse.num_tiles % (2 * cp):
        raise LhConvertError(f"topk/tile = {lighthouse.num_tiles} selection tiles do not split over "
                             f"the 2*cp = {2 * cp} chunks; use topk a multiple of "
                             f"{2 * cp * lighthouse.tile} or a smaller --cp")
    chunk_problem = chunk_config(lighthouse, cp=cp, chunk=0).length_problem(seq_len // (2 * cp))
    if chunk_problem is not None:
        raise LhConvertError(f"each of the {2 * cp} chunks is too short for Lighthouse: {chunk_problem}")


def plan_context_parallel(*, cp: int, seq_len: int, model_config, device_type: str
                          ) -> ContextParallelPlan:
    """Check the settings, then build the ("dp", "cp") mesh over the whole process group.

    ``model_config``: the loaded model's config; its ``lighthouse`` settings say whether any
    layer runs Lighthouse (a dense stage lists every layer as dense).
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    settings = settings_of(model_config)
    dense = settings.dense_layer_set(model_config.num_hidden_layers)
    lighthouse = settings.kernel if len(dense) < model_config.num_hidden_layers else None
    check_context_parallel(world=world, cp=cp, seq_len=seq_len, lighthouse=lighthouse)
    mesh = init_device_mesh(device_type, (world // cp, cp), mesh_dim_names=("dp", "cp"))
    return ContextParallelPlan(mesh=mesh)


# ---- load-balanced sharding of batches ----------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One rank's share of a batch, all ``[B, 2*N/(2*cp)]``: chunks ``r`` then ``2*cp-1-r``."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # next token, shifted before sharding; IGNORE at the last position
    position_ids: torch.Tensor  # global positions, so RoPE is the single-GPU RoPE


def _balancer(seq_len: int, plan: ContextParallelPlan, device: torch.device) -> _HeadTailLoadBalancer:
    return _HeadTailLoadBalancer(seq_len, plan.cp, device)


def shard_batch(input_ids: torch.Tensor, *, plan: ContextParallelPlan) -> Shard:
    """This rank's load-balanced shard of ``input_ids [B, N]`` (the whole batch on every cp rank)."""
    batch, seq_len = input_ids.shape
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    positions = torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len).contiguous()
    ids, labels, positions = _context_parallel_shard(
        plan.mesh["cp"], [input_ids, labels, positions], [1, 1, 1],
        load_balancer=_balancer(seq_len, plan, input_ids.device))
    return Shard(input_ids=ids, labels=labels, position_ids=positions)


def unshard(tensor: torch.Tensor, *, plan: ContextParallelPlan, seq_dim: int = 1) -> torch.Tensor:
    """The whole sequence back from every rank's shard (in global order); no gradient."""
    seq_len = tensor.shape[seq_dim] * plan.cp
    return context_parallel_unshard(plan.mesh["cp"], [tensor], [seq_dim],
                                    load_balancer=_balancer(seq_len, plan, tensor.device))[0]


# ---- ring attention ------------------------------------------------------------------------------


def _ring_ops(device_type: str) -> tuple:
    """SDPA forward and backward ops for PyTorch's templated ring attention, with their extras.

    PyTorch's CP dispatcher maps only the CUDA ops; on CPU, SDPA runs
    ``_scaled_dot_product_flash_attention_for_cpu``, which the same ring drives as well.
    """
    if device_type == "cpu":
        return (aten._scaled_dot_product_flash_attention_for_cpu.default,
                aten._scaled_dot_product_flash_attention_for_cpu_backward.default, {})
    return (aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_flash_attention_backward.default, {"return_debug_mask": False})


class _RingAttention(torch.autograd.Function):
    """Load-balanced causal ring attention: PyTorch's ``_templated_ring_attention`` forward and
    ``_templated_ring_attention_backward``, as the CP SDPA handler runs them."""

    @staticmethod
    def forward(ctx, query, key, value, group: dist.ProcessGroup, scale: float | None):
        forward_op, _, extra = _ring_ops(query.device.type)
        _cp_options.enable_load_balance = True  # chunks r and 2*cp-1-r per rank
        out, logsumexp, *rest = _templated_ring_attention(
            group, _SEQ_DIM, forward_op, query, key, value, is_causal=True, dropout_p=0.0,
            scale=scale, **extra)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        ctx.group, ctx.scale, ctx.rest = group, scale, rest
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, logsumexp = ctx.saved_tensors
        _, backward_op, _ = _ring_ops(query.device.type)
        extra = {}
        if ctx.rest:  # CUDA flash: sequence info and RNG state, as its autograd formula passes them
            cum_q, cum_k, max_q, max_k, philox_seed, philox_offset, _ = ctx.rest
            extra = dict(cum_seq_q=cum_q, cum_seq_k=cum_k, max_q=max_q, max_k=max_k,
                         philox_seed=philox_seed, philox_offset=philox_offset)
        _cp_options.enable_load_balance = True
        grad_q, grad_k, grad_v, *_ = _templated_ring_attention_backward(
            ctx.group, _SEQ_DIM, backward_op, grad_out=grad_out.contiguous(),
            grad_out_name="grad_out", query=query, key=key, value=value, out=out,
            logsumexp=logsumexp, is_causal=True, dropout_p=0.0, scale=ctx.scale, **extra)
        return grad_q, grad_k, grad_v, None, None


def ring_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                   group: dist.ProcessGroup, scale: float | None = None) -> torch.Tensor:
    """Causal attention over a load-balanced sharded sequence.

    query ``[B, H, 2c, D]``, key/value ``[B, G, 2c, D]``: this rank's chunks ``r`` and
    ``2W-1-r`` of ``2W`` (W = group size). Returns ``[B, H, 2c, D]``. The CPU op takes GQA
    natively; the CUDA flash op (bf16/fp16 only) gets the KV heads repeated (autograd sums
    their gradients).
    """
    if query.device.type != "cpu" and query.dtype not in (torch.bfloat16, torch.float16):
        raise LhConvertError(f"context parallelism on {query.device.type} runs the flash "
                             f"attention op, which needs bf16 or fp16 (got {query.dtype}); "
                             f"set precision = \"bf16\"")
    if query.device.type != "cpu" and query.shape[1] != key.shape[1]:
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    return _RingAttention.apply(query, key.contiguous(), value.contiguous(), group, scale)


# ---- Lighthouse under CP -------------------------------------------------------------------------


def _owner(chunk: int, cp: int) -> tuple[int, int]:
    """(rank, half) holding load-balanced chunk ``chunk``."""
    return (chunk, 0) if chunk < cp else (2 * cp - 1 - chunk, 1)


def _pass_spills_on(spills: list[torch.Tensor], *, chunks: tuple[int, int], cp: int,
                    group: dist.ProcessGroup) -> torch.Tensor:
    """Send each half's spill to the rank holding the next chunk; returns ``[2, ...]``, what
    arrived for this rank's head and tail halves (zeros for chunk 0).

    One autograd ``all_to_all_single`` with a ``[cp, 2]`` grid of slots, mostly zeros: the
    spills are ``p^(L-1) - 1`` positions, so the grid stays tiny.
    """
    slots = [[torch.zeros_like(spills[0]) for _ in range(2)] for _ in range(cp)]
    for spill, chunk in zip(spills, chunks):
        if chunk + 1 < 2 * cp:
            rank, half = _owner(chunk + 1, cp)
            slots[rank][half] = spill
    grid = torch.stack([torch.stack(pair) for pair in slots])  # [cp, 2, B, H, spill, D]
    arrived = funcol.all_to_all_single_autograd(grid.flatten(0, 1), None, None, group)
    return funcol.wait_tensor(arrived).unflatten(0, (cp, 2)).sum(dim=0)


def _extend_index(index: torch.Tensor, *, n: int, extra: int, config: LighthouseConfig) -> torch.Tensor:
    """Flat pyramid indices of a length-``n`` sequence, re-addressed into the pyramid of
    ``n + extra`` tokens (same entries), so scatter-back keeps what spills past ``n``."""
    old = level_offsets(n, config.levels, config.pooling)
    new = level_offsets(n + extra, config.levels, config.pooling)
    shift = torch.zeros_like(index)
    for level in range(1, config.levels):
        step = (new[level] - old[level]) - (new[level - 1] - old[level - 1])
        shift += (index >= old[level]).to(index.dtype) * step
    return index + shift


def lighthouse_context_parallel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                                config: LighthouseConfig, cp: int, cp_rank: int,
                                group: dist.ProcessGroup, scale: float | None = None) -> torch.Tensor:
    """Lighthouse attention of one rank's load-balanced shard; ``config`` is the global setting.

    query ``[B, H, 2c, D]``, key/value ``[B, G, 2c, D]`` (chunks ``cp_rank``, ``2*cp-1-cp_rank``).
    Returns ``[B, H, 2c, D]``. Needs ``check_context_parallel`` to have passed.
    """
    chunk_len = query.shape[_SEQ_DIM] // 2
    chunks = (cp_rank, 2 * cp - 1 - cp_rank)
    window = config.coarsest_window
    gathered, selections = [], []
    for half, chunk in enumerate(chunks):
        settings = chunk_config(config, cp=cp, chunk=chunk)
        q, k, v = (t.narrow(_SEQ_DIM, half * chunk_len, chunk_len) for t in (query, key, value))
        index = select_indices(q, k, config=settings)
        gathered.append([gather_pool(t, index, config=settings) for t in (q, k, v)])
        selections.append((index, settings))
    # Chunk c's entries all end inside chunk c: in chunk order they are the global gathered order.
    attended = ring_attention(*(torch.cat(parts, dim=_SEQ_DIM) for parts in zip(*gathered)),
                              group=group, scale=scale).chunk(2, dim=_SEQ_DIM)
    outputs, spills = [], []
    for (index, settings), y in zip(selections, attended):
        extended = _extend_index(index, n=chunk_len, extra=window, config=settings)
        out = scatter_back(y, extended, n=chunk_len + window, config=settings)
        outputs.append(out[:, :, :chunk_len])
        spills.append(out[:, :, chunk_len:chunk_len + window - 1])  # reaches <= p^(L-1) - 1 past
    arrived = _pass_spills_on(spills, chunks=chunks, cp=cp, group=group)
    outputs = [torch.cat([out[:, :, :window - 1] + spill, out[:, :, window - 1:]], dim=_SEQ_DIM)
               for out, spill in zip(outputs, arrived)]
    return torch.cat(outputs, dim=_SEQ_DIM)


# ---- the transformers attention function ---------------------------------------------------------

_active: ContextParallelPlan | None = None


def context_parallel_attention_forward(module: torch.nn.Module, query: torch.Tensor,
                                       key: torch.Tensor, value: torch.Tensor,
                                       attention_mask: torch.Tensor | None,
                                       scaling: float | None = None, dropout: float = 0.0,
                                       **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function on a CP shard: ring attention in dense layers,
    ``lighthouse_context_parallel`` elsewhere; returns ``([B, n, H, D], None)``.

    It has no mask function, so transformers builds no mask from the shard's (non-contiguous)
    position ids; causality comes from the ring. There is no local dense fallback: a shard alone
    is not a sequence.
    """
    plan = _active
    if plan is None:
        raise LhConvertError("attn_implementation='lighthouse-cp' runs only after "
                             "enable_context_parallel(model, plan)")
    if attention_mask is not None or dropout or kwargs.get("use_cache") \
            or kwargs.get("sliding_window"):
        raise LhConvertError("context parallelism supports full causal training attention only: "
                             "no attention mask, sliding window, dropout or KV cache")
    settings = settings_of(module.config)
    layer = module.layer_idx
    if layer in settings.dense_layer_set(module.config.num_hidden_layers):
        CALLS.add(layer, DENSE_LAYER)
        out = ring_attention(query, key, value, group=plan.group, scale=scaling)
    else:
        CALLS.add(layer, LIGHTHOUSE)
        out = lighthouse_context_parallel(query, key, value, config=settings.kernel, cp=plan.cp,
                                          cp_rank=plan.cp_rank, group=plan.group, scale=scaling)
    return out.transpose(1, 2), None


AttentionInterface.register(CP_ATTENTION_NAME, context_parallel_attention_forward)


def enable_context_parallel(model: torch.nn.Module, *, plan: ContextParallelPlan) -> None:
    """Switch ``model`` (a transformers causal LM) to CP attention through transformers' own
    ``set_attn_implementation``; from then on it must be fed ``shard_batch`` shards."""
    global _active
    _active = plan
    model.set_attn_implementation(CP_ATTENTION_NAME)


def context_parallel_loss(model: torch.nn.Module, *, cp: int, seq_len: int, chunk: int,
                          device_type: str) -> ContextParallelLoss:
    """Set ``model`` up for CP (the checked plan and mesh, CP attention) and return its loss
    module; its ``plan`` says this rank's data-parallel replica (``dp_rank`` of ``dp``)."""
    plan = plan_context_parallel(cp=cp, seq_len=seq_len, model_config=model.config,
                                 device_type=device_type)
    enable_context_parallel(model, plan=plan)
    return ContextParallelLoss(model, chunk=chunk, plan=plan)


# ---- the loss ------------------------------------------------------------------------------------


def _global_mean(total: torch.Tensor, count: torch.Tensor, *, plan: ContextParallelPlan
                 ) -> torch.Tensor:
    """The whole sequence's mean loss as the value; ``cp * local sum / global count`` as the
    gradient, so averaging gradients over all ``dp*cp`` ranks (FSDP2) gives the dp mean of the
    exact per-sequence gradient."""
    sums = torch.stack([total.detach(), count.to(total.dtype)])
    dist.all_reduce(sums, group=plan.group)
    scaled = total * plan.cp / sums[1]
    return scaled + (sums[0] / sums[1] - scaled).detach()


class ContextParallelLoss(torch.nn.Module):
    """``CausalLMLoss`` under CP: takes the whole batch ``[B, N]`` (the same on every cp rank),
    runs the model on this rank's shard and returns the exact whole-sequence mean loss (and
    the late-position loss), with gradients scaled for FSDP2's average over ``dp*cp`` ranks."""

    def __init__(self, lm: torch.nn.Module, *, chunk: int, plan: ContextParallelPlan) -> None:
        super().__init__()
        self.lm = lm
        self.chunk = chunk
        self.plan = plan

    def forward(self, input_ids: torch.Tensor, late_fraction: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shard = shard_batch(input_ids, plan=self.plan)
        hidden = self.lm.model(input_ids=shard.input_ids, position_ids=shard.position_ids,
                               use_cache=False).last_hidden_state
        head = self.lm.get_output_embeddings()
        counted = shard.labels != IGNORE
        total = linear_cross_entropy_sum(hidden, head, shard.labels, chunk=self.chunk)
        loss = _global_mean(total, counted.sum(), plan=self.plan)
        late = None
        if late_fraction is not None:
            first = int((input_ids.shape[1] - 1) * (1 - late_fraction))
            late_labels = shard.labels.masked_fill(shard.position_ids < first, IGNORE)
            with torch.no_grad():
                late_total = linear_cross_entropy_sum(hidden, head, late_labels, chunk=self.chunk)
                late = _global_mean(late_total, (late_labels != IGNORE).sum(), plan=self.plan)
        return loss, late
