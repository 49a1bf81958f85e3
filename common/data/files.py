"""Files on disk: the class-folder rule (the image-folder datamodule and the `class_count`
resolver share it), atomic writes, and download-or-explain."""

import os
from collections.abc import Callable
from pathlib import Path

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
