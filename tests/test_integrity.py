"""Checkpoint integrity: the digest survives save/load, corruption and foreign pickles are refused."""

import collections
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from common.errors import UserError
from common.integrity import IntegrityCheckpointIO, digest, unsafe_message, verify


class Label(str):
    """A str subclass: same repr as the str it holds."""


def sample_checkpoint() -> dict:
    return {
        "state_dict": collections.OrderedDict(
            w=torch.randn(4, 3), b=torch.zeros(3, dtype=torch.bfloat16)
        ),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),  # 0-dim
        "empty": torch.empty(0, 5),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
        "ints": {1: "one", 2: (3, 4.5, None), "x": [True, b"\x00\xff"]},
        "betas": (0.9, 0.999),
        "epoch": 3,
        "name": "run",
    }


def torch_roundtrip(obj: dict, path: Path, **load_kwargs) -> dict:
    torch.save(obj, path)
    return torch.load(path, weights_only=True, **load_kwargs)


def test_digest_is_stable_across_save_and_load(tmp_path):
    ckpt = sample_checkpoint()
    before = digest(ckpt)
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    assert digest(sample_checkpoint()) != before  # new random weights
    for kwargs in ({}, {"mmap": True}):
        loaded = torch_roundtrip(ckpt, tmp_path / "a.ckpt", **kwargs)
        assert isinstance(loaded["betas"], tuple) and isinstance(loaded["ints"][2], tuple)
        assert loaded["state_dict"]["b"].dtype == torch.bfloat16
        assert digest(loaded) == before, kwargs
    # The "integrity" entry itself is left out, and key order does not matter.
    assert digest(ckpt | {"integrity": {"sha256": "x"}}) == before
    assert digest(dict(reversed(list(ckpt.items())))) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["state_dict"]["w"].view(-1)[5].add_(1e-6),
        lambda c: c["mask"].logical_not_(),
        lambda c: c["scalar"].fill_(2.0),
        lambda c: c["state_dict"].__setitem__("b", c["state_dict"]["b"].float()),  # dtype only
        lambda c: c.__setitem__("empty", torch.empty(5, 0)),  # shape only
        lambda c: c.__setitem__("betas", [0.9, 0.999]),  # tuple -> list
        lambda c: c["ints"].__setitem__("1", c["ints"].pop(1)),  # int key -> str key
        lambda c: c.__setitem__("epoch", 3.0),
        lambda c: c.__setitem__("epoch", True),
        lambda c: c.__setitem__("name", Label("run")),  # same repr, other type
    ],
)
def test_digest_sees_every_change(change):
    torch.manual_seed(0)
    ckpt = sample_checkpoint()
    before = digest(ckpt)
    change(ckpt)
    assert digest(ckpt) != before


def data_records(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist() if re.search(r"/data/\d+$", n)]


def flip_byte_in_place(path: Path, member: str, at: int = 0) -> None:
    """Flip one byte of `member`'s stored data inside the file: its zip CRC is now stale."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    assert info.compress_type == zipfile.ZIP_STORED  # torch never compresses
    raw = bytearray(path.read_bytes())
    # Local header: 30 fixed bytes, then the name and the extra field (torch pads it to align).
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    raw[info.header_offset + 30 + name_len + extra_len + at] ^= 0x01
    path.write_bytes(bytes(raw))


def flip_byte_rewritten(path: Path, member: str, at: int = 0) -> None:
    """Rewrite the zip with one byte of `member` changed and every CRC recomputed."""
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            if info.filename == member:
                data = bytearray(data)
                data[at] ^= 0x01
            zf.writestr(info, bytes(data))  # keeps torch's alignment padding in `extra`
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None


@pytest.mark.parametrize("corrupt", [flip_byte_in_place, flip_byte_rewritten])
def test_flipped_tensor_byte_is_reported_corrupt(tmp_path, corrupt):
    path = tmp_path / "model.ckpt"
    io = IntegrityCheckpointIO()
    io.save_checkpoint(sample_checkpoint(), path)
    (tmp_path / "last.ckpt").write_bytes(path.read_bytes())
    assert io.load_checkpoint(path)  # intact: loads and verifies

    records = data_records(path)
    assert records, "no tensor data records in the checkpoint zip"
    corrupt(path, records[0])
    # torch itself notices nothing.
    plain = torch.load(path, weights_only=True)
    assert plain["integrity"]["sha256"] != digest(plain)

    with pytest.raises(UserError, match="corrupt") as caught:
        io.load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "last.ckpt" in message  # names a checkpoint beside it to use instead
    assert "weights_only" not in message


def test_map_location_is_passed_through(tmp_path):
    IntegrityCheckpointIO().save_checkpoint(sample_checkpoint(), tmp_path / "a.ckpt")
    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage

    IntegrityCheckpointIO().load_checkpoint(tmp_path / "a.ckpt", map_location=to_cpu)
    assert seen and set(seen) == {"cpu"}


def test_save_stamps_a_copy(tmp_path):
    ckpt = sample_checkpoint()
    IntegrityCheckpointIO().save_checkpoint(ckpt, tmp_path / "a.ckpt")
    assert "integrity" not in ckpt
    saved = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert saved["integrity"] == {"sha256": digest(ckpt)}


def test_checkpoint_without_digest_warns_once_and_loads(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save(sample_checkpoint(), path)
    io = IntegrityCheckpointIO()
    with pytest.warns(UserWarning, match="no integrity digest") as record:
        loaded = io.load_checkpoint(path)
        io.load_checkpoint(path)
    assert [str(w.message) for w in record if "integrity" in str(w.message)] == [
        str(record[0].message)
    ]
    assert str(path) in str(record[0].message)
    assert loaded["epoch"] == 3


def test_tampered_digest_entry_is_corrupt(tmp_path):
    ckpt = sample_checkpoint()
    with pytest.raises(UserError, match="corrupt"):
        verify(ckpt | {"integrity": {"sha256": "0" * 64}}, tmp_path / "x.ckpt")
    with pytest.raises(UserError, match="corrupt"):
        verify(ckpt | {"integrity": "garbage"}, tmp_path / "x.ckpt")
    verify(ckpt | {"integrity": {"sha256": digest(ckpt)}}, tmp_path / "x.ckpt")


class Foreign:
    """A class torch's weights_only loader has never heard of."""


