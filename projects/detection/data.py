"""The detection project's data: the batch contract, synthetic shapes, and Pascal VOC.

The batch contract, for `ShapesDataModule` and `VOCDataModule` alike:

    images:  uint8 (B, 3, S, S) out of the loader; after `on_after_batch_transfer`, normalized
             float32 (B, 3, S, S) on the training device
    targets: a list of B dicts {"boxes": float32 (N_i, 4), "labels": int64 (N_i,)}, N_i >= 0

Boxes are (x1, y1, x2, y2) in pixels of the S x S image, pixel edges rather than centres: a box
of a single pixel in column c spans x1 = c, x2 = c + 1, so a horizontal flip is x' = S - x.
Labels index `class_names`.
"""

from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Subset

from common.data.base import DataModule, Splits
from common.data.images import Normalizer
from common.data.spec import DataSpec
from common.errors import UserError
from projects.detection.shapes import SHAPES, generate_shapes
from projects.detection.voc import VOC_CLASSES, VOCDataset

# ImageNet's statistics: what pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What `loader=device` holds on the device: images, padded boxes and labels."""
        return self.images, self.boxes, self.labels

    def batch(self, idx: torch.Tensor, host_idx: torch.Tensor) -> tuple[torch.Tensor, list]:
        """The batch of the samples at `idx` (on the tensors' device; `host_idx`, the same on the
        CPU): (images (B, 3, S, S), [B target dicts]). One fancy-index per tensor; the padding
        is cut off by slicing (views), with the counts looked up on the host: no per-sample
        kernels, no device sync."""
        images, boxes, labels = (t[idx] for t in self.tensors)  # (B, 3, S, S), (B, M, 4), (B, M)
        counts = self.counts[host_idx].tolist()
        targets = [{"boxes": boxes[j, :n], "labels": labels[j, :n]} for j, n in enumerate(counts)]
        return images, targets


