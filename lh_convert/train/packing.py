"""Packing a token stream into fixed-length samples, and the order batches are drawn in.

`batch_iterator` replays a seeded, epoch-wise shuffled order from any step without touching
the skipped data, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from ..util.errors import LhConvertError


class PackedSequences:
    """Fixed-length training samples cut from a token stream: sample i is
    `tokens[i * seq_len : (i + 1) * seq_len]`; the remainder shorter than `seq_len` is dropped.
    `name` ("training", "validation") says which stream it is in the error for too little data.
    """

    def __init__(self, tokens: np.ndarray, *, seq_len: int, name: str = "training") -> None:
        if seq_len < 1:
            raise LhConvertError(f"seq_len={seq_len} is invalid; pass a positive sequence length")
        self.tokens, self.seq_len = tokens, seq_len
        self._length = len(tokens) // seq_len
        if self._length == 0:
            raise LhConvertError(
                f"the {name} data holds {len(tokens):,} tokens, fewer than one sequence of "
                f"{seq_len:,}; add data or lower --ctx"
            )

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> torch.Tensor:
        """Sample `index` as int64 token ids, shape [seq_len]."""
        if not -self._length <= index < self._length:
            raise IndexError(f"sample {index} out of range for {self._length} samples")
        start = (index % self._length) * self.seq_len
        return torch.from_numpy(np.asarray(self.tokens[start : start + self.seq_len], np.int64))


def batch_iterator(
    samples: PackedSequences,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[torch.Tensor]:
    """This rank's part of each global batch, forever, in a seeded epoch-wise shuffled order.

    The epochs' permutations, laid end to end, form one endless order of sample indices;
    global batch s is positions [s * G, (s + 1) * G) of it, with G = batch_size * world_size,
    so batches run across epoch boundaries and no sample is dropped. Rank r gets rows
    [r * batch_size, (r + 1) * batch_size) of each global batch. Starting at `start_step`
    computes one permutation, not the skipped batches, and yields exactly what a fresh
    iterator yields from its `start_step`-th batch on.

    Yields:
        int64 token ids [batch_size, seq_len].

    Raises:
        LhConvertError: at the call, for a batch_size or world_size below 1, a negative
            start_step, or a rank outside 0..world_size-1.
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("world_size", world_size, 1),
        ("start_step", start_step, 0),
    ):
        if value < low:
            raise LhConvertError(f"{name}={value} is invalid; it must be at least {low}")
    if not 0 <= rank < world_size:
        raise LhConvertError(
            f"rank={rank} is invalid for world_size={world_size}; use 0..{world_size - 1}"
        )
    return _batches(
        samples,
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        rank=rank,
        world_size=world_size,
    )


def _batches(
    samples: PackedSequences,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    rank: int,
    world_size: int,
) -> Iterator[torch.Tensor]:
    count = len(samples)
    order_epoch, order = -1, np.empty(0, np.int64)
    for step in itertools.count(start_step):
        first = (step * world_size + rank) * batch_size
        rows = []
        for position in range(first, first + batch_size):
            epoch, offset = divmod(position, count)
            if epoch != order_epoch:
                order_epoch, order = epoch, _epoch_order(seed, epoch, count)
            rows.append(samples[int(order[offset])])
        yield torch.stack(rows)


def _epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The permutation of `count` samples for `epoch`; depends on (seed, epoch) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(count)
