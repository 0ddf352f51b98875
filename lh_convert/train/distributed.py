"""The process group: one process, several under ``torchrun``, or one GPU in a group of one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's rank, the number of processes, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the ``torchrun`` process group when there is one (NCCL on GPUs, gloo on CPUs).

    A single GPU gets a one-process NCCL group too, so it trains under FSDP2 like many do:
    its mixed precision keeps float32 master weights but computes with bf16 parameters, so
    the residual stream and every elementwise kernel work on half the bytes that autocast
    over float32 weights moves.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if world > 1:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        elif cuda:
            dist.init_process_group(backend="nccl", store=dist.HashStore(), rank=0, world_size=1)
    return Dist(rank=dist.get_rank() if world > 1 else 0, world=world, device=device)


def barrier(env: Dist) -> None:
    """Wait for every process (nothing to wait for in one process)."""
    if env.world > 1:
        dist.barrier()
