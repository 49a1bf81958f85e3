"""Checkpoint integrity: a sha256 saved inside each checkpoint, checked again on every load.

torch does not check the zip's CRCs when it loads a .ckpt, so flipped tensor bytes load fine and
evaluate to garbage. `IntegrityCheckpointIO` stores `checkpoint["integrity"] = {"sha256": ...}`
over everything else in the dict and recomputes it after loading:

    Trainer(plugins=[IntegrityCheckpointIO()])
"""

import hashlib
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from common.errors import UserError

KEY = "integrity"
PathLike = str | os.PathLike

# Paths already warned about for having no digest: each is named once per process.
_unchecked_warned: set[str] = set()
# Files already verified, as (real path, mtime, size): `make eval` and a resume read a checkpoint
# twice (our check before any work, then Lightning's load), and hashing a GB takes most of a
# second. A file rewritten since has another mtime, and is hashed again.
_verified: set[tuple] = set()


def _identity(path: PathLike) -> tuple | None:
    try:
        stat = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None  # not a local file (a URL, a stream): always hashed
    return (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


def _put(h, tag: bytes, payload: bytes = b"") -> None:
    # Tag plus length prefix, so no two different trees feed hashlib the same byte stream.
    h.update(tag + len(payload).to_bytes(8, "little") + payload)


def _leaf(h, obj: Any) -> None:
    # Everything torch's weights_only loader allows as a leaf (None, bool, int, float, str, bytes,
    # torch.dtype, torch.device, ...) has a repr that depends only on its value.
    text = f"{type(obj).__qualname__}:{obj!r}"
    _put(h, b"L", text.encode("utf-8", "backslashreplace"))


def _tensor(h, t: torch.Tensor) -> None:
    t = t.detach()
    if t.is_quantized:  # int8 weights (make compress): how the integers map to floats, then them
        scheme = t.qscheme()
        _put(h, b"Q", f"{t.dtype}|{scheme}".encode())
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            _leaf(h, (t.q_scale(), t.q_zero_point()))
        else:
            _leaf(h, t.q_per_channel_axis())
            _tensor(h, t.q_per_channel_scales())
            _tensor(h, t.q_per_channel_zero_points())
        t = t.int_repr()
    if t.layout != torch.strided:
        t = t.to_dense()
    # resolve_* are no-ops unless a lazy conj/neg bit is set; torch.save materializes those too.
    t = t.resolve_conj().resolve_neg().cpu().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy()  # (nbytes,), shares t's memory (or its mmap)
    _put(h, b"T", f"{t.dtype}|{tuple(t.shape)}|{data.nbytes}".encode())
    h.update(memoryview(data))  # one update: hashlib releases the GIL and never copies


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        _tensor(h, obj)
    elif isinstance(obj, Mapping):
        # dict and OrderedDict alike: the tag is the kind, not the class, so a loader that hands
        # back another mapping type still matches; keys sorted by text so insertion order doesn't.
        _put(h, b"D", str(len(obj)).encode())
        for key in sorted(obj, key=str):
            _leaf(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        _put(h, b"l" if isinstance(obj, list) else b"t", str(len(obj)).encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, (set, frozenset)):
        # Set order follows str hashing, which varies between processes: sort the members' own
        # digests instead.
        _put(h, b"s", str(len(obj)).encode())
        for member in sorted(_sub_digest(item) for item in obj):
            h.update(member)
    else:
        _leaf(h, obj)


def _sub_digest(obj: Any) -> bytes:
    h = hashlib.sha256()
    _feed(h, obj)
    return h.digest()


def digest(checkpoint: dict) -> str:
    """Hex sha256 of the whole checkpoint except its own "integrity" entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in checkpoint.items() if k != KEY})
    return h.hexdigest()


def _siblings_hint(path: PathLike) -> str:
    # Name the other checkpoints beside a local file, since the usual fix is to use one of them.
    try:
        here = Path(path)
        others = sorted(p.name for p in here.parent.glob("*.ckpt") if p.name != here.name)
    except (OSError, TypeError, ValueError):
        others = []
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        return f"Use another checkpoint beside it ({listed}) or train again."
    return "Use another checkpoint (e.g. checkpoints/last.ckpt or an epoch_*.ckpt) or train again."


def verify(checkpoint: dict, path: PathLike) -> None:
    """Raise UserError if `checkpoint` (loaded from `path`) no longer matches its saved digest."""
    saved = checkpoint.get(KEY)
    if saved is None:
        if str(path) not in _unchecked_warned:
            _unchecked_warned.add(str(path))
            rank_zero_warn(
                f"checkpoint {path} has no integrity digest (it was written by an older version of "
                "this repo), so it cannot be checked for corruption; loading it anyway."
            )
        return
    identity = _identity(path)
    if identity is not None and identity in _verified:
        return
    expected = saved.get("sha256") if isinstance(saved, Mapping) else None
    actual = digest(checkpoint)
    if expected == actual:
        if identity is not None:
            _verified.add(identity)
        return
    raise UserError(
        f"checkpoint {path} is corrupt: its contents do not match the sha256 saved with it "
        f"(saved {str(expected)[:12]}..., now {actual[:12]}...); it was damaged after it was "
        f"written. {_siblings_hint(path)}"
    )


_GLOBAL = re.compile(r"GLOBAL (\S+)")


def unsafe_message(err: BaseException, path: PathLike) -> str | None:
    """One line for torch's weights_only refusal of `path`, or None if `err` is something else."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or not text.startswith(
        "Weights only load failed"
    ):
        return None
    found = _GLOBAL.search(text)
    if found:
        name = found.group(1)
        # torch prints builtins without their module ("GLOBAL exec"): put it back.
        what = f"GLOBAL {name if '.' in name else 'builtins.' + name}"
    else:
        # Other refusals (a reduce call, a BUILD on a foreign class): keep torch's own detail,
        # the last line that is not its advice on how to load the file anyway.
        lines = [
            line.strip()
            for line in text.splitlines()
            if line.strip()
            and "weights_only" not in line
            and "safe_globals" not in line
            and not line.startswith("Weights only load failed")
        ]
        what = lines[-1].removeprefix("WeightsUnpickler error: ")[:200] if lines else "unknown"
    return (
        f"refused checkpoint {path}: it contains pickled objects torch's safe loader does not "
        f"allow ({what}), so it is unsafe or was not written by this repo's make train; it was "
        "not loaded."
    )


class IntegrityCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that saves a sha256 in every checkpoint and checks it on every load."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None
    ) -> None:
        # A shallow copy: the caller's dict stays as it was.
        stamped = {**checkpoint, KEY: {"sha256": digest(checkpoint)}}
        super().save_checkpoint(stamped, path, storage_options=storage_options)

    def load_checkpoint(
        self,
        path: PathLike,
        map_location: Callable | str | torch.device | dict | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load and verify; map_location=None keeps Lightning's default (tensors on the CPU)."""
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            checkpoint = super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        except pickle.UnpicklingError as err:
            message = unsafe_message(err, path)
            if message is None:
                raise
            raise UserError(message) from None
        verify(checkpoint, path)
        return checkpoint
