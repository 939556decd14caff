"""Length bucketing: every sample once per epoch, a seeded order, less padding."""

from __future__ import annotations

import torch

from tasks.batching import BucketBatchSampler, sorted_batches
from tasks.registry import PaddedSplit


def lengths(n: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 400, (n,), generator=torch.Generator().manual_seed(seed))


def padding(batches: list[list[int]], lens: torch.Tensor) -> int:
    """Padded positions a batch-wise padding gives: each batch padded to its longest."""
    return sum(int(lens[b].max()) * len(b) - int(lens[b].sum()) for b in batches)


def test_every_sample_once_per_epoch() -> None:
    lens = lengths(1003)
    sampler = BucketBatchSampler(lens, batch_size=32, seed=1)
    for _ in range(3):
        batches = list(sampler)
        seen = sorted(i for b in batches for i in b)
        assert seen == list(range(1003))
        assert len(batches) == len(sampler) == 32  # ceil(1003 / 32)
        assert sum(len(b) < 32 for b in batches) == 1  # one short batch, none dropped


def test_order_is_seeded_and_changes_each_epoch() -> None:
    lens = lengths()
    a, b, c = (BucketBatchSampler(lens, 16, seed=s) for s in (7, 7, 8))
    a_epochs, b_epochs = [list(a) for _ in range(2)], [list(b) for _ in range(2)]
    assert a_epochs == b_epochs  # same seed, same batches in the same order
    assert a_epochs[0] != a_epochs[1]  # but a new order each epoch
    assert list(c) != a_epochs[0]  # another seed, another order


def test_set_epoch_gives_that_epochs_order() -> None:
    lens = lengths()
    first = BucketBatchSampler(lens, 16, seed=3)
    epochs = [list(first) for _ in range(3)]
    again = BucketBatchSampler(lens, 16, seed=3)
    again.set_epoch(2)
    assert list(again) == epochs[2]


def test_batches_carry_far_less_padding_than_random_ones() -> None:
    lens = lengths(4000)
    bucketed = list(BucketBatchSampler(lens, 64, seed=0))
    shuffled = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).split(64)
    random_padding = padding([b.tolist() for b in shuffled], lens)
    assert padding(bucketed, lens) < 0.2 * random_padding


def test_batch_order_is_not_sorted_by_length() -> None:
    lens = lengths(4000)
    longest = [int(lens[b].max()) for b in BucketBatchSampler(lens, 64, seed=0)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_sorted_batches_keep_every_sample_in_length_order() -> None:
    lens = lengths(301)
    batches = sorted_batches(lens, 50)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(301))
    assert [int(lens[i]) for i in flat] == sorted(lens.tolist())
    assert [len(b) for b in batches] == [50] * 6 + [1]


def test_a_padded_split_declares_its_lengths() -> None:
    seqs = [torch.arange(1, n + 1) for n in (3, 1, 5)]
    split = PaddedSplit(seqs, torch.tensor([0, 1, 0]))
    assert split.lengths.tolist() == [3, 1, 5]
    batch = split.__getitems__(sorted_batches(split.lengths, 2)[0])  # the two shortest
    assert batch["x"].shape == (2, 3) and batch["mask"].sum(1).tolist() == [1, 3]
