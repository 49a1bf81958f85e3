"""The datamodule every project's data goes through: a source, a loader kind, a batch transform.

- **Source**: what is missing (`expected` files under `location`, or an own `missing()`), how to
  fetch it (`fetch`, which only `prepare_data` runs: once per node, before any `setup`), and how
  to read it into datasets: `read()`, or `generate()` for the learnable synthetic stand-in
  (`synthetic=True`), each returning `Splits(train, val, test)`. A val or test set the source
  does not have is split off train with a seed (`val_size`, `test_size`); without either, the
  validation split is tested.
- **Loader kind**, `loader`, one of the class's `loaders`: "device" holds in-memory tensors on the
  training device and serves them with `TensorLoader` (no workers, no copies); "dataloader" is a
  torch DataLoader with `num_workers`; text adds "bucket" (batches of similar lengths); "full"
  serves the whole split as one batch per epoch, held on the device (full-batch training, which
  has nothing to split over DDP processes).
- **Batch transform**: `on_after_batch_transfer`, on the training device (normalization,
  augmentation).
- **Spec**: `spec()`, what a model may know about the data (`DataSpec`).

`batch_size` is global: under DDP with N processes each one loads `batch_size / N`.
"""

import warnings
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from common.data.files import fetch_or_explain
from common.data.loaders import FullBatchLoader, TensorLoader, UnpaddedDistributedSampler
from common.data.spec import DataSpec
from common.errors import UserError

# The test split draws its own permutation (seed + this), independent of the validation split's.
TEST_SEED_OFFSET = 2


class Splits(NamedTuple):
    """What a source reads: a training pool, and a validation and test set when it has them."""

    train: Dataset
    val: Dataset | None = None
    test: Dataset | None = None


