"""Files on disk: the class-folder rule and the reading of folders of class sub-folders (your
images, your audio clips; the `class_count` resolver counts them), atomic writes, and
download-or-explain."""

import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from common.errors import UserError


def class_dirs(folder: str | Path) -> list[str]:
    """Sorted names of the sub-folders of `folder` that are classes: not hidden, not __MACOSX."""
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"
    )


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`.

    Another process (a DDP rank, a second launch) never reads half a file: it sees the old file
    or the whole new one. Folders are made as needed; on failure the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached(
    path: Path, build: Callable[[], dict], check: Callable[[dict], None], what: str, mmap=False
):
    """What `build()` makes (a dict of tensors and plain values), kept in `path` for next time.

    A cache that exists and passes `check` (which raises on contents that do not fit) is loaded
    with torch's safe `weights_only` loader, memory-mapped if `mmap` (read as it is used);
    otherwise `build()` runs and its result is written atomically. An unreadable or unfitting
    cache, or one that cannot be written, is a warning naming `what` cache it is, never an
    error: the files are decoded again.
    """
    if path.is_file():
        try:
            data = torch.load(path, weights_only=True, mmap=mmap)
            check(data)
            return data
        except Exception as err:
            warnings.warn(
                f"ignoring the unreadable {what} cache {path} ({type(err).__name__}: {err}); "
                "decoding the files again",
                stacklevel=2,
            )
    data = build()
    try:
        atomic_write(path, lambda tmp: torch.save(data, tmp))
    except OSError as err:
        warnings.warn(
            f"cannot write the {what} cache {path} ({err}); the files will be decoded again "
            "next time",
            stacklevel=2,
        )
    return data


def fetch_or_explain(
    fetch: Callable[[], None], missing: Callable[[], list], download: bool, what: str, fix: str
) -> None:
    """Run `fetch()` (a download) unless `download` is off; if `missing()` still lists files,
    raise one UserError: `what` is missing because of the reason found, then `fix`."""
    reason = "data.download=false"
    if download:
        try:
            fetch()
            if not missing():
                return
            reason = "the download did not bring them"
        except Exception as err:  # no network, a mirror down, a disk full: all one message
            # torchvision lists every mirror it tried; the last line says why.
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            reason = f"the download failed ({lines[-1] if lines else type(err).__name__})"
    raise UserError(f"{what} and {reason}. {fix}")


# --- folders of class sub-folders (your images, your audio clips) -------------------------------

PROGRESS_MIN_FILES = 2000  # below this, decoding takes about a second: no progress bar
CHUNK = 256  # files per thread-pool task
SPLITS = ("train", "val", "test")


def find_layout(root: Path) -> dict[str, Path | None]:
    """The folders of the training pool, validation set and test set under `root` (None: none).

    `root/train` with class folders is the pool; then `root/val` and `root/test` are the
    validation and test sets, except that a lone `root/val` is the test set (as ImageNet's
    validation images are everyone's test set). Otherwise `root` itself is the pool.
    """
    if not (root / "train").is_dir() or not class_dirs(root / "train"):
        return {"train": root, "val": None, "test": None}
    val, test = ((root / name) if (root / name).is_dir() else None for name in ("val", "test"))
    if test is None:
        val, test = None, val
    return {"train": root / "train", "val": val, "test": test}


def list_files(
    root: Path,
    folder: Path,
    classes: list[str],
    extensions: tuple[str, ...],
    layout: str,
    noun: str = "files",
    exclude: tuple[str, ...] = (),
) -> list[tuple[str, int, int, int]]:
    """(path relative to root, label, size in bytes, mtime in ns) for every file with one of
    `extensions` in `folder/<class>/`, sorted by class then file name.

    `folder`'s class folders must be among `classes` (the label is the index there); each one
    must hold at least one such file (else a UserError quoting `layout`, the expected layout,
    and calling the files `noun`); sub-folders named in `exclude` are not classes. Plain strings
    and one stat per file: 50,000 files take ~0.1 s.
    """
    files = []
    base = os.path.relpath(folder, root)  # "." or "train", "val", "test"
    for name in (d for d in class_dirs(folder) if d not in exclude):
        if name not in classes:
            raise UserError(
                f"{folder / name} is not one of the training classes ({', '.join(classes)}): "
                "the val and test folders' class folders must have the training folder's names"
            )
        entries = sorted(
            (
                e
                for e in os.scandir(folder / name)
                if e.is_file()
                and not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in extensions
            ),
            key=lambda e: e.name,
        )
        if not entries:
            raise UserError(
                f"the class folder {folder / name} holds no {noun} ({', '.join(extensions)}); "
                f"expected {layout}. Remove the folder or add {noun} to it"
            )
        prefix = os.path.normpath(os.path.join(base, name))
        for e in entries:
            st = e.stat()
            files.append(
                (os.path.join(prefix, e.name), classes.index(name), st.st_size, st.st_mtime_ns)
            )
    return files


def cache_key(root: Path, settings: str, file_lists: dict) -> str:
    """Hash of what a folder's decoded tensors depend on: the folder, the decoding `settings`
    (a version, the output size, ...), and every file's split, relative path, label, size and
    modification time (edits invalidate it)."""
    h = hashlib.sha256(f"{settings}|{Path(root).resolve()}".encode())
    for split, files in file_lists.items():
        h.update(f"\n--{split}\n".encode())
        h.update("\n".join("|".join(map(str, f)) for f in files or []).encode())
    return h.hexdigest()[:24]


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


def for_each_file(n: int, read: Callable[[int], None], description: str) -> None:
    """Call `read(i)` for i in 0..n-1 on a small thread pool, in chunks, with a progress bar for
    many files (decoders such as PIL and libsndfile release the GIL). The first exception, in
    file order, is raised and the remaining chunks are cancelled."""

    def work(start: int, stop: int) -> int:
        for i in range(start, stop):
            read(i)
        return stop - start

    with (
        ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool,
        progress_bar(n, description) as advance,
    ):
        futures = [pool.submit(work, i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
        try:
            for future in futures:  # in order, so the first bad file is the one reported
                advance(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
