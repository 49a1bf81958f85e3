"""Pascal VOC detection (2007 by default): 20 classes, boxes from the XML annotations.

Read sample by sample in DataLoader workers (decode, box-aware augmentation, resize to S x S):
at 9,963 images of about 500 x 375 pixels it is too big to keep on a device. Batches follow
the contract of `common.data.shapes`.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from common.data.shapes import DetectionDataModule, generate_shapes, resolve_class_names
from common.errors import UserError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
FILL = (124, 116, 104)  # ImageNet's mean colour, 0..255: what zoomed-out borders are filled with


def read_annotation(
    path: str | Path, class_names: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A VOC XML file -> boxes float32 (N, 4) xyxy and labels int64 (N,), `difficult` ones left out.

    VOC counts pixels from 1 and includes both ends: xmin=1, xmax=10 is the first ten columns,
    which in 0-based pixel edges (as everywhere here) is x1 = 0, x2 = 10. Objects marked
    difficult are skipped, for training and testing alike: VOC's own evaluation ignores
    detections of them, which a plain mAP over these targets counts as false positives, so
    its test mAP reads slightly low.
    """
    boxes, labels = [], []
    for obj in ET.parse(path).getroot().iter("object"):
        if obj.findtext("difficult", "0").strip() == "1":
            continue
        name = obj.findtext("name", "").strip()
        if name not in class_names:
            raise UserError(f"{path}: unknown class {name!r}, not one of the 20 VOC classes")
        box = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        labels.append(class_names.index(name))
    return (
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
    )


def voc_transform(image_size: int, augment: bool):
    """torchvision v2 pipeline on (Image, {"boxes": BoundingBoxes, "labels"}): boxes follow.

    Training (`augment`): colour jitter, zoom out (up to 2x, borders in the mean colour), a
    random crop keeping some boxes' centres (SSD's IoU crop), dropping boxes it cut to nothing.
    Then always a resize to image_size x image_size (aspect ratio not kept). No flip here: the
    datamodule flips batches on the device, images and boxes together.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = []
    if augment:
        steps += [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill={tv_tensors.Image: FILL, "others": 0}, side_range=(1.0, 2.0)),
            v2.RandomIoUCrop(),
            v2.SanitizeBoundingBoxes(),
        ]
    steps.append(v2.Resize((image_size, image_size), antialias=True))
    if augment:
        steps.append(v2.SanitizeBoundingBoxes())  # boxes shrunk below a pixel by the resize
    return v2.Compose(steps)


class VOCDataset(Dataset):
    """One VOC image set (`trainval`, `test`, ...) from `root/<VOCdevkit/VOC2007>`.

    Item: (uint8 image (3, S, S), {"boxes": float32 (N, 4), "labels": int64 (N,)}), decoded,
    augmented (`augment`) and resized when asked for, in the DataLoader worker.
    """

    def __init__(self, root: str, year: str, image_set: str, image_size: int, augment: bool):
        from torchvision.datasets import VOCDetection

        voc = VOCDetection(root, year=year, image_set=image_set, download=False)
        self.images, self.annotations = list(voc.images), list(voc.targets)
        self.root, self.year, self.image_set = root, year, image_set
        self.image_size, self.augment = image_size, augment
        self.transform = voc_transform(image_size, augment)

    def without_augmentation(self) -> "VOCDataset":
        """The same images, resized only (for the validation split of the training pool)."""
        plain = object.__new__(VOCDataset)
        plain.__dict__.update(self.__dict__)
        plain.augment, plain.transform = False, voc_transform(self.image_size, False)
        return plain

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(self.images[i]) as file:
            image = tv_tensors.Image(pil_to_tensor(file.convert("RGB")))  # uint8 (3, H, W)
        boxes, labels = read_annotation(self.annotations[i], VOC_CLASSES)
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=image.shape[-2:])
        image, target = self.transform(image, {"boxes": boxes, "labels": labels})
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor).float(),
            "labels": target["labels"],
        }


class VOCDataModule(DetectionDataModule):
    """Pascal VOC: `image_sets` = (train pool, test set), trainval and test for 2007.

    torchvision downloads the archives in `prepare_data` (rank 0 only) into
    data_dir/VOCdevkit/VOC<year>/. Images become image_size x image_size (default 320);
    training samples are augmented in the workers (`augment`, see `voc_transform`) and flipped
    batch-wise on the device (`flip`); the validation split of the pool is only resized.
    `loader` must be "dataloader". `class_names` (default VOC_CLASSES) only renames the
    classes shown; annotations are matched by VOC's own names.

    `synthetic=true` needs no files: the shapes generator (`common.data.shapes`) at this
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
        download: bool = True,
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
        self.download, self.augment = download, augment
        self.synthetic_size = tuple(synthetic_size)
        self.voc_root = Path(data_dir) / DATASET_YEAR_DICT[self.year]["base_dir"]

    def expected(self) -> list[str]:
        """What must exist under voc_root, folders with a trailing slash."""
        return [
            "JPEGImages/",
            "Annotations/",
            *(f"ImageSets/Main/{s}.txt" for s in self.image_sets),
        ]

    def _missing(self) -> list[str]:
        return [p for p in self.expected() if not (self.voc_root / p).exists()]

    def fetch(self) -> None:
        from torchvision.datasets import VOCDetection

        archives = {}  # 2007's test set is an archive of its own; the other sets share one
        for image_set in self.image_sets:
            archives.setdefault("test" if image_set == "test" else "trainval", image_set)
        for image_set in archives.values():
            VOCDetection(self.data_dir, year=self.year, image_set=image_set, download=True)

    def missing_help(self) -> tuple[str, str]:
        return (
            f"Pascal VOC {self.year} files missing in {self.voc_root} (expected "
            f"{', '.join(self.expected())})",
            f"Put the VOCdevkit folder in {self.data_dir}, or train on synthetic shapes with "
            "data=shapes (or data.synthetic=true)",
        )

    def load(self) -> tuple[Dataset, Dataset]:
        if self.synthetic:
            n_train, n_test = self.synthetic_size
            s = self.image_size
            shapes = dict(image_size=s, min_size=s // 8, max_size=3 * s // 8, seed=self.seed)
            return generate_shapes(n_train, **shapes), generate_shapes(
                n_test, **shapes, split_seed=1
            )
        if self._missing():
            self.prepare_data()  # raises the readable error when the files cannot be had
        train_set, test_set = self.image_sets
        try:
            return (
                VOCDataset(self.data_dir, self.year, train_set, self.image_size, self.augment),
                VOCDataset(self.data_dir, self.year, test_set, self.image_size, False),
            )
        except Exception as err:
            raise UserError(
                f"cannot read Pascal VOC from {self.voc_root} ({type(err).__name__}: {err}). "
                "Delete the folder to download again, or use data=shapes"
            ) from err

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        # The validation split comes out of the (augmented) training pool: resize it only.
        val = self.val_set
        if isinstance(val, Subset) and isinstance(val.dataset, VOCDataset) and val.dataset.augment:
            self.val_set = Subset(val.dataset.without_augmentation(), val.indices)
