"""CIFAR-10: 60,000 32x32 colour images in 10 classes, held in memory as uint8 tensors."""

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import CIFAR10

from common.data.base import Splits
from common.data.images import ImageDataModule

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR's pickled batches -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: torchvision downloads the archive once; the batch files are read straight into
    uint8 tensors (no per-sample PIL). Training batches are flipped and translated on the device
    when `flip` / `crop_padding` are set (the standard CIFAR augmentation)."""

    name = "CIFAR-10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    shape = (3, 32, 32)
    classes = CLASSES
    expected = (*TRAIN_BATCHES, "test_batch")

    @property
    def location(self) -> Path:
        return Path(self.data_dir) / "cifar-10-batches-py"

    def fetch(self) -> None:
        CIFAR10(self.data_dir, train=True, download=True)  # the archive holds both splits

    def read(self) -> Splits:
        train = read_batches([self.location / name for name in TRAIN_BATCHES])
        test = read_batches([self.location / "test_batch"])
        return Splits(TensorDataset(*train), None, TensorDataset(*test))
