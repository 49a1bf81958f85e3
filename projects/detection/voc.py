"""Reading Pascal VOC detection (2007 by default): 20 classes, boxes from the XML annotations.

Read sample by sample in DataLoader workers (decode, box-aware augmentation, resize to S x S):
at 9,963 images of about 500 x 375 pixels it is too big to keep on a device. Samples follow
the batch contract of `data.py`; `data.VOCDataModule` serves them.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.utils.data import Dataset

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
