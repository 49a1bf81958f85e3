"""Small image datasets held in memory as uint8 tensors, normalized and augmented batch-wise."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from common.data.base import DataModule
from common.data.synthetic import synthetic_images
from common.errors import UserError


def flip_and_translate(images: torch.Tensor, flip: bool, padding: int) -> torch.Tensor:
    """Random horizontal flips and random crops from a zero-padded image, per sample, in one go.

    images: float (B, C, H, W) on any device, padded with 0; returns the same shape. Uses torch's global RNG,
    which `seed_everything` seeds.
    """
    b, _, h, w = images.shape
    if flip:
        flipped = torch.rand(b, device=images.device) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
        dy = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device)
        dx = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device)
        rows = (torch.arange(h, device=images.device) + dy)[:, None, :, None]  # (B, 1, H, 1)
        cols = (torch.arange(w, device=images.device) + dx)[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channels, rows, cols]
    return images


class ImageDataModule(DataModule):
    """The shared part of in-memory image datasets (MNIST, CIFAR-10, digits).

    Batches leave the loader as (uint8 images (B, H, W) or (B, C, H, W), int64 labels (B,)), a
    quarter of the bytes of floats; `on_after_batch_transfer` runs on the training device and
    makes normalized floats (B, C, H, W), with `flip` and `crop_padding` augmentation while
    training. Subclasses name their files and read them; `synthetic=True` needs neither.
    """

    name = "images"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of the real data
    classes: int = 10  # of the real data
    raw_files: tuple[str, ...] = ()

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        synthetic_size: tuple[int, int] = (12000, 2000),
        download: bool = True,
        flip: bool = False,
        crop_padding: int = 0,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        real = (self.classes, *self.shape)
        if (num_classes, in_chans, image_size, image_size) != real and not self.synthetic:
            k, c, h, w = real
            raise UserError(
                f"{self.name} has {k} classes of {c}x{h}x{w} images; change data.num_classes, "
                "data.in_chans or data.image_size only with data.synthetic=true"
            )
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.synthetic_size = tuple(synthetic_size)
        self.download = download
        self.flip, self.crop_padding = flip, crop_padding
        self._affine_cache: tuple = (None, None)  # (key, (scale, shift)), see `_affine`

    @property
    def raw_dir(self) -> Path:
        raise NotImplementedError

    def fetch(self) -> None:
        """Download the raw files into `raw_dir`."""
        raise NotImplementedError

    def read(self) -> tuple[TensorDataset, TensorDataset]:
        """(train pool, test set) from the raw files."""
        raise NotImplementedError

    def _missing(self) -> list[str]:
        return [f for f in self.raw_files if not (self.raw_dir / f).is_file()]

    def prepare_data(self) -> None:
        if self.synthetic or not self._missing():
            return
        reason = "data.download=false"
        if self.download:
            try:
                self.fetch()
                return
            except Exception as err:  # no network, a mirror down, a disk full: all one message
                # torchvision lists every mirror it tried; the last line says why.
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                reason = f"the download failed ({lines[-1] if lines else type(err).__name__})"
        raise UserError(
            f"{self.name} files missing in {self.raw_dir} (expected {', '.join(self.raw_files)}) "
            f"and {reason}. Put the files there, or train on synthetic images with "
            "data.synthetic=true"
        )

    def load(self) -> tuple[TensorDataset, TensorDataset]:
        if self.synthetic:
            n_train, n_test = self.synthetic_size
            shape = (self.in_chans, self.image_size, self.image_size)
            shape = shape[1:] if self.in_chans == 1 else shape  # grey images are (N, H, W)
            train = synthetic_images(n_train, self.num_classes, shape, self.seed, split_seed=0)
            test = synthetic_images(n_test, self.num_classes, shape, self.seed, split_seed=1)
            return TensorDataset(*train), TensorDataset(*test)
        if self._missing():
            self.prepare_data()  # raises the readable error when the files cannot be had
        try:
            return self.read()
        except Exception as err:
            raise UserError(
                f"cannot read {self.name} from {self.raw_dir} ({type(err).__name__}: {err}). "
                "Delete the folder to download again, or use data.synthetic=true"
            ) from err

    def _affine(self, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (1, C, 1, 1): uint8 x -> (x / 255 - mean) / std as x * scale + shift.

        Made once per device (and again if `mean`/`std` change, as digits' do on reading), not
        per batch: a fresh host tensor each step would be a copy to the GPU in the hot loop.
        """
        key = (channels, str(device), self.mean, self.std)
        if self._affine_cache[0] != key:
            mean = torch.tensor(self.mean, device=device).expand(channels).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device).expand(channels).view(1, -1, 1, 1)
            self._affine_cache = (key, (1 / (255 * std), -mean / std))
        return self._affine_cache[1]

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, labels = batch
        if images.dtype != torch.uint8:
            return images, labels
        if images.ndim == 3:
            images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        images = images.float()  # (B, C, H, W), 0..255
        trainer = self.trainer
        if trainer is not None and trainer.training and (self.flip or self.crop_padding):
            # Before normalizing, so the padding is black, as with torchvision's RandomCrop.
            images = flip_and_translate(images, self.flip, self.crop_padding)
        scale, shift = self._affine(images.shape[1], images.device)
        return torch.addcmul(shift, images, scale), labels
