"""Loading MNIST- and CIFAR-10-shaped data: `data.loader=device` versus the DataLoader paths.

For each dataset one epoch of training batches (B, C, H, W) is made, normalized floats on the
training device, augmented as its recipe does (CIFAR-10: random crop with 4-pixel padding and
flips; MNIST: none), three ways:

- torchvision's classic path: a Dataset that makes a PIL image per sample (as torchvision's
  MNIST and CIFAR10 classes do) and per-sample transforms, a DataLoader with 0 or 2 workers;
- `data.loader=dataloader`: a DataLoader over the uint8 tensors, augmentation batch-wise on the
  device;
- `data.loader=device`: the uint8 tensors held on the device, one index op per batch.

Run: `make bench` or `python -m benchmarks.loaders [--device cuda]`.
"""

import argparse
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from common.data.cifar10 import CIFAR10DataModule
from common.data.images import ImageDataModule
from common.data.mnist import MNISTDataModule


class PILImages(Dataset):
    """uint8 images (N, H, W) or (N, C, H, W) served one PIL image at a time, like torchvision's
    dataset classes, through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        # HWC numpy, as torchvision's CIFAR10 keeps it.
        self.images = images.numpy() if images.ndim == 3 else images.permute(0, 2, 3, 1).numpy()
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def time_epoch(batches, finish, device: torch.device) -> tuple[float, int]:
    """Seconds and samples for one pass, `finish` making each batch's device floats."""
    start, n = time.perf_counter(), 0
    for batch in batches:
        x = finish(batch)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, n


def bench(dm: ImageDataModule, per_sample, device, batch_size: int) -> list[tuple[str, float, int]]:
    dm.setup("fit")
    images, labels = dm.train_set.tensors
    rows = []
    pil_set = PILImages(images, labels, per_sample)
    for workers in (0, 2):
        loader = DataLoader(
            pil_set,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )

        def finish(batch):
            return batch[0].to(device, non_blocking=True)

        label = f"torchvision PIL transforms, {workers} workers"
        rows.append((label, *time_epoch(loader, finish, device)))

    def augment(batch):
        return dm.transform(batch[0].to(device, non_blocking=True), train=True)

    dm.loader = "dataloader"
    rows.append(("data.loader=dataloader", *time_epoch(dm.train_dataloader(), augment, device)))
    dm.loader = "device"
    dm.train_set = torch.utils.data.TensorDataset(images.to(device), labels.to(device))
    rows.append(("data.loader=device", *time_epoch(dm.train_dataloader(), augment, device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    common = dict(synthetic=True, synthetic_size=(args.samples + 1, 100), val_size=1)
    mnist = MNISTDataModule("unused", batch_size=args.batch_size, **common)
    mnist_per_sample = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mnist.mean, mnist.std)]
    )
    cifar = CIFAR10DataModule(
        "unused",
        batch_size=args.batch_size,
        in_chans=3,
        image_size=32,
        flip=True,
        crop_padding=4,
        **common,
    )
    cifar_per_sample = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(cifar.mean, cifar.std),
        ]
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\none epoch of {args.samples} images, batch {args.batch_size}, to normalized floats on {name}"
    )
    for title, dm, per_sample in (
        ("MNIST 1x28x28, normalize", mnist, mnist_per_sample),
        ("CIFAR-10 3x32x32, crop(pad 4) + flip + normalize", cifar, cifar_per_sample),
    ):
        rows = bench(dm, per_sample, device, args.batch_size)
        print(f"\n{title}")
        print(f"{'path':<40}{'samples/s':>12}{'epoch s':>10}")
        for label, seconds, n in rows:
            print(f"{label:<40}{n / seconds:12.0f}{seconds:10.2f}")
        best_classic = min(rows[0][1], rows[1][1])
        print(
            f"data.loader=device vs best torchvision path: {best_classic / rows[-1][1]:.1f}x, "
            f"vs data.loader=dataloader: {rows[2][1] / rows[-1][1]:.1f}x (target >= 3x)"
        )


if __name__ == "__main__":
    main()
