"""scikit-learn's handwritten digits: 1,797 real 8x8 scans, bundled, so real data with no download."""

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from common.data.base import Splits
from common.data.images import ImageDataModule
from common.errors import UserError


class DigitsDataModule(ImageDataModule):
    """The UCI digits upsampled to MNIST's 28x28 uint8 layout, so MNIST models run unchanged.

    A seeded `test_size` of the images is the test set. Normalization uses the training pool's
    own mean and std (digits carry more ink than MNIST).
    """

    name = "digits"
    classes = tuple(str(i) for i in range(10))

    def __init__(self, data_dir: str | None = None, test_size: float | int = 0.2, **kwargs):
        super().__init__(data_dir, test_size=test_size, **kwargs)
        if self.in_chans != 1 and not self.synthetic:
            raise UserError("the digits are grey: data.in_chans=1")

    def read(self) -> Splits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (
            torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
        )  # (N, 1, 8, 8)
        size = (self.image_size, self.image_size)
        images = F.interpolate(images, size=size, mode="bilinear")
        images = (images.clamp(0, 1)[:, 0] * 255).round().to(torch.uint8)  # (N, 28, 28)
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        return Splits(TensorDataset(images, labels))