class CallsExec:
    """Pickles as a call to builtins.exec, like a hostile checkpoint would."""

    def __reduce__(self):
        return (exec, ("None",))


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [(Foreign(), f"{__name__}.Foreign"), (CallsExec(), "builtins.exec")],
)
def test_unsafe_pickle_is_refused_by_name(tmp_path, payload, global_name):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "extra": payload}, path)
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(path, weights_only=True)
    message = unsafe_message(caught.value, path)
    assert message is not None
    assert f"GLOBAL {global_name}" in message and str(path) in message
    assert "unsafe" in message and "\n" not in message
    assert "weights_only" not in message and "safe_globals" not in message

    # Lightning's loads go through the plugin, which turns the refusal into a UserError.
    with pytest.raises(UserError, match="refused checkpoint") as refused:
        IntegrityCheckpointIO().load_checkpoint(path)
    assert str(refused.value) == message


def test_unsafe_message_ignores_other_errors(tmp_path):
    assert unsafe_message(RuntimeError("Weights only load failed"), "x") is None
    assert unsafe_message(pickle.UnpicklingError("invalid load key"), "x") is None
    assert unsafe_message(FileNotFoundError("x"), "x") is None


def make_trainer(root: Path, io: IntegrityCheckpointIO, max_epochs: int = 1, **kwargs) -> Trainer:
    return Trainer(
        default_root_dir=root,
        plugins=[io],
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


class RecordingIO(IntegrityCheckpointIO):
    def __init__(self):
        super().__init__()
        self.loaded: list[dict] = []

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.loaded.append(super().load_checkpoint(path, map_location, weights_only))
        return self.loaded[-1]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_trainer_writes_and_resumes_through_the_plugin(tmp_path):
    make_trainer(tmp_path, IntegrityCheckpointIO()).fit(BoringModel())
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    saved = torch.load(path, weights_only=True)
    assert saved["integrity"]["sha256"] == digest(saved)

    io = RecordingIO()
    resumed = make_trainer(tmp_path, io, max_epochs=2)
    resumed.fit(BoringModel(), ckpt_path=path, weights_only=True)
    assert len(io.loaded) == 1 and "integrity" in io.loaded[0]
    assert resumed.global_step == 4  # two steps restored, two more trained

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(path.read_bytes())
    flip_byte_in_place(corrupt, data_records(corrupt)[0])
    with pytest.raises(UserError, match="corrupt"):
        make_trainer(tmp_path, IntegrityCheckpointIO(), max_epochs=2).fit(
            BoringModel(), ckpt_path=corrupt, weights_only=True
        )


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_plugin_becomes_the_strategys_checkpoint_io(tmp_path, strategy):
    io = IntegrityCheckpointIO()
    trainer = make_trainer(tmp_path, io, strategy=strategy, devices=2 if strategy == "ddp" else 1)
    assert trainer.strategy.checkpoint_io is io
