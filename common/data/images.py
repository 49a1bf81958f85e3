"""Image datasets held in memory as uint8 tensors, normalized and augmented batch-wise on the
training device; and one image file made into a model's input, as training saw its images."""

import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from common.data.base import DataModule, Splits
from common.data.spec import DataSpec
from common.data.synthetic import synthetic_images
from common.errors import UserError

AUTO_AUGMENT = ("randaugment", "autoaugment")
# data.normalize -> the (mean, std) that pixel values in [0, 1] are shifted and divided by;
# None: the dataset's own per-channel statistics.
NORMALIZE = {"standard": None, "symmetric": ((0.5,), (0.5,)), "unit": ((0.0,), (1.0,))}
# The most pixels an image file may have: models here take a few hundred pixels a side, and a
# larger file costs seconds and gigabytes to decode (or is a decompression bomb). Below PIL's
# own guard (89 million pixels warns, 179 million fails) so that this check, which names the
# size, is the one a user meets.
MAX_PIXELS = 8192 * 8192
_OPENING = threading.Lock()  # catch_warnings swaps process-wide state; decode_images has threads


def flip_and_translate(
    images: torch.Tensor,
    flip: bool | torch.Tensor,
    padding: int,
    padding_mode: str = "constant",
) -> torch.Tensor:
    """Horizontal flips and random crops from a padded image, per sample, in one go.

    images: float (B, C, H, W) on any device; returns the same shape. `flip`: True flips a
    random half, or a bool (B,) tensor says which images to flip. `padding_mode` is "constant"
    (zeros, torchvision's RandomCrop default) or "reflect" (airbench's choice). Uses torch's
    global RNG on the images' device, which `seed_everything` seeds.
    """
    b, _, h, w = images.shape
    if flip is True:
        flip = torch.rand(b, device=images.device) < 0.5
    if isinstance(flip, torch.Tensor):
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
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


def per_channel(values, channels: int) -> list[float]:
    """One value per channel: a single value is repeated (grey statistics for RGB, say)."""
    values = [float(v) for v in values]
    return values * channels if len(values) == 1 else values


def normalizing(mean, std, channels: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, C, 1, 1): pixels * scale + shift = (pixels / 255 - mean) / std."""
    mean = torch.tensor(per_channel(mean, channels), device=device).view(1, -1, 1, 1)
    std = torch.tensor(per_channel(std, channels), device=device).view(1, -1, 1, 1)
    return 1 / (255 * std), -mean / std


class Normalizer:
    """uint8 images (B, C, H, W) -> float32 (x / 255 - mean) / std, per channel, in one addcmul.

    The constants are made once per device (and channel count): a fresh host tensor each step
    would be a host-to-device copy in the hot loop.
    """

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: dict = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c, device = images.shape[1], images.device
        if (c, device) not in self._constants:
            self._constants[c, device] = normalizing(self.mean, self.std, c, device)
        scale, shift = self._constants[c, device]
        return torch.addcmul(shift, images.float(), scale)


class NormalizedNet(nn.Module):
    """uint8 images (B, C, S, S) -> net(normalized images): the normalization a net was trained
    behind, as a module, so that an exported graph takes pixels and a caller cannot get the
    checkpoint's mean and std wrong."""

    def __init__(self, net: nn.Module, mean, std, in_chans: int):
        super().__init__()
        self.net = net
        scale, shift = normalizing(mean, std, in_chans)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.addcmul(self.shift, pixels.float(), self.scale))


