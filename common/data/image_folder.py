"""Your own images, one sub-folder per class, decoded once into in-memory uint8 tensors.

    make train PROJECT=<name> data=image_folder data.root=/path/to/folder

Layouts: `root/<class_name>/*.{jpg,jpeg,png,bmp,webp}`, or `root/train/<class_name>/...` with an
optional `root/test/` (else `root/val/`) of the same class folders as the test set.
"""

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.data.images import ImageDataModule
from common.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUT = (
    "<root>/<class_name>/<image>.jpg|jpeg|png|bmp|webp, one sub-folder per class (or "
    "<root>/train/<class_name>/..., with an optional <root>/test or <root>/val beside it)"
)
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
PROGRESS_MIN_FILES = 2000  # below this, decoding takes about a second: no progress bar
CHUNK = 256  # images per thread-pool task


def class_dirs(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of `folder` that are classes (not hidden, not __MACOSX).

    `common.resolvers.class_count` applies the same rule, without importing torch.
    """
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"
    )


def find_layout(root: Path) -> tuple[Path, Path | None]:
    """(folder of the training pool, folder of the test set or None) under `root`."""
    train = root / "train"
    if train.is_dir() and class_dirs(train):
        for name in ("test", "val"):
            if (root / name).is_dir():
                return train, root / name
        return train, None
    return root, None


def list_images(root: Path, folder: Path, classes: list[str]) -> list[tuple[str, int, int, int]]:
    """(path relative to root, label, size in bytes, mtime in ns) for every image in
    `folder/<class>/`, sorted by class then file name.

    `folder`'s class folders must be among `classes` (the label is the index there); each one
    must hold at least one image. Plain strings and one stat per file: 50,000 files take ~0.1 s.
    """
    files = []
    base = os.path.relpath(folder, root)  # "." or "train", "test", "val"
    for name in class_dirs(folder):
        if name not in classes:
            raise UserError(
                f"{folder / name} is not one of the training classes ({', '.join(classes)}): "
                "the test folder's class folders must have the training folder's names"
            )
        label = classes.index(name)
        entries = sorted(
            (
                e
                for e in os.scandir(folder / name)
                if e.is_file()
                and not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            ),
            key=lambda e: e.name,
        )
        if not entries:
            raise UserError(
                f"the class folder {folder / name} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); expected {LAYOUT}. Remove the folder or add "
                "images to it"
            )
        prefix = os.path.normpath(os.path.join(base, name))
        for e in entries:
            st = e.stat()
            files.append((os.path.join(prefix, e.name), label, st.st_size, st.st_mtime_ns))
    return files


def cache_key(root: Path, image_size: int, in_chans: int, *file_lists) -> str:
    """Hash of what the decoded tensors depend on: the folder, the output size and channels, and
    every file's relative path, label, size and modification time (edits invalidate the cache)."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{root.resolve()}|{image_size}|{in_chans}".encode())
    for files in file_lists:
        h.update(b"\n--\n")
        h.update("\n".join("|".join(map(str, f)) for f in files).encode())
    return h.hexdigest()[:24]


def decode_image(path: str | Path, size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 (size, size, 3) for mode "RGB", (size, size) for mode "L".

    Resized (bilinear, antialiased) so the shorter side is `size`, then center-cropped to
    size x size; an image already size x size is not resampled. EXIF rotation is applied.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
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


@contextmanager
def progress_bar(total: int, description: str):
    """Yields `advance(n)`; draws a rich progress bar only for many files."""
    if total < PROGRESS_MIN_FILES:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def decode_images(paths: list[str | Path], size: int, in_chans: int) -> torch.Tensor:
    """Image files -> uint8 (N, 3, size, size), or (N, size, size) when in_chans == 1.

    A small thread pool decodes chunks of files (PIL releases the GIL while decoding and
    resizing). A file that cannot be decoded is a UserError naming it: nothing is skipped.
    """
    n, mode = len(paths), "L" if in_chans == 1 else "RGB"
    out = np.empty((n, size, size) if mode == "L" else (n, size, size, 3), dtype=np.uint8)

    def work(start: int, stop: int) -> int:
        for i in range(start, stop):
            try:
                out[i] = decode_image(paths[i], size, mode)
            except Exception as err:
                raise UserError(
                    f"cannot decode the image {paths[i]} ({type(err).__name__}: {err}); fix or "
                    "remove the file"
                ) from err
        return stop - start

    with (
        ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool,
        progress_bar(n, f"decoding {n} images") as advance,
    ):
        futures = [pool.submit(work, i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
        try:
            for future in futures:  # in order, so the first bad file is the one reported
                advance(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    images = torch.from_numpy(out)
    return images if mode == "L" else images.permute(0, 3, 1, 2).contiguous()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of uint8 images (N, H, W) or (N, C, H, W), scaled to 0..1.

    Exact, from a 256-bin histogram per channel: no float copy of the whole dataset.
    """
    channels = images.view(len(images), 1, -1) if images.ndim == 3 else images.flatten(2)
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(channels.shape[1]):
        counts = torch.bincount(channels[:, c].flatten(), minlength=256).double()
        mean = (counts @ values) / counts.sum()
        var = (counts @ values.square()) / counts.sum() - mean**2
        means.append(mean.item())
        stds.append(max(var.clamp(min=0).sqrt().item(), 1 / 255))  # a constant channel: no /0
    return tuple(means), tuple(stds)


class ImageFolderDataModule(ImageDataModule):
    """A folder of your own images: `root/<class_name>/*.{jpg,jpeg,png,bmp,webp}`.

    Class names sorted alphabetically give the labels 0..K-1 (`class_names`). If `root/train/`
    holds the class folders, it is the training pool and `root/test/` (else `root/val/`) the test
    set; otherwise, and when there is no such test folder, a seeded `test_size` (fraction or
    count) of the pool is the test set; with `test_size=0` the validation split is tested
    (when every labelled image should train or validate). The base class splits `val_size` off
    the rest.

    Each image is converted to RGB (grey "L" when `in_chans=1`), resized (bilinear,
    antialiased) so its SHORTER side is `image_size`, then center-cropped to
    image_size x image_size; images already that size are not resampled. The uint8 tensors,
    (N, 3, S, S) or (N, S, S) for grey, are cached in `<data_dir>/image_folder/<key>.pt`, the
    key hashing the folder, size, channels and every file's path, size and mtime: a folder is
    decoded once, and reloads take a fraction of a second. Normalization uses the training
    pool's own per-channel mean and std. `num_classes` must match the number of class folders
    (the config counts them with the `class_count` resolver).
    """

    name = "image folder"

    def __init__(
        self,
        data_dir: str,
        root: str | None = None,
        test_size: float | int = 0.1,
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int = 32,
        min_classes: int = 2,
        **kwargs,
    ):
        kwargs.pop("download", None)  # nothing to download
        # No fixed shape or class count to check against: the folder gives the classes, the
        # config the image size (ImageDataModule compares with these).
        self.classes, self.shape = num_classes, (in_chans, image_size, image_size)
        super().__init__(
            data_dir, num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs
        )
        if in_chans not in (1, 3):
            raise UserError(f"data.in_chans={in_chans} must be 3 (RGB) or 1 (grey)")
        if image_size < 1:
            raise UserError(f"data.image_size={image_size} must be positive")
        self.test_size, self.min_classes = test_size, min_classes
        self.root = Path(root).expanduser() if root is not None else None
        self.class_names: list[str] = []
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
    def raw_dir(self) -> Path:
        return self.root

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_dir) / "image_folder"

    def prepare_data(self) -> None:
        """Decode the folder into the cache (once per node, before `setup` on every process)."""
        if not self.synthetic:
            self._decoded = self._read_folder()

    def load(self) -> tuple[TensorDataset, TensorDataset]:
        if self.synthetic:
            pool, test = super().load()
        else:
            _, data = self._decoded or self._read_folder()
            self._decoded = None  # let the memory go with the datasets
            self.class_names = list(data["classes"])
            pool, test = TensorDataset(*data["train"]), data["test"]
            test = TensorDataset(*test) if test is not None else None
            if test is None:
                pool, test = self._split_test(pool)
        self.mean, self.std = channel_stats(pool.tensors[0])
        return pool, test

    def _split_test(self, pool: TensorDataset) -> tuple[TensorDataset, TensorDataset | None]:
        n = len(pool)
        size = self.test_size
        n_test = int(round(size * n)) if size < 1 else int(size)
        if n_test == 0:  # test on the validation split (the base class's rule for no test set)
            return pool, None
        if not 1 <= n_test < n:
            raise UserError(
                f"data.test_size={size} must leave at least one training image out "
                f"of the {n} images in {self.root} (there is no test/ or val/ folder)"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 1))
        rest, test = order[n_test:], order[:n_test]
        return (
            TensorDataset(*(t.index_select(0, rest) for t in pool.tensors)),
            TensorDataset(*(t.index_select(0, test) for t in pool.tensors)),
        )

    def _read_folder(self) -> tuple[str, dict]:
        """(cache key, {"classes", "train": (images, labels), "test": (images, labels) | None})."""
        pool_dir, test_dir = find_layout(self.root)
        classes = class_dirs(pool_dir)
        if len(classes) < max(1, self.min_classes):
            found = f"only the class folder {classes[0]!r}" if classes else "no class sub-folders"
            one = " (data.min_classes=1: one folder of unlabelled images, for gan and vae)"
            raise UserError(
                f"{pool_dir} has {found}; expected {LAYOUT}, with at least "
                f"{max(1, self.min_classes)} classes{one if classes else ''}. Set "
                "data.root=/path/to/folder, or use data.synthetic=true"
            )
        if test_dir is not None and not class_dirs(test_dir):
            raise UserError(
                f"the test folder {test_dir} has no class sub-folders; expected the training "
                f"folder's ({', '.join(classes)}). Fill it, or remove it to hold out "
                "data.test_size of the training images instead"
            )
        pool_files = list_images(self.root, pool_dir, classes)
        test_files = list_images(self.root, test_dir, classes) if test_dir is not None else None
        if len(classes) != self.num_classes:
            raise UserError(
                f"data.num_classes={self.num_classes} but {pool_dir} has {len(classes)} class "
                "folders; leave data.num_classes to the config, which counts them"
            )
        key = cache_key(self.root, self.image_size, self.in_chans, pool_files, test_files or [])
        if self._decoded is not None and self._decoded[0] == key:
            return self._decoded
        path = self.cache_dir / f"{key}.pt"
        sizes = {"train": len(pool_files), "test": None if test_files is None else len(test_files)}
        data = self._load_cache(path, classes, sizes)
        if data is None:
            data = {"version": CACHE_VERSION, "classes": classes}
            for split, files in (("train", pool_files), ("test", test_files)):
                if files is None:
                    data[split] = None
                    continue
                paths = [os.path.join(self.root, f[0]) for f in files]
                images = decode_images(paths, self.image_size, self.in_chans)
                data[split] = (images, torch.tensor([f[1] for f in files], dtype=torch.int64))
            self._save_cache(path, data)
        return key, data

    def _load_cache(self, path: Path, classes: list[str], sizes: dict) -> dict | None:
        """The cached tensors, or None when there is no cache or it is unusable (then rebuilt).

        `sizes`: {"train": number of images, "test": number of images or None}.
        """
        if not path.is_file():
            return None
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

        try:
            data = torch.load(path, weights_only=True)
            if not (
                data["version"] == CACHE_VERSION
                and list(data["classes"]) == classes
                and all(valid(data[split], n) for split, n in sizes.items())
            ):
                raise ValueError("unexpected contents")
            return data
        except Exception as err:
            warnings.warn(
                f"ignoring the unreadable image cache {path} ({type(err).__name__}: {err}); "
                "decoding the folder again",
                stacklevel=2,
            )
            return None

    def _save_cache(self, path: Path, data: dict) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(data, tmp)
            os.replace(tmp, path)  # atomic: another process never reads half a file
        except OSError as err:
            tmp.unlink(missing_ok=True)
            warnings.warn(
                f"cannot write the image cache {path} ({err}); the folder will be decoded again "
                "next time",
                stacklevel=2,
            )
