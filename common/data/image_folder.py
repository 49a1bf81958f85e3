"""Your own images, one sub-folder per class, decoded once into in-memory uint8 tensors.

    make train PROJECT=<name> data=image_folder data.root=/path/to/folder

Layouts: `root/<class_name>/*.{jpg,jpeg,png,bmp,webp}`, or `root/train/<class_name>/...` with
`root/val/` and/or `root/test/` holding the same class folders (see `find_layout`).
"""

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.data.base import Splits
from common.data.files import (
    SPLITS,
    cache_key,
    cached,
    class_dirs,
    find_layout,
    for_each_file,
    list_files,
)
from common.data.images import ImageDataModule, decode_image
from common.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUT = (
    "<root>/<class_name>/<image>.jpg|jpeg|png|bmp|webp, one sub-folder per class (or "
    "<root>/train/<class_name>/..., with <root>/val and/or <root>/test beside it)"
)
CACHE_VERSION = 2  # bump when decoding or the cache's contents change, so old caches are unused


def decode_images(paths: list[str | Path], size: int, in_chans: int) -> torch.Tensor:
    """Image files -> uint8 (N, 3, size, size), or (N, size, size) when in_chans == 1.

    Decoded on a small thread pool (`for_each_file`; PIL releases the GIL while decoding and
    resizing). A file that cannot be decoded is a UserError naming it: nothing is skipped.
    """
    n, mode = len(paths), "L" if in_chans == 1 else "RGB"
    out = np.empty((n, size, size) if mode == "L" else (n, size, size, 3), dtype=np.uint8)

    def read(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], size, mode)
        except Exception as err:
            raise UserError(
                f"cannot decode the image {paths[i]} ({type(err).__name__}: {err}); fix or "
                "remove the file"
            ) from err

    for_each_file(n, read, f"decoding {n} images")
    images = torch.from_numpy(out)
    return images if mode == "L" else images.permute(0, 3, 1, 2).contiguous()


