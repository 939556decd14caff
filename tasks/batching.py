"""Batches of similar lengths, so that padded batches carry little padding.

Training draws ``BucketBatchSampler``'s batches (for equal-length splits it is a plain
seeded shuffle; the order depends on the seed and the epoch alone, so loading batches in
worker processes changes nothing): each epoch the samples are shuffled (seeded
by the run's seed and the epoch), cut into pools of ``pool_batches`` batches, each pool is
sorted by length and cut into batches, and the batches are shuffled. Every sample is seen
once per epoch, the order changes from epoch to epoch, and the same seed gives the same
order. Evaluation uses ``sorted_batches``: the split in order of length, every sample kept.

A run over several processes (ranks) shards both. Training: each rank takes every
``world``-th batch of the same sequence, the first batches repeated where needed so that all
ranks have as many (they step together). Evaluation: each rank takes every ``world``-th
sample of the split, so that the ranks together score each sample exactly once, with no
padding or repetition (the summed statistics must be the split's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int, pool_batches: int = 50,
                 rank: int = 0, world: int = 1) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size={batch_size} and pool_batches={pool_batches} must be >= 1")
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank} is invalid for world={world}")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.seed, self.pool = batch_size, seed, batch_size * pool_batches
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch; without it the epochs still differ."""
        self.epoch = epoch

    def __len__(self) -> int:
        n_batches = -(-len(self.lengths) // self.batch_size)
        return -(-n_batches // self.world)  # this rank's share, every rank the same

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=gen)
        batches: list[torch.Tensor] = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches.extend(pool.split(self.batch_size))
        order = torch.randperm(len(batches), generator=gen).tolist()
        shared = [order[i % len(order)] for i in range(len(self) * self.world)]  # equal shares: repeat the first
        for i in shared[self.rank :: self.world]:
            yield batches[i].tolist()


def sorted_batches(lengths: torch.Tensor, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Every index once, in order of length (ties in index order), cut into batches; of
    several ranks', rank ``rank``'s share: every ``world``-th index of that order."""
    order = torch.argsort(torch.as_tensor(lengths), stable=True)[rank::world]
    return [b.tolist() for b in order.split(batch_size)]


def eval_loader(split: Any, batch_size: int, rank: int = 0, world: int = 1, **speed: Any) -> DataLoader:
    """Batches of an evaluation split: every sample once, never shuffled, the last batch kept;
    a split of variable-length samples (one with ``lengths``) batched by length. Of several
    ranks', rank ``rank``'s disjoint share (the shares together hold every sample once)."""
    if len(split) < world:
        raise ValueError(f"an evaluation split of {len(split)} samples cannot be shared by {world} processes "
                         f"(train.devices={world})")
    lengths = getattr(split, "lengths", None)
    if lengths is not None:
        batches = sorted_batches(lengths, batch_size, rank, world)
        return DataLoader(split, batch_sampler=batches, collate_fn=split.collate, **speed)
    if world > 1:
        batches = [b.tolist() for b in torch.arange(rank, len(split), world).split(batch_size)]
        return DataLoader(split, batch_sampler=batches, collate_fn=split.collate, **speed)
    return DataLoader(split, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=split.collate, **speed)
