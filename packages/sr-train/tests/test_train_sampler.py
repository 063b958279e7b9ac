"""The seeded, resumable, rank-aware batch sampler."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sr_train.sampler import EpochIndexedDataset, ResumableBatchSampler


def _take(sampler, k):
    return list(itertools.islice(iter(sampler), k))


@given(n=st.integers(1, 40), batch=st.integers(1, 6), start=st.integers(0, 30), seed=st.integers(0, 5))
def test_resuming_continues_the_same_sequence(n, batch, start, seed):
    full = _take(ResumableBatchSampler(n, batch, seed=seed), start + 5)
    resumed = _take(ResumableBatchSampler(n, batch, seed=seed, start_step=start), 5)
    assert resumed == full[start:]
    assert all(len(b) == batch for b in full)


@given(n=st.integers(2, 50), world=st.integers(1, 4), seed=st.integers(0, 3))
def test_ranks_partition_each_epoch(n, world, seed):
    shards = [ResumableBatchSampler(n, 1, seed=seed, rank=r, world_size=world).epoch_indices(0) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for i in s]
    assert set(seen) == set(range(n))
    if n % world == 0:
        assert sorted(seen) == list(range(n))  # no sample twice when the dataset divides evenly


def test_epochs_are_reshuffled_and_tagged():
    s = ResumableBatchSampler(10, 5, seed=0)
    batches = _take(s, 4)
    assert {e for b in batches[:2] for e, _ in b} == {0} and {e for b in batches[2:] for e, _ in b} == {1}
    assert sorted(i for b in batches[:2] for _, i in b) == list(range(10))
    assert [i for b in batches[:2] for _, i in b] != [i for b in batches[2:] for _, i in b]
    assert s.batch_at(3) == batches[3]


def test_epoch_indexed_dataset_sets_the_epoch_before_reading():
    class DS:
        epoch = -1

        def set_epoch(self, e):
            self.epoch = e

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return (self.epoch, i)

    ds = EpochIndexedDataset(DS())
    assert ds[(4, 2)] == (4, 2) and ds[(0, 1)] == (0, 1) and len(ds) == 3
