"""The detector's box logic alone: `python -m benchmarks.detection` (part of `make bench`).

Target assignment + loss + backward, and post-processing (scores, decoding, NMS), on raw
outputs of a 16 x 16 grid (128 x 128 images, stride 8) for a batch of images with 1-5 boxes
each, one thread, medians of `--calls`. Post-processing is timed twice: with few candidates per
image (objectness logits shifted down by 5, as a trained net's mostly empty cells give) and with
every cell a candidate (an untrained net's first validation).
"""

import argparse

import torch

from benchmarks.export import ms_per_call
from projects.detection.boxes import detection_loss, postprocess

GRID, STRIDE, CLASSES = 16, 8, 3


def targets(gen: torch.Generator, batch: int) -> list[dict[str, torch.Tensor]]:
    made = []
    for _ in range(batch):
        n = int(torch.randint(1, 6, (), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 100
        wh = torch.rand(n, 2, generator=gen) * 40 + 4
        labels = torch.randint(0, CLASSES, (n,), generator=gen)
        made.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    boxes = targets(gen, args.batch)
    raw = torch.randn(args.batch, GRID, GRID, 1 + CLASSES + 4, generator=gen)
    outputs = raw.clone().requires_grad_()
    few = raw.clone()
    few[..., 0] -= 5  # sigmoid(obj) mostly < 0.05: a few candidates per image

    def loss_step():
        detection_loss(outputs, boxes, STRIDE, CLASSES)["loss"].backward()

    rows = {
        "assignment + loss + backward": ms_per_call(loss_step, (), args.calls),
        "postprocess, few candidates": ms_per_call(postprocess, (few, STRIDE), args.calls),
        "postprocess, every cell": ms_per_call(postprocess, (raw, STRIDE), args.calls),
    }
    print(f"detection box logic, batch {args.batch}, {GRID}x{GRID} cells, 1 thread, medians")
    for name, ms in rows.items():
        print(f"{name:<32}{ms:8.2f} ms")


if __name__ == "__main__":
    main()