class ImageFolderDataModule(ImageDataModule):
    """A folder of your own images: `root/<class_name>/*.{jpg,jpeg,png,bmp,webp}`.

    Class names sorted alphabetically give the labels 0..K-1 (`class_names`); the folders of
    `find_layout` give the splits, and a seeded `test_size` and `val_size` of the training pool
    stand in for the ones the folder lacks (`test_size=0`: test on the validation split).

    Each image is converted to RGB (grey "L" when `in_chans=1`), resized (bilinear,
    antialiased) so its SHORTER side is `image_size`, then center-cropped to
    image_size x image_size; images already that size are not resampled. The uint8 tensors,
    (N, 3, S, S) or (N, S, S) for grey, are cached in `<data_dir>/image_folder/<key>.pt`, the
    key hashing the folder, size, channels and every file's path, size and mtime: a folder is
    decoded once (by `prepare_data`, one process per node), and reloads take a fraction of a
    second. Normalization uses the training split's own per-channel mean and std.
    `num_classes` must match the number of class folders (the config counts them with the
    `class_count` resolver); `min_classes=1` takes one folder of unlabelled images (for
    generative models).
    """

    name = "image folder"

    def __init__(
        self,
        data_dir: str,
        root: str | None = None,
        min_classes: int = 2,
        in_chans: int = 3,
        image_size: int = 32,
        **kwargs,
    ):
        super().__init__(data_dir, in_chans=in_chans, image_size=image_size, **kwargs)
        if self.image_size < 1:
            raise UserError(f"data.image_size={self.image_size} must be positive")
        self.min_classes = min_classes
        self.root = Path(root).expanduser() if root is not None else None
        self._decoded: tuple[str, dict] | None = None  # prepare_data -> setup in one process
        if self.synthetic:
            return
        if self.root is None:
            raise UserError(
                f"data.root is not set: point it at a folder of your images, laid out as "
                f"{LAYOUT}, with data.root=/path/to/folder, or use data.synthetic=true"
            )
        if not self.root.is_dir():
            problem = "is not a folder" if self.root.exists() else "does not exist"
            raise UserError(
                f"data.root={root} {problem}: expected a folder laid out as {LAYOUT}. Set "
                "data.root=/path/to/folder, or use data.synthetic=true"
            )

    @property
    def location(self) -> Path:
        return self.root

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_dir) / "image_folder"

    def prepare_data(self) -> None:
        """Decode the folder into the cache (once per node, before `setup` on every process)."""
        if not self.synthetic:
            self._decoded = self._read_folder()

    def read(self) -> Splits:
        _, data = self._decoded or self._read_folder()
        self._decoded = None  # let the memory go with the datasets
        self.class_names = list(data["classes"])
        return Splits(*(TensorDataset(*data[s]) if data[s] else None for s in SPLITS))

    def _read_folder(self) -> tuple[str, dict]:
        """(cache key, {"classes", "train", "val", "test": (images, labels) or None})."""
        folders = find_layout(self.root)
        classes = class_dirs(folders["train"])
        if len(classes) < max(1, self.min_classes):
            found = f"only the class folder {classes[0]!r}" if classes else "no class sub-folders"
            one = " (data.min_classes=1: one folder of unlabelled images, for generative models)"
            raise UserError(
                f"{folders['train']} has {found}; expected {LAYOUT}, with at least "
                f"{max(1, self.min_classes)} classes{one if classes else ''}. Set "
                "data.root=/path/to/folder, or use data.synthetic=true"
            )
        for split in ("val", "test"):
            if folders[split] is not None and not class_dirs(folders[split]):
                raise UserError(
                    f"the {split} folder {folders[split]} has no class sub-folders; expected the "
                    f"training folder's ({', '.join(classes)}). Fill it, or remove it to hold "
                    f"out data.{split}_size of the training images instead"
                )
        files = {
            split: None
            if folder is None
            else list_files(self.root, folder, classes, IMAGE_EXTENSIONS, LAYOUT, "images")
            for split, folder in folders.items()
        }
        if len(classes) != self.num_classes:
            raise UserError(
                f"data.num_classes={self.num_classes} but {folders['train']} has {len(classes)} "
                "class folders; leave data.num_classes to the config, which counts them"
            )
        settings = f"{CACHE_VERSION}|{self.image_size}|{self.in_chans}"
        key = cache_key(self.root, settings, files)
        if self._decoded is not None and self._decoded[0] == key:
            return self._decoded
        sizes = {split: None if f is None else len(f) for split, f in files.items()}

        def build() -> dict:
            data = {"version": CACHE_VERSION, "classes": classes}
            for split, found in files.items():
                if found is None:
                    data[split] = None
                    continue
                paths = [os.path.join(self.root, f[0]) for f in found]
                images = decode_images(paths, self.image_size, self.in_chans)
                data[split] = (images, torch.tensor([f[1] for f in found], dtype=torch.int64))
            return data

        check = lambda data: self._check_cache(data, classes, sizes)  # noqa: E731
        data = cached(self.cache_dir / f"{key}.pt", build, check, "image")
        return key, data

    def _check_cache(self, data: dict, classes: list[str], sizes: dict) -> None:
        """Raise unless the cached `data` holds this folder's classes and, per split, `sizes`
        ({split: number of images, or None for a split the folder does not have}) images."""
        s = self.image_size
        shape = (s, s) if self.in_chans == 1 else (3, s, s)

        def valid(pair, n: int | None) -> bool:
            if n is None:
                return pair is None
            images, labels = pair
            return (images.dtype, images.shape, labels.dtype, labels.shape) == (
                torch.uint8,
                (n, *shape),
                torch.int64,
                (n,),
            )

        if not (
            data["version"] == CACHE_VERSION
            and list(data["classes"]) == classes
            and all(valid(data[split], n) for split, n in sizes.items())
        ):
            raise ValueError("unexpected contents")
