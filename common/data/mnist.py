"""MNIST: 70,000 handwritten digits, 28x28 grey, held in memory as uint8 tensors."""

from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST

from common.data.base import DataModule
from common.data.synthetic import synthetic_images
from common.errors import UserError

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(DataModule):
    """MNIST through torchvision, loaded once into uint8 tensors (no per-sample PIL transforms).

    Batches are (uint8 images (B, 28, 28), int64 labels (B,)); `on_after_batch_transfer` turns the
    images into normalized floats (B, 1, 28, 28) on the training device, so the host moves a
    quarter of the bytes. `synthetic=True` makes learnable look-alikes of the same shapes.
    """

    mean, std = 0.1307, 0.3081

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        synthetic_size: tuple[int, int] = (12000, 2000),
        download: bool = True,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if (num_classes, in_chans, image_size) != (10, 1, 28) and not self.synthetic:
            raise UserError(
                "MNIST has 10 classes of 1x28x28 images; change data.num_classes, data.in_chans "
                "or data.image_size only with data.synthetic=true"
            )
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.synthetic_size = tuple(synthetic_size)
        self.download = download

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def _missing(self) -> list[str]:
        return [f for f in RAW_FILES if not (self.raw_dir / f).is_file()]

    def prepare_data(self) -> None:
        if self.synthetic or not self._missing():
            return
        reason = "data.download=false"
        if self.download:
            try:
                MNIST(self.data_dir, train=True, download=True)
                MNIST(self.data_dir, train=False, download=True)
                return
            except Exception as err:  # no network, a mirror down, a disk full: all one message
                # torchvision lists every mirror it tried; the last line says why.
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                reason = f"the download failed ({lines[-1] if lines else type(err).__name__})"
        raise UserError(
            f"MNIST files missing in {self.raw_dir} (expected {', '.join(RAW_FILES)}) and "
            f"{reason}. Put the files there, or train on synthetic digits with data.synthetic=true"
        )

    def load(self) -> tuple[TensorDataset, TensorDataset]:
        if self.synthetic:
            n_train, n_test = self.synthetic_size
            shape = (self.in_chans, self.image_size, self.image_size)
            shape = shape[1:] if self.in_chans == 1 else shape
            train = synthetic_images(n_train, self.num_classes, shape, self.seed, split_seed=0)
            test = synthetic_images(n_test, self.num_classes, shape, self.seed, split_seed=1)
            return TensorDataset(*train), TensorDataset(*test)
        if self._missing():
            self.prepare_data()  # raises the readable error when the files cannot be had
        try:
            train = MNIST(self.data_dir, train=True)
            test = MNIST(self.data_dir, train=False)
        except Exception as err:
            raise UserError(
                f"cannot read MNIST from {self.raw_dir} ({type(err).__name__}: {err}). Delete the "
                "folder to download again, or use data.synthetic=true"
            ) from err
        return TensorDataset(train.data, train.targets), TensorDataset(test.data, test.targets)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, labels = batch
        if images.dtype == torch.uint8:
            images = images.float().div_(255).sub_(self.mean).div_(self.std)
            if images.ndim == 3:
                images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        return images, labels
