"""Loading MNIST-shaped data: in-memory tensor batches versus torchvision's per-sample path.

Writes 60,000 synthetic 28x28 images as real MNIST IDX files, then times one epoch of
normalized float batches (B, 1, 28, 28) through each path. Run: `python -m benchmarks.loaders`.
"""

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST

from common.data.mnist import MNISTDataModule, write_synthetic_mnist


def time_epoch(batches, finish=lambda b: b) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for batch in batches:
        x, _ = finish(batch)
        n += len(x)
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    with TemporaryDirectory() as tmp:
        write_synthetic_mnist(Path(tmp), args.samples, 1000)
        normalize = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
        )
        pil_set = MNIST(tmp, train=True, transform=normalize)
        rows = []
        for workers in (0, 2):
            loader = DataLoader(
                pil_set,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=workers,
                persistent_workers=False,
            )
            rows.append((f"torchvision PIL transforms, {workers} workers", *time_epoch(loader)))

        dm = MNISTDataModule(
            tmp, batch_size=args.batch_size, val_size=0, download=False, loader="dataloader"
        )
        dm.setup("fit")
        rows.append(
            (
                "DataLoader over uint8 tensors",
                *time_epoch(dm.train_dataloader(), dm.on_after_batch_transfer),
            )
        )
        dm.loader = "tensor"
        rows.append(
            (
                "TensorLoader (data.loader=tensor)",
                *time_epoch(dm.train_dataloader(), dm.on_after_batch_transfer),
            )
        )

    print(
        f"\none epoch of {args.samples} MNIST-shaped images, batch {args.batch_size}, normalized floats"
    )
    print(f"{'path':<40}{'samples/s':>14}{'epoch s':>10}")
    for label, seconds, n in rows:
        print(f"{label:<40}{n / seconds:14.0f}{seconds:10.2f}")
    baseline = min(rows[0][1], rows[1][1])  # the faster of the two torchvision set-ups
    print(f"speed-up, TensorLoader vs best torchvision path: {baseline / rows[-1][1]:.1f}x")


if __name__ == "__main__":
    main()
