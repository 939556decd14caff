"""Batches of similar lengths, so that padded batches carry little padding.

Training draws ``BucketBatchSampler``'s batches (for equal-length splits it is a plain
seeded shuffle; the order depends on the seed and the epoch alone, so loading batches in
worker processes changes nothing): each epoch the samples are shuffled (seeded
by the run's seed and the epoch), cut into pools of ``pool_batches`` batches, each pool is
sorted by length and cut into batches, and the batches are shuffled. Every sample is seen
once per epoch, the order changes from epoch to epoch, and the same seed gives the same
order. Evaluation uses ``sorted_batches``: the split in order of length, every sample kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int, pool_batches: int = 50) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size={batch_size} and pool_batches={pool_batches} must be >= 1")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.seed, self.pool = batch_size, seed, batch_size * pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch; without it the epochs still differ."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=gen)
        batches: list[torch.Tensor] = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches.extend(pool.split(self.batch_size))
        for i in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[i].tolist()


def sorted_batches(lengths: torch.Tensor, batch_size: int) -> list[list[int]]:
    """Every index once, in order of length (ties in index order), cut into batches."""
    order = torch.argsort(torch.as_tensor(lengths), stable=True)
    return [b.tolist() for b in order.split(batch_size)]


def eval_loader(split: Any, batch_size: int, **speed: Any) -> DataLoader:
    """Batches of an evaluation split: every sample once, never shuffled, the last batch kept;
    a split of variable-length samples (one with ``lengths``) batched by length."""
    lengths = getattr(split, "lengths", None)
    if lengths is not None:
        return DataLoader(split, batch_sampler=sorted_batches(lengths, batch_size), collate_fn=split.collate, **speed)
    return DataLoader(split, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=split.collate, **speed)
