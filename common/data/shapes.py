"""Synthetic detection data (circles, squares, triangles), and what every detection datamodule
shares: the dataset, the collate, the device loader and the batch-wise flip.

The batch contract, for `ShapesDataModule` and `common.data.voc.VOCDataModule` alike:

    images:  uint8 (B, 3, S, S) out of the loader; after `on_after_batch_transfer`, normalized
             float32 (B, 3, S, S) on the training device
    targets: a list of B dicts {"boxes": float32 (N_i, 4), "labels": int64 (N_i,)}, N_i >= 0

Boxes are (x1, y1, x2, y2) in pixels of the S x S image, pixel edges rather than centres: a box
of a single pixel in column c spans x1 = c, x2 = c + 1, so a horizontal flip is x' = S - x.
Labels index `class_names`.
"""

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Subset

from common.data.base import DataModule
from common.data.images import ImageDataModule
from common.data.loaders import TensorLoader
from common.errors import UserError

SHAPES = ("circle", "square", "triangle")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHUNK = 4096  # images drawn at a time (even): bounds the working memory, not the result
MIN_COLOUR_GAP = 80  # mean |shape - background| over RGB, in 0..255: every shape stands out


# --- the shared detection pieces ------------------------------------------------------------------


class DetectionDataset(Dataset):
    """Images with a variable number of labelled boxes each, held as (padded) tensors.

    images: uint8 (N, 3, S, S); boxes: N float tensors (N_i, 4) xyxy; labels: N int64 (N_i,).
    Stored padded to M = max N_i, (N, M, 4) and (N, M), so a batch of indices is one fancy-index
    per tensor; `counts` (N,) stays on the CPU, so cutting off the padding never waits on a GPU.
    """

    def __init__(self, images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]):
        if not len(images) == len(boxes) == len(labels):
            raise ValueError("images, boxes and labels need the same length")
        counts = torch.tensor([len(b) for b in labels], dtype=torch.int64)
        padded_boxes = pad_sequence([b.float().reshape(-1, 4) for b in boxes], batch_first=True)
        padded_labels = pad_sequence([lb.long() for lb in labels], True, padding_value=-1)
        self._set(images, padded_boxes, padded_labels, counts)

    @classmethod
    def from_padded(
        cls, images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor
    ) -> "DetectionDataset":
        """From (N, M, 4) boxes and (N, M) labels whose first counts[i] rows of sample i are real."""
        dataset = cls.__new__(cls)
        dataset._set(images, boxes, labels, counts.cpu())
        return dataset

    def _set(self, images, boxes, labels, counts) -> None:
        self.images, self.boxes, self.labels, self.counts = images, boxes, labels, counts

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = int(self.counts[i])
        return self.images[i], {"boxes": self.boxes[i, :n], "labels": self.labels[i, :n]}

    def subset(self, indices: torch.Tensor) -> "DetectionDataset":
        """A copy holding the samples at `indices` (a CPU index tensor), in that order."""
        dev = self.images.device
        idx = indices.to(dev)
        return self.from_padded(
            self.images[idx], self.boxes[idx], self.labels[idx], self.counts[indices]
        )

    def to(self, device: torch.device) -> "DetectionDataset":
        if self.images.device == device:
            return self
        move = (t.to(device) for t in (self.images, self.boxes, self.labels))
        return self.from_padded(*move, self.counts)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.images, self.boxes, self.labels))


def resolve_class_names(
    dataset: str, known: tuple[str, ...], num_classes: int, class_names: list[str] | None
) -> list[str]:
    """The names labels 0..K-1 stand for: the dataset's own (`known`), or `class_names` shown
    in their place. `num_classes` and the config's names must agree with the dataset's K: they
    are in the data config so that the model's config can interpolate them."""
    k = len(known)
    if num_classes != k:
        raise UserError(f"{dataset} has {k} classes ({', '.join(known)}): data.num_classes={k}")
    names = list(known if class_names is None else class_names)
    if len(names) != k:
        raise UserError(f"data.class_names has {len(names)} names for the {k} classes of {dataset}")
    return names