def channel_stats(*image_sets: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of uint8 images (N, H, W) or (N, C, H, W), scaled to 0..1, over
    all of `image_sets` together.

    Exact, from a 256-bin histogram per channel: no float copy of the whole dataset.
    """
    sets = [s.view(len(s), 1, -1) if s.ndim == 3 else s.flatten(2) for s in image_sets if len(s)]
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(sets[0].shape[1]):
        counts = sum(torch.bincount(s[:, c].flatten(), minlength=256).double() for s in sets)
        mean = (counts @ values) / counts.sum()
        var = (counts @ values.square()) / counts.sum() - mean**2
        means.append(mean.item())
        stds.append(max(var.clamp(min=0).sqrt().item(), 1 / 255))  # a constant channel: no /0
    return tuple(means), tuple(stds)


def fit_image(image, size: int, mode: str) -> np.ndarray:
    """A PIL image -> uint8 (size, size, 3) for mode "RGB", (size, size) for mode "L".

    Resized (bilinear, antialiased) so the shorter side is `size`, then center-cropped to
    size x size; an image already size x size is not resampled. EXIF rotation is applied.
    """
    from PIL import Image, ImageOps

    image.draft(mode, (size, size))  # JPEG: decode at a reduced scale when much larger
    image = ImageOps.exif_transpose(image).convert(mode)
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        if (rw, rh) != (w, h):
            image = image.resize((rw, rh), Image.Resampling.BILINEAR)
        left, top = round((rw - size) / 2), round((rh - size) / 2)  # as torchvision's center_crop
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image)


def open_image(path: str | Path):
    """PIL's `Image.open(path)` (the header read, the pixels decoded on use, a context manager),
    refusing an image of more than MAX_PIXELS pixels with a UserError that names the file, its
    size and the limit. PIL's own errors for a file that is no image pass through."""
    from PIL import Image

    limit = min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)  # PIL's too, if lowered

    def too_large(pixels: str) -> UserError:
        return UserError(
            f"the image {path} is too large to read: {pixels}, over the limit of {limit:,} "
            "pixels; make it smaller first"
        )

    with _OPENING, warnings.catch_warnings():
        # PIL warns inside open, before the size can be read; the check below is stricter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as err:  # over twice PIL's limit: no size to read
            raise too_large(f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels") from err
    width, height = image.size
    if width * height > limit:
        image.close()
        raise too_large(f"{width}x{height} = {width * height:,} pixels")
    return image


def decode_image(path: str | Path, size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 (size, size, 3) for mode "RGB", (size, size) for "L" (`fit_image`)."""
    with open_image(path) as image:
        return fit_image(image, size, mode)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read_image(path: str | Path, size: int, in_chans: int) -> torch.Tensor:
    """One image file -> uint8 (in_chans, size, size), decoded exactly as image folders decode
    theirs (`decode_image`).

    Grey images become RGB by repeating the channel; a colour image for a grey model is refused
    (which grey would it be?), as is a file that is no image, a broken one or one too large
    (`open_image`): one UserError each, naming the file.
    """
    try:
        with open_image(path) as image:
            colour = in_chans == 1 and image.mode not in GREY_MODES
            if colour:  # an RGB file can hold a grey image: three equal channels
                image.draft("RGB", (size, size))
                rgb = np.asarray(image.convert("RGB")).astype(np.int16)  # (H, W, 3)
                colour = np.abs(np.diff(rgb, axis=2)).max() > 0
        # A writable copy: torch warns on the read-only arrays PIL gives.
        pixels = torch.from_numpy(decode_image(path, size, "L" if in_chans == 1 else "RGB").copy())
    except (OSError, SyntaxError) as err:  # no image, or a broken one (PIL says which)
        raise UserError(f"cannot read the image {path}: {err}") from err
    if colour:
        raise UserError(
            f"{path} is a colour image and this model takes grey images (1 channel): "
            "convert it to greyscale first"
        )
    return pixels[None] if in_chans == 1 else pixels.permute(2, 0, 1)  # (C, S, S)


class ImageDataModule(DataModule):
    """In-memory image datasets (MNIST, CIFAR-10, your folders): uint8 tensors on the device.

    Batches leave the loader as (uint8 images (B, H, W) or (B, C, H, W), int64 labels (B,)), a
    quarter of the bytes of floats; `on_after_batch_transfer` runs on the training device and
    makes normalized floats (B, C, H, W), augmented while training: `auto_augment`
    ("randaugment" | "autoaugment", on uint8), `flip` (true: a random half of each
    batch; "alternate": each image in every other epoch), `crop_padding` (random translation, with
    `padding_mode` "constant" or "reflect"), then `cutout` (square size, 0 = off).

    `normalize` sets the value range: "standard" (per-channel mean 0, std 1: classifiers; with
    the dataset's published statistics, or those of the training pool, train and validation),
    "symmetric" ([-1, 1]: a tanh generator's range) or "unit" ([0, 1]: Bernoulli decoders).
    A dataset with a fixed
    `shape` and `classes` refuses other sizes unless synthetic; `synthetic=True` generates
    learnable look-alikes (`synthetic_images`) of `synthetic_size` (train pool, test).
    """

    name = "images"
    mean: tuple[float, ...] | None = None  # the real data's statistics; None: computed
    std: tuple[float, ...] | None = None
    shape: tuple[int, int, int] | None = None  # (C, H, W) of the real data; None: any
    classes: tuple[str, ...] | None = None  # the real data's class names

    def __init__(
        self,
        data_dir: str | None = None,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        synthetic_size: tuple[int, int] = (12000, 2000),
        flip: bool | str = False,
        crop_padding: int = 0,
        padding_mode: str = "constant",
        cutout: int = 0,
        auto_augment: str | None = None,
        auto_augment_groups: int = 16,
        normalize: str = "standard",
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if self.shape is not None and not self.synthetic:
            real = (len(self.classes), *self.shape)
            if (num_classes, in_chans, image_size, image_size) != real:
                k, c, h, w = real
                raise UserError(
                    f"{self.name} has {k} classes of {c}x{h}x{w} images; change data.num_classes, "
                    "data.in_chans or data.image_size only with data.synthetic=true"
                )
        if in_chans not in (1, 3):
            raise UserError(f"data.in_chans={in_chans} must be 3 (RGB) or 1 (grey)")
        if flip not in (False, True, "alternate"):
            raise UserError(f"data.flip={flip!r} is not true, false or alternate")
        if padding_mode not in ("constant", "reflect"):
            raise UserError(f"data.padding_mode={padding_mode!r} is not constant or reflect")
        if auto_augment not in (None, *AUTO_AUGMENT):
            raise UserError(
                f"data.auto_augment={auto_augment!r} is not null or one of "
                + ", ".join(AUTO_AUGMENT)
            )
        if normalize not in NORMALIZE:
            raise UserError(f"data.normalize={normalize!r} is not one of " + ", ".join(NORMALIZE))
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.synthetic_size = tuple(synthetic_size)
        self.normalize = normalize
        self.flip, self.crop_padding, self.padding_mode = flip, crop_padding, padding_mode
        self.cutout = cutout
        self.auto_augment, self.auto_augment_groups = auto_augment, auto_augment_groups
        real_names = self.classes is not None and not self.synthetic
        self.class_names = (
            list(self.classes) if real_names else [str(i) for i in range(num_classes)]
        )
        self.normalizer: Normalizer | None = None  # once the statistics are known

    def generate(self) -> Splits:
        n_train, n_test = self.synthetic_size
        shape = (self.in_chans, self.image_size, self.image_size)
        shape = shape[1:] if self.in_chans == 1 else shape  # grey images are (N, H, W)
        train = synthetic_images(n_train, self.num_classes, shape, self.seed, split_seed=0)
        test = synthetic_images(n_test, self.num_classes, shape, self.seed, split_seed=1)
        return Splits(TensorDataset(*train), None, TensorDataset(*test))

    def prepare_splits(self, train, val, test):
        if self.adopted.mean is not None:  # a checkpoint's: the inputs it learned from
            self.mean, self.std = tuple(self.adopted.mean), tuple(self.adopted.std)
        elif NORMALIZE[self.normalize] is not None:
            self.mean, self.std = NORMALIZE[self.normalize]
        elif self.synthetic or type(self).mean is None:  # no published statistics: the pool's
            self.mean, self.std = channel_stats(train.tensors[0], val.tensors[0])
        self.normalizer = Normalizer(self.mean, self.std)
        return train, val, test

    def transform(self, images: torch.Tensor, train: bool, epoch: int = 0) -> torch.Tensor:
        """uint8 images (B, H, W) or (B, C, H, W) -> normalized floats (B, C, H, W), augmented
        when `train` (`epoch` decides `flip="alternate"`'s side)."""
        if images.ndim == 3:
            images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        flip = self.flip
        if train and flip == "alternate":
            # Each image mirrored in every other epoch (airbench): which ones start mirrored is
            # fixed per image by the parity of its pixel sum (batches carry no dataset index;
            # mirroring keeps the sum), and the epoch's parity swaps them.
            flip = (images.sum(dim=(1, 2, 3)) + epoch) % 2 == 1  # (B,) bool
        if train and self.auto_augment:
            images = auto_augment(images, self.auto_augment, self.auto_augment_groups)
        images = images.float()  # (B, C, H, W), 0..255
        if train and (self.flip or self.crop_padding):
            # Before normalizing, so constant padding is black, as with torchvision's RandomCrop.
            images = flip_and_translate(images, flip, self.crop_padding, self.padding_mode)
        images = self.normalizer(images)
        if train and self.cutout:
            images = cutout(images, self.cutout)
        return images

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, labels = batch
        if images.dtype != torch.uint8:
            return images, labels
        train = self.trainer is not None and self.trainer.training
        epoch = self.trainer.current_epoch if train else 0
        with torch.profiler.record_function("data.transform"):  # named in profiles
            return self.transform(images, train, epoch), labels

    def spec(self) -> DataSpec:
        c = self.in_chans
        return DataSpec(
            class_names=self.class_names,
            image_size=self.image_size,
            in_chans=c,
            mean=per_channel(self.mean, c),
            std=per_channel(self.std, c),
            train_inputs=lambda n: self.transform(self.train_set.tensors[0][:n], train=False),
        )
