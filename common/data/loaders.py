"""Batches straight from tensors held on the training device.

A DataLoader over small images pays per sample: Python indexing, a PIL transform, collate, then
a host-to-device copy. When the whole dataset is a few uint8 tensors (CIFAR-10 is 150 MB), it can
live in accelerator memory (or RAM on CPU): one fancy-index per batch does the same work there,
with no worker processes and no copies, and augmentation runs batch-wise on the device too
(`common.data.images`).
"""

import torch
from torch.utils.data import Dataset, DistributedSampler


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous evaluation shard of n samples: no padding, no repeats."""
    return rank * n // world_size, (rank + 1) * n // world_size


class TensorLoader:
    """Iterate over `tensors` (same first dimension) in batches, optionally shuffled.

    Seeded: epoch `e` uses the permutation of `seed + e`, so runs repeat exactly. Under DDP every
    rank draws the same permutation and takes a disjoint shard of it: strided for training (then
    cut to equal length, so all ranks step together), contiguous for evaluation (uneven lengths,
    so every sample is seen exactly once and metrics match a single process).
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("all tensors need the same first dimension")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # Lightning calls `loader.sampler.set_epoch(epoch)` before each epoch (resumed runs too) and
    # inspects `batch_sampler` the way it would a DataLoader's.
    batch_sampler = None

    @property
    def sampler(self):
        return self

    def _indices(self) -> torch.Tensor:
        """This rank's sample indices for the epoch, on the tensors' device."""
        n = len(self.tensors[0])
        if self.shuffle:
            # Drawn on the CPU with its own generator: the same order on every rank and device.
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
            order = order[self.rank :: self.world_size][: n // self.world_size]
        else:
            order = torch.arange(*shard_bounds(n, self.rank, self.world_size))
        return order.to(self.tensors[0].device)  # one small copy per epoch, not per batch

    def _num_samples(self) -> int:
        n = len(self.tensors[0])
        if self.shuffle:
            return n // self.world_size
        start, stop = shard_bounds(n, self.rank, self.world_size)
        return stop - start

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        indices = self._indices()
        self.epoch += 1
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        for start in range(0, stop, self.batch_size):
            idx = indices[start : start + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation shards without padding: rank r reads samples [r*n/w, (r+1)*n/w) in order.

    torch's DistributedSampler repeats samples so every rank gets as many, which counts them
    twice in validation and test metrics. Being a DistributedSampler, Lightning keeps it as is.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.start, self.stop = shard_bounds(len(dataset), rank, num_replicas)
        self.num_samples = self.stop - self.start

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples
