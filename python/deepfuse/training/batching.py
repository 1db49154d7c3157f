"""Which samples form each batch of an epoch: a pure function of (seed, epoch), so that a resumed run sees the
same batches as an uninterrupted one, and a distributed run the same global batches as a single process.

Each global batch of ``batch_size * world`` samples is split into ``world`` contiguous parts, one per process:
two processes with batch B see together exactly the samples one process with batch 2B sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

BUCKET_BATCHES = 50  # length bucketing sorts windows of this many batches: little padding, still random


def epoch_order(size: int, seed: int, epoch: int, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The epoch's sample indices: a permutation, or ``size`` weighted draws with replacement."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is not None:
        return torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), size, True, generator=generator)
    return torch.randperm(size, generator=generator)


def global_batches(
    order: torch.Tensor, batch: int, seed: int, epoch: int, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """Split ``order`` into batches; with ``lengths``, batches of similar lengths (bucketed) in random order."""
    indices = order.tolist()
    if lengths is None:
        return [indices[i : i + batch] for i in range(0, len(indices), batch)]
    window = batch * BUCKET_BATCHES
    batches = []
    for start in range(0, len(indices), window):
        chunk = sorted(indices[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class EpochBatches(Sampler[list[int]]):
    """Batch sampler of one epoch for this process, from batch ``skip`` on (resuming within an epoch).

    Distributed: a last global batch too small to give every process a sample is dropped.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        weights: Sequence[float] | None = None,
        lengths: Sequence[int] | None = None,
        skip: int = 0,
    ) -> None:
        order = epoch_order(size, seed, epoch, weights)
        batches = global_batches(order, batch_size * world, seed, epoch, lengths)
        if world > 1:
            batches = [b for b in batches if len(b) >= world]
            batches = [_part(b, rank, world) for b in batches]
        self.batches = batches[skip:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _part(batch: list[int], rank: int, world: int) -> list[int]:
    per = -(-len(batch) // world)
    return batch[rank * per : (rank + 1) * per]


def batches_per_epoch(size: int, batch_size: int, world: int = 1) -> int:
    return -(-size // (batch_size * world))


class ShardBatches(Sampler[list[int]]):
    """Evaluation: the split in order, this process's contiguous shard, in batches."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        per = -(-size // world)
        shard = list(range(rank * per, min(size, (rank + 1) * per)))
        self.batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