def subset(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The samples at `indices` (CPU int64): in-memory datasets are indexed once (they keep
    their tensors, so `loader=device` still applies), others wrapped in a Subset."""
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def split(dataset: Dataset, size: float | int, seed: int, key: str = "data.val_size"):
    """(rest, part): a seeded split of `dataset`; `size` (the config key `key`) is a fraction
    (< 1) or a count of samples for `part`."""
    n = len(dataset)
    k = int(round(size * n)) if size < 1 else int(size)
    if not 0 <= k < n:
        raise UserError(f"{key}={size} leaves no training data out of {n} samples")
    if size > 0 and k == 0:
        raise UserError(f"{key}={size} of {n} samples rounds to none: hold out a larger share")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return subset(dataset, order[k:]), subset(dataset, order[:k])


def to_device(dataset: Dataset, device: torch.device) -> Dataset:
    """The in-memory dataset with its tensors on `device` (the same object if already there)."""
    if not isinstance(dataset, TensorDataset):
        return dataset.to(device)
    if dataset.tensors[0].device == device:
        return dataset
    return TensorDataset(*(t.to(device) for t in dataset.tensors))


def full_batch_refusal(name: str, processes: int) -> UserError:
    """Why `loader=full` runs in one process: each would train on the same whole split."""
    return UserError(
        f"{name} trains full-batch (data.loader=full: the whole split in one step), which has "
        f"nothing to split over {processes} processes: use trainer.devices=1"
    )


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of data can stay on `device` and leave most of it to the model."""
    if device.type != "cuda":
        return True  # CPU: the tensors are in RAM already; MPS and others share host memory
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free // 4


class DataModule(L.LightningDataModule):
    """Seeded splits, the loader kinds, and the global batch size made per-device.

    A source overrides `read` (and `generate` when it has a synthetic stand-in), names its files
    in `expected` (under `location`) and downloads them in `fetch`; `prepare_splits` fits what
    the training split teaches (normalization statistics, a tokenizer); `spec` says what a model
    may know. Everything else is here.
    """

    name = "data"  # how messages call it
    loaders: tuple[str, ...] = ("device", "dataloader")  # the loader kinds it can serve
    expected: tuple[str, ...] = ()  # files (folders end in /) the source needs under `location`
    alternative = "train on synthetic data with data.synthetic=true"  # said when files are missing
    collate_fn = None  # the DataLoader's; variable-size samples (boxes, texts) set their own
    class_names: list[str] | None = None

    def __init__(
        self,
        data_dir: str | None = None,  # where the source's files live (None: it reads none)
        batch_size: int = 128,
        val_size: float | int = 0.1,
        test_size: float | int = 0.0,
        loader: str | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        synthetic: bool = False,
        download: bool = True,
        seed: int = 42,
        drop_last: bool = False,
    ):
        super().__init__()
        loader = loader or self.loaders[0]
        if loader not in self.loaders:
            raise UserError(
                f"data.loader={loader!r} is not one of {', '.join(self.loaders)} "
                f"(the loader kinds of {type(self).__name__})"
            )
        if batch_size < 1:
            raise UserError(f"data.batch_size must be positive, got {batch_size}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_size, self.test_size = val_size, test_size
        self.loader = loader
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.synthetic = synthetic
        self.download = download
        self.seed = seed
        self.drop_last = drop_last  # training batches: no smaller last batch
        self.batch_size_per_device = batch_size
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.adopted = DataSpec()  # a checkpoint's spec, when testing or resuming it (`adopt`)

    # --- the source -----------------------------------------------------------------------------

    @property
    def location(self) -> Path:
        """The folder the source's files live in."""
        return Path(self.data_dir or ".")

    def missing(self) -> list[str]:
        """What of `expected` is absent (nothing, for data that needs no files)."""
        return [f for f in self.expected if not (self.location / f).exists()]

    def fetch(self) -> None:
        """Download the files `expected` lists."""
        raise NotImplementedError(f"{self.name} cannot be downloaded: put the files there")

    def read(self) -> Splits:
        """The datasets, from the files."""
        raise NotImplementedError

    def generate(self) -> Splits:
        """The learnable synthetic stand-in (`synthetic=True`), with the real shapes and dtypes."""
        raise UserError(f"{self.name} has no synthetic version: leave data.synthetic out")

    def _missing_message(self) -> tuple[str, str]:
        what = f"{self.name} files missing in {self.location} (expected {', '.join(self.expected)})"
        return what, f"Put the files there, or {self.alternative}"

    def prepare_data(self) -> None:
        """Download what `missing()` lists (one process per node), or raise one readable error."""
        if self.synthetic or not self.missing():
            return
        fetch_or_explain(self.fetch, self.missing, self.download, *self._missing_message())

    def load(self) -> Splits:
        """`generate()` or `read()`; missing or unreadable files are one UserError."""
        if self.synthetic:
            return self._checked(self.generate())
        if self.missing():  # `prepare_data` did not run here, or did not bring them
            what, fix = self._missing_message()
            raise UserError(f"{what}. {fix}")
        try:
            splits = self.read()
        except UserError:
            raise
        except Exception as err:
            downloaded = type(self).fetch is not DataModule.fetch
            fix = "Delete it to download again" if downloaded else "Fix or replace the files"
            raise UserError(
                f"cannot read {self.name} from {self.location} ({type(err).__name__}: {err}). "
                f"{fix}, or {self.alternative}"
            ) from err
        return self._checked(splits)

    def _checked(self, splits: Splits) -> Splits:
        if not isinstance(splits, Splits):  # a bare (pool, test) would test on validation data
            raise TypeError(f"{type(self).__name__}'s source must return Splits(train, val, test)")
        return splits

    # --- splits -----------------------------------------------------------------------------------

    def prepare_splits(self, train: Dataset, val: Dataset, test: Dataset) -> tuple:
        """Fit what the training split teaches and return the three datasets to serve.
        `test` may be `val` itself (no test set: the validation split is tested)."""
        return train, val, test

    def split_batch_over_processes(self) -> None:
        """`batch_size` is global: each of the trainer's processes loads an equal share."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.loader == "full" and world > 1:
            raise full_batch_refusal(self.name, world)
        if self.batch_size % world:
            raise UserError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly "
                f"over {world} processes"
            )
        self.batch_size_per_device = self.batch_size // world

    def setup(self, stage: str | None = None) -> None:
        self.split_batch_over_processes()
        if self.train_set is None:
            train, val, test = self.load()
            if test is None and self.test_size:
                seed = self.seed + TEST_SEED_OFFSET
                train, test = split(train, self.test_size, seed, "data.test_size")
            if val is None:
                train, val = split(train, self.val_size, self.seed)
            if not len(val) and stage in ("fit", None):
                raise UserError(
                    f"{self.name} has no validation samples (data.val_size={self.val_size}): the "
                    "checkpoint and early stopping watch a validation metric"
                )
            splits = self.prepare_splits(train, val, val if test is None else test)
            self.train_set, self.val_set, self.test_set = splits
        if self.loader in ("device", "full") and self.trainer is not None:
            self._move_to(self.trainer.strategy.root_device)

    def spec(self) -> DataSpec:
        """What a model may know about this data (after `setup`)."""
        return DataSpec(class_names=self.class_names)

    def adopt(self, spec: DataSpec) -> None:
        """Before `setup`: keep what a trained model's spec fixed, so that sources that derive
        such things (a tokenizer, normalization statistics) in `prepare_splits` take
        `self.adopted`'s instead, and testing or resuming a checkpoint feeds the model the
        inputs it learned from."""
        self.adopted = spec

    # --- loaders ----------------------------------------------------------------------------------

    def _resident(self, dataset: Dataset) -> Dataset:
        if not hasattr(dataset, "tensors"):
            raise UserError(
                f"data.loader={self.loader} needs in-memory tensors, and {type(self).__name__} reads "
                "samples one by one: use data.loader=dataloader"
            )
        return dataset

    def _move_to(self, device: torch.device) -> None:
        sets = [self._resident(s) for s in (self.train_set, self.val_set, self.test_set)]
        shared = self.test_set is self.val_set  # no test set: one copy on the device, not two
        unique = sets[:2] if shared else sets
        tensors = {id(t): t for s in unique for t in s.tensors}  # splits may share tensors
        nbytes = sum(t.nbytes for t in tensors.values())
        if not fits_on(device, nbytes):
            warnings.warn(
                f"the dataset ({nbytes / 2**30:.1f} GiB) does not fit comfortably in {device} "
                "memory; batches are copied from host memory instead",
                stacklevel=2,
            )
            return
        sets = [to_device(s, device) for s in unique]
        self.train_set, self.val_set = sets[:2]
        self.test_set = self.val_set if shared else sets[2]

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def make_loader(self, dataset: Dataset, train: bool):
        """A loader of kind `self.loader` over this process's share of `dataset`."""
        if self.loader == "full":
            return FullBatchLoader(self._resident(dataset))
        if self.loader != "device":
            return self.dataloader(dataset, train)
        rank, world = self._rank_world()
        return TensorLoader(
            *self._resident(dataset).tensors,
            batch_size=self.batch_size_per_device,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            drop_last=train and self.drop_last,
            make_batch=getattr(dataset, "batch", None),
        )

    def dataloader(self, dataset: Dataset, train: bool, **kwargs) -> DataLoader:
        """A torch DataLoader; `kwargs` may bring a `batch_sampler` in place of the batching."""
        rank, world = self._rank_world()
        if "batch_sampler" not in kwargs:
            # Training shards come from Lightning's DistributedSampler; evaluation shards must
            # not repeat samples, or metrics under DDP would differ from a single process.
            sampler = UnpaddedDistributedSampler(dataset, world, rank) if world > 1 else None
            kwargs.update(
                batch_size=self.batch_size_per_device,
                shuffle=train,
                sampler=None if train else sampler,
                drop_last=train and self.drop_last,
            )
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
            **kwargs,
        )

    def train_dataloader(self):
        return self.make_loader(self.train_set, train=True)

    def val_dataloader(self):
        return self.make_loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.make_loader(self.test_set, train=False)
