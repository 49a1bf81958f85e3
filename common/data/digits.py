"""scikit-learn's handwritten digits: 1,797 real 8x8 scans, bundled, so real data with no download."""

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from common.data.images import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """The UCI digits upsampled to MNIST's 28x28 uint8 layout, so MNIST models run unchanged.

    A seeded `test_size` fraction is the test set. Normalization uses the training pool's own
    mean and std (digits carry more ink than MNIST).
    """

    name = "digits"
    shape = (1, 28, 28)
    raw_files = ()  # bundled with scikit-learn: nothing to download

    def __init__(self, data_dir: str, test_size: float = 0.2, **kwargs):
        kwargs.pop("download", None)
        super().__init__(data_dir, **kwargs)
        self.test_size = test_size

    def read(self) -> tuple[TensorDataset, TensorDataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (
            torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
        )  # (N, 1, 8, 8)
        size = (self.image_size, self.image_size)
        images = F.interpolate(images, size=size, mode="bilinear")
        images = (images.clamp(0, 1)[:, 0] * 255).round().to(torch.uint8)  # (N, 28, 28)
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed + 2))
        n_test = int(round(self.test_size * len(labels)))
        test, pool = order[:n_test], order[n_test:]
        pixels = images[pool].float() / 255
        self.mean, self.std = (pixels.mean().item(),), (pixels.std().item(),)
        return TensorDataset(images[pool], labels[pool]), TensorDataset(images[test], labels[test])
