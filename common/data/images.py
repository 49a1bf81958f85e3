"""Small image datasets held in memory as uint8 tensors, normalized and augmented batch-wise."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from common.data.base import DataModule
from common.data.synthetic import synthetic_images
from common.errors import UserError


def flip_and_translate(
    images: torch.Tensor, flip: bool, padding: int, padding_mode: str = "constant"
) -> torch.Tensor:
    """Random horizontal flips and random crops from a padded image, per sample, in one go.

    images: float (B, C, H, W) on any device; returns the same shape. `padding_mode` is
    "constant" (zeros, torchvision's RandomCrop default) or "reflect" (airbench's choice). Uses
    torch's global RNG on the images' device, which `seed_everything` seeds.
    """
    b, _, h, w = images.shape
    if flip:
        flipped = torch.rand(b, device=images.device) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    if padding > 0:
        padded = F.pad(images, (padding,) * 4, mode=padding_mode)  # (B, C, H + 2p, W + 2p)
        dy = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device)
        dx = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device)
        rows = (torch.arange(h, device=images.device) + dy)[:, None, :, None]  # (B, 1, H, 1)
        cols = (torch.arange(w, device=images.device) + dx)[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channels, rows, cols]
    return images


def cutout(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one random size x size square per image (clipped at the borders), in one masked op.

    images: normalized float (B, C, H, W), so zero is the mean colour (DeVries & Taylor, 2017).
    """
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b, 1, 1), device=images.device)
    cx = torch.randint(0, w, (b, 1, 1), device=images.device)
    ys = torch.arange(h, device=images.device)[None, :, None]  # (1, H, 1)
    xs = torch.arange(w, device=images.device)[None, None, :]  # (1, 1, W)
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)  # (B, H, W)
    return images.masked_fill(inside[:, None], 0.0)


AUTO_AUGMENT = ("randaugment", "autoaugment")
# data.normalize -> the (mean, std) that pixel values in [0, 1] are shifted and divided by;
# None: the dataset's own per-channel statistics.
NORMALIZE = {"standard": None, "symmetric": ((0.5,), (0.5,)), "unit": ((0.0,), (1.0,))}


def auto_augment(images: torch.Tensor, policy: str, groups: int) -> torch.Tensor:
    """RandAugment or AutoAugment (CIFAR-10 policy) on a uint8 batch (B, C, H, W), on its device.

    torchvision's v2 transforms draw one operation per call and apply it to the whole tensor; a
    call per image would be B small kernels. As a middle way the batch is cut into `groups`
    chunks, each with its own random operations: per-chunk rather than per-image variety, at
    `groups` calls per batch.
    """
    from torchvision.transforms import v2

    if policy == "randaugment":
        transform = v2.RandAugment(num_ops=2, magnitude=9)
    else:
        transform = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    chunks = images.chunk(max(1, min(groups, len(images))))
    return torch.cat([transform(chunk) for chunk in chunks])


class ImageDataModule(DataModule):
    """The shared part of in-memory image datasets (MNIST, CIFAR-10, digits).

    Batches leave the loader as (uint8 images (B, H, W) or (B, C, H, W), int64 labels (B,)), a
    quarter of the bytes of floats; `on_after_batch_transfer` runs on the training device and
    makes normalized floats (B, C, H, W), augmented while training: `auto_augment`
    ("randaugment" | "autoaugment", on uint8), `flip`, `crop_padding` (random translation, with
    `padding_mode` "constant" or "reflect"), then `cutout` (square size, 0 = off). Subclasses
    name their files and read them; `synthetic=True` needs neither.

    `normalize` sets the value range: "standard" (per-channel mean 0, std 1: classifiers),
    "symmetric" ([-1, 1]: a tanh generator's range) or "unit" ([0, 1]: Bernoulli decoders).
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
        padding_mode: str = "constant",
        cutout: int = 0,
        auto_augment: str | None = None,
        auto_augment_groups: int = 16,
        normalize: str = "standard",
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
        if padding_mode not in ("constant", "reflect"):
            raise UserError(f"data.padding_mode={padding_mode!r} is not constant or reflect")
        if auto_augment not in (None, *AUTO_AUGMENT):
            raise UserError(
                f"data.auto_augment={auto_augment!r} is not null or one of "
                + ", ".join(AUTO_AUGMENT)
            )
        if normalize not in NORMALIZE:
            raise UserError(f"data.normalize={normalize!r} is not one of " + ", ".join(NORMALIZE))
        self.normalize = normalize
        self.flip, self.crop_padding, self.padding_mode = flip, crop_padding, padding_mode
        self.cutout, self.auto_augment, self.auto_augment_groups = (
            cutout,
            auto_augment,
            auto_augment_groups,
        )
        self._affine_cache: tuple = (None, None)  # (key, (scale, shift)), see `_affine`

    @property
    def raw_dir(self) -> Path:
        raise NotImplementedError

    def read(self) -> tuple[TensorDataset, TensorDataset]:
        """(train pool, test set) from the raw files."""
        raise NotImplementedError

    def _missing(self) -> list[str]:
        return [f for f in self.raw_files if not (self.raw_dir / f).is_file()]

    def missing_help(self) -> tuple[str, str]:
        return (
            f"{self.name} files missing in {self.raw_dir} (expected {', '.join(self.raw_files)})",
            "Put the files there, or train on synthetic images with data.synthetic=true",
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
        mean, std = NORMALIZE[self.normalize] or (self.mean, self.std)
        key = (channels, str(device), mean, std)
        if self._affine_cache[0] != key:
            mean = torch.tensor(mean, device=device).expand(channels).view(1, -1, 1, 1)
            std = torch.tensor(std, device=device).expand(channels).view(1, -1, 1, 1)
            self._affine_cache = (key, (1 / (255 * std), -mean / std))
        return self._affine_cache[1]

    def transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 images (B, H, W) or (B, C, H, W) -> normalized floats (B, C, H, W), augmented
        when `train`."""
        if images.ndim == 3:
            images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        if train and self.auto_augment:
            images = auto_augment(images, self.auto_augment, self.auto_augment_groups)
        images = images.float()  # (B, C, H, W), 0..255
        if train and (self.flip or self.crop_padding):
            # Before normalizing, so constant padding is black, as with torchvision's RandomCrop.
            images = flip_and_translate(images, self.flip, self.crop_padding, self.padding_mode)
        scale, shift = self._affine(images.shape[1], images.device)
        images = torch.addcmul(shift, images, scale)
        if train and self.cutout:
            images = cutout(images, self.cutout)
        return images

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, labels = batch
        if images.dtype != torch.uint8:
            return images, labels
        train = self.trainer is not None and self.trainer.training
        return self.transform(images, train), labels
