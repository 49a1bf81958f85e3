"""The loader kinds' machinery: batches from tensors held on the device, unpadded evaluation
shards, length-bucketed batches, and whole splits as one batch (full-batch training).

A DataLoader over small images pays per sample: Python indexing, a PIL transform, collate, then
a host-to-device copy. When the whole dataset is a few uint8 tensors (CIFAR-10 is 150 MB), it can
live in accelerator memory (or RAM on CPU): one fancy-index per batch does the same work there,
with no worker processes and no copies, and augmentation runs batch-wise on the device too.
"""

from collections.abc import Callable

import torch
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, RandomSampler


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous evaluation shard of n samples: no padding, no repeats."""
    return rank * n // world_size, (rank + 1) * n // world_size


class TensorLoader:
    """Iterate over `tensors` (same first dimension) in batches, optionally shuffled.

    Seeded: epoch `e` uses the permutation of `seed + e`, so runs repeat exactly. Under DDP every
    rank draws the same permutation and takes a disjoint shard of it: strided for training (then
    cut to equal length, so all ranks step together), contiguous for evaluation (uneven lengths,
    so every sample is seen exactly once and metrics match a single process).

    A batch is `make_batch(idx, host_idx)`: the batch's indices on the tensors' device and on the
    CPU; by default the tuple `(t[idx] for t in tensors)`. Datasets of variable-size samples
    (boxes per image) pass their own.
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
        make_batch: Callable | None = None,
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
        self.make_batch = make_batch or (lambda idx, host_idx: tuple(t[idx] for t in tensors))
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
        """This rank's sample indices for the epoch, on the CPU."""
        n = len(self.tensors[0])
        if self.shuffle:
            # Drawn on the CPU with its own generator: the same order on every rank and device.
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
            return order[self.rank :: self.world_size][: n // self.world_size]
        return torch.arange(*shard_bounds(n, self.rank, self.world_size))

    def __len__(self) -> int:
        n = len(self.tensors[0])
        if self.shuffle:
            n = n // self.world_size
        else:
            start, stop = shard_bounds(n, self.rank, self.world_size)
            n = stop - start
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        host = self._indices()
        indices = host.to(self.tensors[0].device)  # one small copy per epoch, not per batch
        self.epoch += 1
        stop = len(host) - len(host) % self.batch_size if self.drop_last else len(host)
        for start in range(0, stop, self.batch_size):
            end = start + self.batch_size
            yield self.make_batch(indices[start:end], host[start:end])


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


class EpochRandomSampler(RandomSampler):
    """A random permutation per epoch, drawn from `seed + epoch`: runs repeat exactly.

    Lightning calls `set_epoch` before each epoch (via `batch_sampler.sampler`); used alone, the
    epoch advances after every pass. Being a RandomSampler, Lightning sees the loader as shuffled
    and, under DDP, swaps in a shuffled DistributedSampler of its own (rank's disjoint shard).
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(len(self.data_source), generator=gen).tolist())


class BucketBatchSampler(BatchSampler):
    """Batches of similar lengths, so little of each batch is padding.

    Takes the (shuffled) indices of `sampler`, sorts each chunk of `chunk_batches * batch_size`
    of them by length, cuts the chunk into batches and shuffles the order of the full batches
    (seeded by `seed` and the sampler's epoch); a last, smaller batch comes last. Every index of
    the sampler appears exactly once per epoch. Under DDP the sampler is a DistributedSampler
    (Lightning injects one through the `sampler` argument), so ranks bucket disjoint shards.
    """

    def __init__(
        self,
        sampler,
        batch_size: int,
        drop_last: bool = False,
        lengths: list[int] | None = None,
        chunk_batches: int = 50,
        seed: int = 0,
    ):
        super().__init__(sampler, batch_size, drop_last)
        if lengths is None:
            raise ValueError("BucketBatchSampler needs the samples' lengths")
        self.lengths = list(lengths)
        self.chunk_batches = chunk_batches
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)  # read before the sampler advances it
        indices = list(self.sampler)
        chunk = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(indices), chunk):
            part = sorted(indices[start : start + chunk], key=self.lengths.__getitem__)
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        rest = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        gen = torch.Generator().manual_seed(self.seed + 1_000_003 * (epoch + 1))
        for i in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[i]
        if rest is not None and not self.drop_last:
            yield rest


class FullBatchLoader:
    """One batch per epoch: the whole split (`dataset.whole()`, or all of a TensorDataset's
    tensors). Full-batch gradient descent: every step sees all of the split."""

    batch_sampler = None  # Lightning inspects a loader the way it would a DataLoader's

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        whole = getattr(self.dataset, "whole", None)
        yield whole() if whole is not None else self.dataset.tensors
