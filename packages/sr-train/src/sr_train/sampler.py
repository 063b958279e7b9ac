"""A seeded, resumable, rank-aware batch sampler: the data order is a pure function of the step.

Epoch ``e`` is the permutation ``randperm(n, generator=seed + e)``; rank ``r`` of ``w`` takes every
``w``-th index starting at ``r`` (padded by wrapping so that all ranks get the same count, as
``DistributedSampler`` does), and its batch ``k`` of the epoch is the ``k``-th run of
``batch_size`` indices (the incomplete tail is dropped). Global step ``s`` (0-based) reads epoch
``s // batches_per_epoch``, batch ``s % batches_per_epoch``. Resuming at step ``s`` therefore
continues the exact sequence, whatever was prefetched before the checkpoint.

Batches are lists of ``(epoch, index)`` pairs; :class:`EpochIndexedDataset` calls the wrapped
dataset's ``set_epoch(epoch)`` (sr-data seeds each item's crop and flips with ``(seed, epoch,
index)``) right before reading ``index``, inside whichever worker loads it, so the pairs seen do
not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class EpochIndexedDataset(Dataset):
    """Wraps a dataset so that items are addressed by ``(epoch, index)`` pairs (see module docstring)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return self.dataset[index]


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields lists of ``(epoch, dataset index)`` pairs, forever, starting at global step ``start_step``.

    Args:
        dataset_len: number of samples ``n`` (>= 1).
        batch_size: samples per batch on this rank.
        seed: base seed of the epoch permutations (the same on every rank).
        rank, world_size: this process's shard.
        start_step: the 0-based step to start from (the number of batches already consumed).
    """

    def __init__(self, dataset_len: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0) -> None:
        if dataset_len < 1:
            raise ValueError("ResumableBatchSampler: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"ResumableBatchSampler: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"ResumableBatchSampler: rank {rank} outside world size {world_size}")
        self.n = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.per_rank = -(-dataset_len // world_size)
        # A dataset smaller than one batch still trains: the rank's shard is repeated to fill a batch.
        self.batches_per_epoch = max(1, self.per_rank // batch_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's index list for ``epoch`` (length ``per_rank``, or one batch if that is longer)."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world_size
        perm = (perm * (-(-total // self.n)))[:total]
        mine = perm[self.rank :: self.world_size]
        if len(mine) < self.batch_size:
            mine = (mine * (-(-self.batch_size // len(mine))))[: self.batch_size]
        return mine

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        """The batch of global step ``step``."""
        epoch, k = divmod(step, self.batches_per_epoch)
        idx = self.epoch_indices(epoch)
        return [(epoch, i) for i in idx[k * self.batch_size : (k + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        epoch, k = divmod(step, self.batches_per_epoch)
        while True:
            idx = self.epoch_indices(epoch)
            for j in range(k, self.batches_per_epoch):
                yield [(epoch, i) for i in idx[j * self.batch_size : (j + 1) * self.batch_size]]
            epoch, k = epoch + 1, 0

    def __len__(self) -> int:  # batches per epoch (the iterator itself never ends)
        return self.batches_per_epoch
