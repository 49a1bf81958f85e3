"""MNIST: 70,000 handwritten digits, 28x28 grey, held in memory as uint8 tensors."""

import struct
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST

from common.data.base import Splits
from common.data.images import ImageDataModule
from common.data.synthetic import synthetic_images

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(ImageDataModule):
    """MNIST through torchvision, loaded once into uint8 tensors (no per-sample PIL transforms).

    Batches are (uint8 images (B, 28, 28), int64 labels (B,)); on the training device they become
    normalized floats (B, 1, 28, 28). `synthetic=True` makes learnable look-alikes.
    """

    name = "MNIST"
    mean, std = (0.1307,), (0.3081,)
    shape = (1, 28, 28)
    classes = tuple(str(i) for i in range(10))
    expected = RAW_FILES

    @property
    def location(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def fetch(self) -> None:
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def read(self) -> Splits:
        train, test = MNIST(self.data_dir, train=True), MNIST(self.data_dir, train=False)
        return Splits(
            TensorDataset(train.data, train.targets), None, TensorDataset(test.data, test.targets)
        )


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a tensor as uint8 in MNIST's IDX format (magic 0x08 = ubyte, then the rank)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def write_synthetic_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Synthetic digits as the four real MNIST files under root/MNIST/raw (tests, benchmarks)."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = synthetic_images(n, 10, (28, 28), seed=seed, split_seed=n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw
