"""benchmarks/speedrun.py's pieces that need no GPU: the reference's data, and reading both
sides' output."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from benchmarks.speedrun import (
    parse_ours,
    parse_reference,
    run_reference,
    split_overrides,
    write_reference_data,
)
from tests.conftest import make_config

COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "ship": (60, 60, 200)}


def test_the_reference_gets_the_split_our_run_trains_on(tmp_path):
    root = tmp_path / "train"
    for k, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (32, 32), (colour[0], i * 20, k * 50)).save(root / name / f"{i}.png")
    counts = write_reference_data(root, tmp_path / "cifar10", tmp_path / "work", held_out=6)
    assert counts == (24, 6)
    train = torch.load(tmp_path / "cifar10" / "train.pt", weights_only=True)
    test = torch.load(tmp_path / "cifar10" / "test.pt", weights_only=True)
    assert train["images"].shape == (24, 32, 32, 3) and train["images"].dtype == torch.uint8
    assert train["labels"].dtype == torch.int64 and train["classes"] == list(COLOURS)
    # The run's own config, built as `make train` builds it, holds out the same images.
    overrides = ["project=cifar10", "experiment=cifar10_speedrun", *split_overrides(root, 6)]
    cfg = make_config(tmp_path, overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    ours = dm.val_set.tensors[0].permute(0, 2, 3, 1)  # (6, 32, 32, 3)
    assert torch.equal(test["images"], ours)
    assert torch.equal(test["labels"], dm.val_set.tensors[1].long())


def test_reading_the_references_table_skips_its_warmup_run():
    rows = [
        "|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |",
        "|  warmup  |      0  |     0.1000  |   0.1000  |               |        9.0000  |",
        "|          |   eval  |     0.1000  |   0.1000  |       0.1000  |       12.0000  |",
        "|       0  |      0  |     0.5000  |   0.6000  |               |        0.3000  |",
        "|          |   eval  |     0.9500  |   0.9300  |       0.9401  |        2.5900  |",
        "|       1  |      0  |     0.5000  |   0.6000  |               |        0.3000  |",
        "|          |   eval  |     0.9500  |   0.9300  |       0.9395  |        2.6100  |",
    ]
    assert parse_reference("\n".join(rows)) == [(0.9401, 2.59), (0.9395, 2.61)]


def test_reading_our_run(tmp_path):
    text = "epoch 7: 1 samples/s\ntraining took 4.79 s (validation included)\nrun directory: /x/y\n"
    assert parse_ours(text) == (4.79, Path("/x/y"))
    with pytest.raises(SystemExit, match="did not finish"):
        parse_ours("error: data.root=/nowhere does not exist")


def test_a_script_that_is_not_the_reference_is_refused(tmp_path):
    script = tmp_path / "airbench94_muon.py"
    script.write_text("print('hello')\n")
    with pytest.raises(SystemExit, match="not airbench94_muon.py"):
        run_reference(script, tmp_path, 2, tmp_path / "work")
