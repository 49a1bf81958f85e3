"""MNIST: 70,000 handwritten digits, 28x28 grey, held in memory as uint8 tensors."""

from pathlib import Path

from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST

from common.data.images import ImageDataModule

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
    raw_files = RAW_FILES

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def fetch(self) -> None:
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def read(self) -> tuple[TensorDataset, TensorDataset]:
        train, test = MNIST(self.data_dir, train=True), MNIST(self.data_dir, train=False)
        return TensorDataset(train.data, train.targets), TensorDataset(test.data, test.targets)