def as_detection(dataset: Dataset) -> Dataset:
    """A Subset of a DetectionDataset (what the seeded split makes) as a DetectionDataset of its
    own, indexed once; anything else unchanged."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, DetectionDataset):
        return dataset.dataset.subset(torch.as_tensor(dataset.indices, dtype=torch.int64))
    return dataset


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """[(uint8 image (3, S, S), {"boxes", "labels"}), ...] -> (uint8 (B, 3, S, S), [B dicts]).

    Targets stay a list: each image has its own number of boxes.
    """
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


class DetectionLoader(TensorLoader):
    """`TensorLoader` over a DetectionDataset: the same seeded shuffles, `set_epoch` and DDP
    shards, yielding (images (B, 3, S, S), [B target dicts]) from tensors on their device."""

    def __init__(self, dataset: DetectionDataset, **kwargs):
        super().__init__(dataset.images, dataset.boxes, dataset.labels, **kwargs)
        self.counts = dataset.counts  # (N,) on the CPU

    def __iter__(self):
        indices = self._indices()
        self.epoch += 1
        host = indices.cpu()  # one small copy per epoch: the counts are looked up on the host
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        for start in range(0, stop, self.batch_size):
            idx = indices[start : start + self.batch_size]
            # (B, 3, S, S), (B, M, 4) and (B, M): one fancy-index each.
            images, boxes, labels = (t[idx] for t in self.tensors)
            counts = self.counts[host[start : start + self.batch_size]].tolist()
            # The padding is cut off by slicing (views): no per-sample kernels, no device sync.
            targets = [
                {"boxes": boxes[j, :n], "labels": labels[j, :n]} for j, n in enumerate(counts)
            ]
            yield images, targets


def flip_horizontally(
    images: torch.Tensor, targets: list[dict], flipped: torch.Tensor
) -> tuple[torch.Tensor, list[dict]]:
    """Mirror the images where `flipped` (bool (B,), on the images' device), and their boxes.

    images (B, C, H, W) of width W; a box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2). All
    boxes of the batch are flipped in one op (cat, where, split), not image by image.
    """
    width = images.shape[-1]
    images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    counts = [len(t["boxes"]) for t in targets]
    boxes = torch.cat([t["boxes"] for t in targets])  # (sum N_i, 4)
    if not len(boxes):
        return images, targets
    repeats = torch.tensor(counts, device=flipped.device)
    per_box = flipped.repeat_interleave(repeats, output_size=len(boxes))  # (sum N_i,)
    x1, y1, x2, y2 = boxes.unbind(1)
    mirrored = torch.stack([width - x2, y1, width - x1, y2], 1)
    boxes = torch.where(per_box[:, None], mirrored, boxes)
    return images, [{**t, "boxes": b} for t, b in zip(targets, boxes.split(counts), strict=True)]


class DetectionDataModule(DataModule):
    """What detection datamodules share: `class_names`, the contract's loaders (a
    `DetectionLoader` for `loader="device"`, a DataLoader with `collate` otherwise), and
    `on_after_batch_transfer`, which normalizes on the device and, while training, flips half
    the images and their boxes (`flip`). Normalized with ImageNet's mean and std (what
    pretrained backbones expect).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    normalize = "standard"  # by mean and std, as `_affine` reads it
    _affine = ImageDataModule._affine  # (scale, shift) per device, cached: the same normalization

    def __init__(
        self,
        data_dir: str,
        class_names: list[str],
        image_size: int,
        flip: bool = True,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size = image_size
        self.flip = flip
        self._affine_cache: tuple = (None, None)

    def resident(self, dataset: Dataset) -> Dataset | None:
        dataset = as_detection(dataset)
        return dataset if isinstance(dataset, DetectionDataset) else None

    collate_fn = staticmethod(collate)

    def device_loader(self, dataset: Dataset, train: bool, rank: int, world: int):
        return DetectionLoader(
            as_detection(dataset),
            batch_size=self.batch_size_per_device,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, targets = batch
        if images.dtype != torch.uint8:
            return batch
        if self.flip and self.trainer is not None and self.trainer.training:
            # torch's global RNG on the device, which `seed_everything` seeds.
            flipped = torch.rand(len(images), device=images.device) < 0.5
            images, targets = flip_horizontally(images, targets, flipped)
        scale, shift = self._affine(images.shape[1], images.device)
        return torch.addcmul(shift, images.float(), scale), targets  # (B, 3, S, S)


# --- the synthetic shapes ---------------------------------------------------------------------------


def place_boxes(
    counts: torch.Tensor,
    sizes: torch.Tensor,
    image_size: int,
    max_overlap: float,
    gen: torch.Generator,
    tries: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square boxes of side `sizes` (n, m), the first counts[i] of each row placed at random.

    A box is redrawn (up to `tries` times, then dropped) while it would bring the covered part
    of an earlier box above `max_overlap` of that box's area: shapes drawn later lie on top, so
    each object keeps most of itself in view (and IoU <= max_overlap for every pair). Vectorized
    over the n images: one loop step per slot and try. Returns nominal boxes (n, m, 4) xyxy and
    which slots hold an object, bool (n, m).
    """
    n, m = sizes.shape
    boxes = torch.zeros(n, m, 4)
    placed = torch.zeros(n, m, dtype=torch.bool)
    covered = torch.zeros(n, m)  # area of each box already under later boxes
    area = sizes.float() ** 2
    side = sizes.float()
    for k in range(m):
        pending = k < counts  # (n,)
        free = (image_size - sizes[:, k] + 1).float()  # top-left positions that fit
        for _ in range(tries):
            if not pending.any():
                break
            x1 = (torch.rand(n, generator=gen) * free).floor()
            y1 = (torch.rand(n, generator=gen) * free).floor()
            cand = torch.stack([x1, y1, x1 + side[:, k], y1 + side[:, k]], 1)  # (n, 4)
            earlier = boxes[:, :k]  # (n, k, 4)
            w = (
                torch.minimum(cand[:, None, 2], earlier[..., 2])
                - torch.maximum(cand[:, None, 0], earlier[..., 0])
            ).clamp(min=0)
            h = (
                torch.minimum(cand[:, None, 3], earlier[..., 3])
                - torch.maximum(cand[:, None, 1], earlier[..., 1])
            ).clamp(min=0)
            inter = w * h * placed[:, :k]  # (n, k)
            fits = ((covered[:, :k] + inter) <= max_overlap * area[:, :k]).all(1)
            take = pending & fits
            boxes[take, k] = cand[take]
            placed[take, k] = True
            covered[:, :k] += inter * take[:, None]
            pending &= ~fits
    return boxes, placed


def distinct_colours(background: torch.Tensor, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """Random RGB colours (*shape) at least MIN_COLOUR_GAP (mean over channels) from
    `background` (broadcastable to shape); redrawn where too close, else black or white."""
    colours = torch.randint(256, shape, generator=gen)
    for _ in range(10):
        close = (colours - background).abs().float().mean(-1) < MIN_COLOUR_GAP
        redraw = torch.randint(256, shape, generator=gen)
        colours = torch.where(close[..., None], redraw, colours)
    close = (colours - background).abs().float().mean(-1) < MIN_COLOUR_GAP
    opposite = torch.where(background < 128, 255, 0).expand(shape)  # a gap >= 128 per channel
    return torch.where(close[..., None], opposite, colours)


def shape_profiles(
    labels: torch.Tensor, left: torch.Tensor, top: torch.Tensor, size: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each shape as two 1-d profiles, (B, window) each: its mask in a window is
    `cols[:, None, :] <= rows[:, :, None]`, (B, window, window), one compare per pixel.

    Shape `labels` (B,) of side `size` with its box's top-left at (left, top) in the window,
    tested at pixel centres. circle: (x - cx)^2 <= r^2 - (y - cy)^2; square: 0 <= 1 inside the
    box, 2 or -1 outside; triangle (apex up, base at the bottom): |x - cx| <= (y - top) / 2,
    -1 above or below it.
    """
    grid = torch.arange(window) + 0.5  # (W,) pixel centres
    x0, y0, s = (t.float().view(-1, 1) for t in (left, top, size))  # (B, 1)
    xs, ys = grid - x0, grid - y0  # (B, W): from the box's left and top edges
    in_x, in_y = (xs > 0) & (xs < s), (ys > 0) & (ys < s)
    r = s / 2
    circle = ((xs - r).square(), r.square() - (ys - r).square())
    square = (torch.where(in_x, 0.0, 2.0), torch.where(in_y, 1.0, -1.0))
    triangle = ((xs - r).abs(), torch.where(in_y, ys / 2, -1.0))
    kind = labels.view(-1, 1)
    cols, rows = (
        torch.where(kind == 0, c, torch.where(kind == 1, q, t))
        for c, q, t in zip(circle, square, triangle, strict=True)
    )
    return cols, rows


def generate_shapes(
    n: int,
    image_size: int = 128,
    max_objects: int = 4,
    min_size: int = 16,
    max_size: int = 48,
    num_classes: int = 3,
    max_overlap: float = 0.5,
    noise: float = 24.0,
    seed: int = 0,
    split_seed: int = 0,
) -> DetectionDataset:
    """n images of 1..max_objects shapes (classes SHAPES[:num_classes]) on random backgrounds.

    Each background is one random colour, plain or (every other image: splits and loaders
    shuffle) with grey noise of standard deviation `noise` (uniform, one value per pixel); each
    shape has a random colour far from it, a side of min_size..max_size pixels and a place from
    `place_boxes`, and is drawn over the ones before it. A box is the tight extent of its shape's
    pixels (the whole shape, even where a later one covers part of it). Seeded by (seed,
    split_seed): splits differ, runs repeat.

    Vectorized per slot over CHUNK images: a shape is a compare of two 1-d profiles on a
    max_size window, painted through a strided view of every window of the images (`unfold`),
    indexed by each image's window position: no per-pixel index tensors.
    """
    s_img, m, window = image_size, max_objects, max_size
    gen = torch.Generator().manual_seed(seed * 1_000_003 + split_seed + 1)
    counts = torch.randint(1, m + 1, (n,), generator=gen)
    labels = torch.randint(num_classes, (n, m), generator=gen)
    sizes = torch.randint(min_size, max_size + 1, (n, m), generator=gen)
    nominal, placed = place_boxes(counts, sizes, s_img, max_overlap, gen)  # (n, m, 4), (n, m)
    background = torch.randint(256, (n, 3), generator=gen)
    # Noise lives in uint8: grain in [0, 2a] on a colour in [a, 255 - a], shifted down by a.
    a = min(127, round(noise * 3**0.5))  # uniform on [-a, a] has standard deviation a / sqrt(3)
    noisy = torch.arange(n) % 2 == 1
    background[noisy] = background[noisy].clamp(a, 255 - a)
    colours = distinct_colours(background[:, None], (n, m, 3), gen).to(torch.uint8)
    base = torch.where(noisy[:, None], background - a, background).to(torch.uint8)  # (n, 3)

    images = torch.empty(n, 3, s_img, s_img, dtype=torch.uint8)
    boxes = torch.zeros(n, m, 4)
    for start in range(0, n, CHUNK):
        chunk = images[start : start + CHUNK]  # a view: written in place
        b = len(chunk)
        flat = base[start : start + b].view(b, 3, 1, 1)
        # CHUNK is even, so the chunk's odd rows are the noisy images. Plain: (b/2, 3, S, S).
        chunk[0::2].copy_(flat[0::2].expand(-1, -1, s_img, s_img))
        grain = torch.randint(
            0, 2 * a + 1, (b // 2, 1, s_img, s_img), generator=gen, dtype=torch.uint8
        )
        torch.add(flat[1::2], grain, out=chunk[1::2])  # (b/2, 3, S, S), no overflow
        windows = chunk.unfold(2, window, 1).unfold(3, window, 1)  # (b, 3, S-W+1, S-W+1, W, W)
        for j in range(m):
            idx = placed[start : start + b, j].nonzero().squeeze(1)  # images with a j-th shape
            g = start + idx
            x1, y1 = nominal[g, j, 0].long(), nominal[g, j, 1].long()
            # Each window lies inside the image and holds the whole shape.
            wx, wy = x1.clamp(max=s_img - window), y1.clamp(max=s_img - window)
            cols, rows = shape_profiles(labels[g, j], x1 - wx, y1 - wy, sizes[g, j], window)
            # Tight extents from the profiles: a column is drawn where it is <= some row.
            cols_hit = cols <= rows.max(1, keepdim=True).values  # (k, W)
            rows_hit = rows >= cols.min(1, keepdim=True).values
            boxes[g, j] = torch.stack(
                [
                    wx + cols_hit.int().argmax(1),
                    wy + rows_hit.int().argmax(1),
                    wx + window - cols_hit.flip(1).int().argmax(1),
                    wy + window - rows_hit.flip(1).int().argmax(1),
                ],
                1,
            ).float()
            mask = cols[:, None, :] <= rows[:, :, None]  # (k, W, W)
            patch = windows[idx, :, wy, wx]  # (k, 3, W, W)
            colour = colours[g, j].view(-1, 3, 1, 1)
            windows[idx, :, wy, wx] = torch.where(mask[:, None], colour, patch)

    # Objects that found no place are dropped; the rest move to the front, in drawing order.
    order = torch.sort((~placed).int(), dim=1, stable=True).indices  # (n, m)
    counts = placed.sum(1)
    real = torch.arange(m) < counts[:, None]  # (n, m)
    labels = torch.where(real, labels.gather(1, order), -1)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4)) * real[..., None]
    return DetectionDataset.from_padded(images, boxes, labels, counts)


class ShapesDataModule(DetectionDataModule):
    """Circles, squares and triangles to detect, generated in memory (seconds, no download).

    A learnable stand-in for a real detection set: S x S images (`image_size`) with
    1..`max_objects` shapes of side `min_size`..`max_size`, overlapping at most `max_overlap` of
    any earlier shape's box. `synthetic_size` = (train pool, test set), seeded by `seed` with a
    different split seed each; `val_size` is split off the pool. `class_names` (default
    SHAPES) only renames the classes. `synthetic` is accepted so all data configs share their
    keys; this data is always synthetic.
    """

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 3,
        class_names: list[str] | None = None,
        image_size: int = 128,
        synthetic_size: tuple[int, int] = (6000, 500),
        max_objects: int = 4,
        min_size: int = 16,
        max_size: int = 48,
        max_overlap: float = 0.5,
        noise: float = 24.0,
        flip: bool = True,
        **kwargs,
    ):
        if not 4 <= min_size <= max_size <= image_size:
            raise UserError(
                f"data.min_size={min_size}, data.max_size={max_size}: need "
                f"4 <= min_size <= max_size <= image_size ({image_size})"
            )
        if max_objects < 1 or not 0 < max_overlap <= 1:
            raise UserError(
                f"data.max_objects={max_objects} must be >= 1 and data.max_overlap={max_overlap} "
                "in (0, 1]"
            )
        names = resolve_class_names("shapes", SHAPES, num_classes, class_names)
        super().__init__(data_dir, names, image_size, flip, **kwargs)
        self.synthetic_size = tuple(synthetic_size)
        self.max_objects, self.min_size, self.max_size = max_objects, min_size, max_size
        self.max_overlap, self.noise = max_overlap, noise

    def generate(self, n: int, split_seed: int) -> DetectionDataset:
        return generate_shapes(
            n,
            image_size=self.image_size,
            max_objects=self.max_objects,
            min_size=self.min_size,
            max_size=self.max_size,
            num_classes=self.num_classes,
            max_overlap=self.max_overlap,
            noise=self.noise,
            seed=self.seed,
            split_seed=split_seed,
        )

    def load(self) -> tuple[DetectionDataset, DetectionDataset]:
        n_train, n_test = self.synthetic_size
        return self.generate(n_train, split_seed=0), self.generate(n_test, split_seed=1)