def resolve_class_names(
    dataset: str, known: tuple[str, ...], num_classes: int, class_names: list[str] | None
) -> list[str]:
    """The names labels 0..K-1 stand for: the dataset's own (`known`), or `class_names` shown
    in their place (the model gets them in its data spec). `num_classes` must be the dataset's
    K: the model's config reads it to size the net."""
    k = len(known)
    if num_classes != k:
        raise UserError(f"{dataset} has {k} classes ({', '.join(known)}): data.num_classes={k}")
    names = list(known if class_names is None else class_names)
    if len(names) != k:
        raise UserError(f"data.class_names has {len(names)} names for the {k} classes of {dataset}")
    return names


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """[(uint8 image (3, S, S), {"boxes", "labels"}), ...] -> (uint8 (B, 3, S, S), [B dicts]).

    Targets stay a list: each image has its own number of boxes.
    """
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


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
    """What detection datamodules share: `class_names`, the batch contract's collate (the
    device loader batches with `DetectionDataset.batch`), and `on_after_batch_transfer`, which
    normalizes on the device with ImageNet's mean and std and, while training, flips half the
    images and their boxes (`flip`)."""

    collate_fn = staticmethod(collate)

    def __init__(
        self,
        data_dir: str | None,
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
        self.normalizer = Normalizer(IMAGENET_MEAN, IMAGENET_STD)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, targets = batch
        if images.dtype != torch.uint8:
            return batch
        if self.flip and self.trainer is not None and self.trainer.training:
            # torch's global RNG on the device, which `seed_everything` seeds.
            flipped = torch.rand(len(images), device=images.device) < 0.5
            images, targets = flip_horizontally(images, targets, flipped)
        return self.normalizer(images), targets  # (B, 3, S, S)

    def spec(self) -> DataSpec:
        return DataSpec(
            class_names=self.class_names,
            image_size=self.image_size,
            in_chans=3,
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
        )


def shapes_dataset(n: int, **settings) -> DetectionDataset:
    """`generate_shapes(n, **settings)` as a dataset."""
    return DetectionDataset.from_padded(*generate_shapes(n, **settings))


class ShapesDataModule(DetectionDataModule):
    """Circles, squares and triangles to detect, generated in memory (seconds, no download).

    A learnable stand-in for a real detection set: S x S images (`image_size`) with
    1..`max_objects` shapes of side `min_size`..`max_size`, overlapping at most `max_overlap` of
    any earlier shape's box. `synthetic_size` = (train pool, test set), seeded by `seed` with a
    different split seed each; `val_size` is split off the pool. `class_names` (default
    SHAPES) only renames the classes.
    """

    def __init__(
        self,
        data_dir: str | None = None,
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

    def draw(self, n: int, split_seed: int) -> DetectionDataset:
        return shapes_dataset(
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

    def read(self) -> Splits:
        n_train, n_test = self.synthetic_size
        return Splits(self.draw(n_train, split_seed=0), None, self.draw(n_test, split_seed=1))


class VOCDataModule(DetectionDataModule):
    """Pascal VOC: `image_sets` = (train pool, test set), trainval and test for 2007.

    torchvision downloads the archives in `prepare_data` (rank 0 only) into
    data_dir/VOCdevkit/VOC<year>/. Images become image_size x image_size (default 320);
    training samples are augmented in the workers (`augment`, see `voc_transform`) and flipped
    batch-wise on the device (`flip`); the validation split of the pool is only resized.
    `loader` must be "dataloader". `class_names` (default VOC_CLASSES) only renames the
    classes shown; annotations are matched by VOC's own names.

    `synthetic=true` needs no files: the shapes generator (`shapes.py`) at this
    image size stands in, its circles, squares and triangles labelled 0, 1, 2 (aeroplane,
    bicycle, bird: the other 17 classes never occur). It exists so the pipeline can be run
    offline; `data=shapes` is the synthetic dataset proper.
    """

    def __init__(
        self,
        data_dir: str,
        year: str = "2007",
        image_sets: tuple[str, str] = ("trainval", "test"),
        num_classes: int = 20,
        class_names: list[str] | None = None,
        image_size: int = 320,
        augment: bool = True,
        flip: bool = True,
        synthetic_size: tuple[int, int] = (512, 64),
        **kwargs,
    ):
        from torchvision.datasets.voc import DATASET_YEAR_DICT

        names = resolve_class_names("Pascal VOC", VOC_CLASSES, num_classes, class_names)
        super().__init__(data_dir, names, image_size, flip, **kwargs)
        self.year = str(year)
        if self.year not in DATASET_YEAR_DICT:
            raise UserError(f"data.year={year}: Pascal VOC years are 2007 to 2012")
        self.image_sets = tuple(image_sets)
        if len(self.image_sets) != 2:
            raise UserError(
                f"data.image_sets={list(image_sets)}: two, the train pool and the test set"
            )
        if "test" in self.image_sets and self.year != "2007":
            raise UserError(
                f"Pascal VOC {self.year} has no public test set: use "
                "data.image_sets=[train,val], or data.year=2007"
            )
        if self.loader == "device" and not self.synthetic:
            raise UserError(
                "data.loader=device holds the data in device memory, and Pascal VOC is read "
                "file by file: use data.loader=dataloader"
            )
        self.augment = augment
        self.synthetic_size = tuple(synthetic_size)
        self.name = f"Pascal VOC {self.year}"
        self.voc_root = Path(data_dir) / DATASET_YEAR_DICT[self.year]["base_dir"]
        self.expected = ("JPEGImages/", "Annotations/")
        self.expected += tuple(f"ImageSets/Main/{s}.txt" for s in self.image_sets)

    alternative = "train on synthetic shapes with data=shapes (or data.synthetic=true)"

    @property
    def location(self) -> Path:
        return self.voc_root

    def fetch(self) -> None:
        from torchvision.datasets import VOCDetection

        archives = {}  # 2007's test set is an archive of its own; the other sets share one
        for image_set in self.image_sets:
            archives.setdefault("test" if image_set == "test" else "trainval", image_set)
        for image_set in archives.values():
            VOCDetection(self.data_dir, year=self.year, image_set=image_set, download=True)

    def generate(self) -> Splits:
        n_train, n_test = self.synthetic_size
        s = self.image_size
        shapes = dict(image_size=s, min_size=s // 8, max_size=3 * s // 8, seed=self.seed)
        train, test = (
            shapes_dataset(n_train, **shapes),
            shapes_dataset(n_test, **shapes, split_seed=1),
        )
        return Splits(train, None, test)

    def read(self) -> Splits:
        train_set, test_set = self.image_sets
        return Splits(
            VOCDataset(self.data_dir, self.year, train_set, self.image_size, self.augment),
            None,
            VOCDataset(self.data_dir, self.year, test_set, self.image_size, False),
        )

    def prepare_splits(self, train, val, test):
        # The validation split comes out of the (augmented) training pool: resize it only.
        if isinstance(val, Subset) and isinstance(val.dataset, VOCDataset) and val.dataset.augment:
            val = Subset(val.dataset.without_augmentation(), val.indices)
        return train, val, test
