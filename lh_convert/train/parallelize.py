"""The one wiring of a model for training, as torchtitan's ``parallelize`` applies it:
activation checkpointing and ``torch.compile`` per decoder layer, the loss module (chunked
LM-head loss, or its context-parallel form), FSDP2, then the optimizer. The training stages and
the throughput benchmark (``bench train``) both call ``parallelize``, so what is timed is what
trains."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .activation_checkpointing import wrap_decoder_layers
from .distributed import Dist
from .loss import CausalLMLoss
from .recipes import TrainSettings


@dataclass
class Parallelized:
    """A model made ready to train.

    ``loss``: the module whose forward ``(input_ids [B, N], late_fraction=None)`` returns
    ``(mean loss, late-position loss or None)``; under CP it takes the whole batch and runs the
    model on this rank's shard. ``data_rank`` of ``data_world``: this process's data-parallel
    replica (under CP the ``cp`` ranks of a replica share its batches). ``sharded``: FSDP2 wraps
    the model (bf16 parameters in its mixed precision); otherwise bf16 runs as autocast.
    ``cp_plan``: the context-parallel mesh, None without CP.
    """

    loss: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_rank: int
    data_world: int
    sharded: bool
    precision: str
    device: torch.device
    cp_plan: object | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where FSDP2's mixed precision does not already compute in bf16."""
        if self.precision == "bf16" and not self.sharded:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def fsdp_shard(wrapper: torch.nn.Module, *, precision: str) -> None:
    """FSDP2: one group per decoder layer, the root (embeddings, norm, head) last."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    for layer in wrapper.lm.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(wrapper, mp_policy=policy)


def parallelize(model: torch.nn.Module, *, train: TrainSettings, env: Dist, seq_len: int,
                fsdp: bool = True) -> Parallelized:
    """Wrap ``model`` (a transformers causal LM, on ``env.device``) for training in place and
    build its optimizer (fused AdamW on GPUs) over the wrapped parameters.

    ``fsdp=False`` keeps the parameters unsharded even in a process group (the benchmark's
    ``--autocast``); FSDP2 otherwise shards whenever a process group exists (``torchrun``, or
    one GPU: ``init_distributed``).
    """
    model.config.use_cache = False
    wrap_decoder_layers(model, checkpointing=train.activation_checkpointing, compile=train.compile)
    data_rank, data_world, cp_plan = env.rank, env.world, None
    if train.cp > 1:  # a (dp, cp) mesh; FSDP2 below still shards over all dp*cp ranks
        # Imported here: it uses PyTorch's private ring-attention modules, which only CP needs.
        from .context_parallel import context_parallel_loss

        wrapper = context_parallel_loss(model, cp=train.cp, seq_len=seq_len,
                                        chunk=train.loss_chunk, device_type=env.device.type)
        cp_plan = wrapper.plan
        data_rank, data_world = cp_plan.dp_rank, cp_plan.dp
    else:
        wrapper = CausalLMLoss(model, chunk=train.loss_chunk, compiled=train.compile)
    sharded = fsdp and dist.is_initialized()
    if sharded:
        fsdp_shard(wrapper, precision=train.precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr,
                                  betas=(train.beta1, train.beta2),
                                  weight_decay=train.weight_decay,
                                  fused=env.device.type == "cuda")
    return Parallelized(loss=wrapper, optimizer=optimizer, data_rank=data_rank,
                        data_world=data_world, sharded=sharded, precision=train.precision,
                        device=env.device, cp_plan=cp_plan)
