"""The base datamodule every project's data goes through."""

import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from common.data.loaders import TensorLoader, UnpaddedDistributedSampler
from common.errors import UserError

LOADERS = ("device", "dataloader")


def to_device(dataset: Dataset, device: torch.device) -> Dataset:
    """The in-memory dataset with its tensors on `device` (the same object if already there)."""
    if not isinstance(dataset, TensorDataset):
        return dataset.to(device)
    if dataset.tensors[0].device == device:
        return dataset
    return TensorDataset(*(t.to(device) for t in dataset.tensors))


def dataset_nbytes(dataset: Dataset) -> int:
    if isinstance(dataset, TensorDataset):
        return sum(t.nbytes for t in dataset.tensors)
    return dataset.nbytes


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of data can stay on `device` and leave most of it to the model."""
    if device.type != "cuda":
        return True  # CPU: the tensors are in RAM already; MPS and others share host memory
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free // 4


def fetch_or_explain(fetch, missing, download: bool, what: str, fix: str) -> None:
    """Run `fetch()` (a download) unless `download` is off; if `missing()` is still true after,
    raise one UserError: `what` is missing (name the folder and files) because of the reason
    found, and `fix` says what to do instead."""
    reason = "data.download=false"
    if download:
        try:
            fetch()
            if not missing():
                return
            reason = "the download did not bring them"
        except Exception as err:  # no network, a mirror down, a disk full: all one message
            # torchvision lists every mirror it tried; the last line says why.
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            reason = f"the download failed ({lines[-1] if lines else type(err).__name__})"
    raise UserError(f"{what} and {reason}. {fix}")


def split(dataset: Dataset, val_size: float | int, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/val split. `val_size` is a fraction (< 1) or a count.

    TensorDatasets stay TensorDatasets (indexed once here), so the fast loader still applies.
    """
    n = len(dataset)
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if not 0 <= n_val < n:
        raise UserError(f"data.val_size={val_size} leaves no training data out of {n} samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[n_val:], order[:n_val]
    if isinstance(dataset, TensorDataset):
        return (
            TensorDataset(*(t[train_idx] for t in dataset.tensors)),
            TensorDataset(*(t[val_idx] for t in dataset.tensors)),
        )
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())


class DataModule(L.LightningDataModule):
    """Seeded train/val/test splits, loaders, and the global batch size made per-device.

    Subclasses implement `load()` -> (train pool, test set) and, when they download, `_missing()`
    (what is absent, empty when all is there), `fetch()` (the download) and `missing_help()`
    ((what is missing, what to do instead) for the error); `prepare_data` runs them. The validation set is split off the train pool with a seeded generator.
    `batch_size` is global: under DDP with N processes each one loads `batch_size / N`.
    `loader="device"` moves in-memory TensorDatasets to the training device once (GPU memory, or
    RAM on CPU) and serves them through `TensorLoader`: no workers, one index op per batch, no
    host-to-device copies. `loader="dataloader"` uses a torch DataLoader with `num_workers`.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        val_size: float | int = 0.1,
        loader: str = "device",
        num_workers: int = 0,
        pin_memory: bool = False,
        synthetic: bool = False,
        seed: int = 42,
    ):
        super().__init__()
        if loader not in LOADERS:
            raise UserError(f"data.loader={loader!r} is not one of {', '.join(LOADERS)}")
        if batch_size < 1:
            raise UserError(f"data.batch_size must be positive, got {batch_size}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_size = val_size
        self.loader = loader
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.synthetic = synthetic
        self.seed = seed
        self.batch_size_per_device = batch_size
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def load(self) -> tuple[Dataset, Dataset | None]:
        """Return (train pool, test set); a None test set means: test on the validation split."""
        raise NotImplementedError

    def _missing(self) -> list[str] | bool:
        """What of the dataset's files is absent (nothing, for data that needs no download)."""
        return []

    def fetch(self) -> None:
        """Download the dataset's files."""
        raise NotImplementedError

    def missing_help(self) -> tuple[str, str]:
        """(what is missing: folder and expected files, what to do instead), for the error."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download what `_missing()` lists (rank 0 only), or raise one readable error."""
        if self.synthetic or not self._missing():
            return
        fetch_or_explain(self.fetch, self._missing, self.download, *self.missing_help())

    def split_batch_over_processes(self) -> None:
        """`batch_size` is global: each of the trainer's processes loads an equal share."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise UserError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly "
                f"over {world} processes"
            )
        self.batch_size_per_device = self.batch_size // world

    def setup(self, stage: str | None = None) -> None:
        self.split_batch_over_processes()
        if self.train_set is None:
            pool, self.test_set = self.load()
            self.train_set, self.val_set = split(pool, self.val_size, self.seed)
            if self.test_set is None:  # no separate test images: the validation split stands in
                self.test_set = self.val_set
        if self.loader == "device" and self.trainer is not None:
            self._move_to(self.trainer.strategy.root_device)

    def resident(self, dataset: Dataset) -> Dataset | None:
        """`dataset` in the form the device loader holds (here a TensorDataset), else None.
        Such a form has `.tensors`, or `.nbytes` and `.to(device)` of its own."""
        return dataset if isinstance(dataset, TensorDataset) else None

    def _move_to(self, device: torch.device) -> None:
        sets = [self.resident(s) for s in (self.train_set, self.val_set, self.test_set)]
        if any(s is None for s in sets):
            raise UserError(
                f"data.loader=device needs in-memory tensors, and {type(self).__name__} reads "
                "samples one by one: use data.loader=dataloader"
            )
        shared = self.test_set is self.val_set  # test_size=0: one copy on the device, not two
        if shared:
            sets[2] = sets[1]
        nbytes = sum(dataset_nbytes(s) for s in sets[: 2 if shared else 3])
        if not fits_on(device, nbytes):
            warnings.warn(
                f"the dataset ({nbytes / 2**30:.1f} GiB) does not fit comfortably in {device} "
                "memory; batches are copied from host memory instead",
                stacklevel=2,
            )
        else:
            sets[:2] = [to_device(s, device) for s in sets[:2]]
            sets[2] = sets[1] if shared else to_device(sets[2], device)
        self.train_set, self.val_set, self.test_set = sets

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return self._loader(self.test_set, train=False)

    # The DataLoader's collate_fn; datasets of variable-size samples (detection) set their own.
    collate_fn = None

    def device_loader(self, dataset: Dataset, train: bool, rank: int, world: int):
        """The loader for `loader="device"`, or None when `dataset` is not in-memory tensors."""
        if not isinstance(dataset, TensorDataset):
            return None
        return TensorLoader(
            *dataset.tensors,
            batch_size=self.batch_size_per_device,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def _loader(self, dataset: Dataset, train: bool):
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        if self.loader == "device":
            loader = self.device_loader(dataset, train, rank, world)
            if loader is not None:
                return loader
        # Training shards come from Lightning's DistributedSampler; evaluation shards must not
        # repeat samples, or metrics under DDP would differ from a single process.
        sampler = (
            UnpaddedDistributedSampler(dataset, world, rank) if world > 1 and not train else None
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            shuffle=train,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )
