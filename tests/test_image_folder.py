"""The image-folder datamodule: layouts, decoding, splits, the cache, the resolver and errors."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import common.data.files as files
import common.data.image_folder as image_folder
from common.data.image_folder import ImageFolderDataModule, decode_images
from common.data.images import decode_image
from common.errors import UserError
from common.resolvers import class_count, register_resolvers

# Sorted names -> labels 0, 1, 2; each class a plain colour whose strongest channel is its label.
COLOURS = {"cat": (220, 40, 30), "dog": (30, 210, 40), "owl": (40, 30, 200)}
SIZES = ((40, 30), (20, 20), (30, 50))  # (width, height): wide, square, tall


def make_folder(root: Path, per_class: int = 12, classes: dict = COLOURS) -> Path:
    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", SIZES[i % len(SIZES)], colour).save(root / name / f"{i:03d}.png")
    return root


def datamodule(tmp_path: Path, root: Path, **kwargs) -> ImageFolderDataModule:
    kwargs = {"num_classes": 3, "image_size": 16, "val_size": 0.2, "test_size": 0.25, **kwargs}
    return ImageFolderDataModule(str(tmp_path / "data"), root=str(root), **kwargs)


def ready(tmp_path: Path, root: Path, **kwargs) -> ImageFolderDataModule:
    dm = datamodule(tmp_path, root, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def check_labels(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Each plain-coloured image's strongest channel is its label."""
    assert torch.equal(images.float().mean((2, 3)).argmax(1), labels)


# --- decoding and splits ----------------------------------------------------------------------


def test_folder_becomes_uint8_squares_with_sorted_labels(tmp_path):
    dm = ready(tmp_path, make_folder(tmp_path / "pics"))
    assert dm.class_names == ["cat", "dog", "owl"] and dm.spec().class_names == dm.class_names
    for subset in (dm.train_set, dm.val_set, dm.test_set):
        images, labels = subset.tensors
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
        assert labels.dtype == torch.int64
        check_labels(images, labels)
    everything = torch.cat([s.tensors[1] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert torch.bincount(everything).tolist() == [12, 12, 12]
    assert len(dm.mean) == len(dm.std) == 3
    pool = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0]]).double() / 255
    assert torch.allclose(torch.tensor(dm.mean, dtype=torch.float64), pool.mean((0, 2, 3)))
    assert torch.allclose(
        torch.tensor(dm.std, dtype=torch.float64), pool.transpose(0, 1).flatten(1).std(1), atol=1e-3
    )
    x, y = next(iter(dm.train_dataloader()))
    normalized, _ = dm.on_after_batch_transfer((x, y))
    assert normalized.shape == (len(x), 3, 16, 16) and normalized.dtype == torch.float32


def test_shorter_side_is_resized_then_center_cropped(tmp_path):
    stripes = Image.new("RGB", (40, 20), (255, 0, 0))  # red | green (middle half) | blue
    stripes.paste((0, 255, 0), (10, 0, 30, 20))
    stripes.paste((0, 0, 255), (30, 0, 40, 20))
    stripes.save(tmp_path / "same.png")
    stripes.resize((80, 40), Image.Resampling.NEAREST).save(tmp_path / "double.png")
    same = decode_image(tmp_path / "same.png", 20, "RGB")  # height is 20 already: crop only
    assert same.shape == (20, 20, 3) and (same == (0, 255, 0)).all()
    double = decode_image(tmp_path / "double.png", 20, "RGB")  # resized to 40x20, then cropped
    assert double.shape == (20, 20, 3) and (double[:, 2:-2] == (0, 255, 0)).all()
    grey = decode_images([tmp_path / "double.png"], 8, in_chans=1)
    assert grey.shape == (1, 8, 8) and grey.dtype == torch.uint8


def test_splits_are_sized_and_seeded(tmp_path):
    root = make_folder(tmp_path / "pics")
    a, b = ready(tmp_path, root, seed=1), ready(tmp_path, root, seed=1)
    c = ready(tmp_path, root, seed=2)
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (22, 5, 9)  # 36: 9 test, 5 val
    count = datamodule(tmp_path, root, test_size=6, val_size=3)
    count.setup("fit")
    assert (len(count.train_set), len(count.val_set), len(count.test_set)) == (27, 3, 6)
    for part in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(a, part).tensors[0], getattr(b, part).tensors[0])
    assert not torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_train_and_test_folders(tmp_path, test_folder):
    root = tmp_path / "pics"
    make_folder(root / "train", per_class=10)
    make_folder(root / test_folder, per_class=3)
    dm = ready(tmp_path, root, val_size=6)
    assert dm.class_names == ["cat", "dog", "owl"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 9)
    check_labels(*dm.test_set.tensors)
    assert class_count(str(root), 10) == 3


def test_train_val_and_test_folders_are_the_three_splits(tmp_path):
    root = tmp_path / "pics"
    for name, per_class in (("train", 10), ("val", 2), ("test", 3)):
        make_folder(root / name, per_class=per_class)
    dm = ready(tmp_path, root)  # val_size and test_size do not apply: the folders are the splits
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 6, 9)
    for subset in (dm.train_set, dm.val_set, dm.test_set):
        check_labels(*subset.tensors)


def test_grey_images(tmp_path):
    dm = ready(tmp_path, make_folder(tmp_path / "pics"), in_chans=1, image_size=12)
    images, _ = dm.train_set.tensors
    assert images.shape[1:] == (12, 12) and images.dtype == torch.uint8
    assert len(dm.mean) == len(dm.std) == 1
    normalized, _ = dm.on_after_batch_transfer((images[:4], torch.zeros(4, dtype=torch.int64)))
    assert normalized.shape == (4, 1, 12, 12)


def test_progress_bar_for_many_files(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "pics", per_class=2)
    monkeypatch.setattr(files, "PROGRESS_MIN_FILES", 4)
    decode_images(sorted(root.glob("*/*.png")), 8, in_chans=3)
    assert "decoding 6 images" in capsys.readouterr().err


def test_synthetic_needs_no_folder(tmp_path):
    dm = ImageFolderDataModule(
        str(tmp_path), root=None, synthetic=True, synthetic_size=(200, 50), image_size=24
    )
    dm.setup("fit")
    assert dm.train_set.tensors[0].shape[1:] == (3, 24, 24) and len(dm.test_set) == 50


# --- the cache --------------------------------------------------------------------------------


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "image_folder").glob("*.pt"))


def test_cache_is_reused_and_follows_the_files(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pics")
    first = ready(tmp_path, root)
    assert len(cache_files(tmp_path)) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(image_folder, "decode_images", no_decoding)
        again = ready(tmp_path, root)
    for part in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(first, part).tensors[0], getattr(again, part).tensors[0])
    assert again.mean == first.mean and again.std == first.std

    Image.new("RGB", (20, 20), COLOURS["cat"]).save(root / "cat" / "new.png")
    grown = ready(tmp_path, root)
    assert sum(len(s) for s in (grown.train_set, grown.val_set, grown.test_set)) == 37
    assert len(cache_files(tmp_path)) == 2  # a changed folder is a new key
    other_size = ready(tmp_path, root, image_size=8)
    assert other_size.train_set.tensors[0].shape[-1] == 8 and len(cache_files(tmp_path)) == 3


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "pics")
    first = ready(tmp_path, root)
    (cache,) = cache_files(tmp_path)
    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring the unreadable image cache"):
        rebuilt = ready(tmp_path, root)
    assert torch.equal(first.train_set.tensors[0], rebuilt.train_set.tensors[0])
    assert torch.load(cache, weights_only=True)["classes"] == ["cat", "dog", "owl"]


# --- the resolver and the config -------------------------------------------------------------


def test_class_count_resolver(tmp_path):
    root = make_folder(tmp_path / "pics")
    (root / ".hidden").mkdir()
    (root / "__MACOSX").mkdir()
    assert class_count(str(root), 10) == 3 == len(image_folder.class_dirs(root))
    assert class_count(None, 10) == 10
    assert class_count(str(tmp_path / "missing"), 7) == 7
    assert class_count(str(tmp_path / "pics" / "cat"), 10) == 10  # images, no class folders
    register_resolvers()
    cfg = OmegaConf.create({"data": {"root": str(root), "k": "${class_count:${data.root},10}"}})
    assert cfg.data.k == 3
    cfg.data.root = None
    assert cfg.data.k == 10


def test_config_composes_and_sets_up(config, tmp_path):
    root = make_folder(tmp_path / "pics")
    cfg = config(
        "project=mnist",
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=28",
        "data.in_chans=1",
        "data.batch_size=8",
    )
    assert cfg.data.num_classes == cfg.model.num_classes == 3
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 28, 28) and x.dtype == torch.uint8
    images, _ = dm.on_after_batch_transfer((x, y))
    model = instantiate(cfg.model)
    assert model(images).shape == (8, 3)
    assert cache_files(tmp_path)  # under paths.data_dir


# --- errors -----------------------------------------------------------------------------------


def test_root_must_be_set_unless_synthetic(tmp_path):
    with pytest.raises(UserError, match=r"data.root is not set.*data.synthetic=true"):
        ImageFolderDataModule(str(tmp_path), root=None)


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match=r"data.root=.*nowhere does not exist.*<class_name>"):
        datamodule(tmp_path, tmp_path / "nowhere")


def broken_folder(root: Path, problem: str) -> str:
    """Make a folder with `problem`; return the pattern its error must match."""
    if problem == "empty":
        root.mkdir()
        return "has no class sub-folders"
    if problem == "one class":
        make_folder(root, classes={"cat": COLOURS["cat"]})
        return "only the class folder 'cat'.*at least 2 classes"
    if problem == "class without images":
        make_folder(root)
        (root / "emu").mkdir()
        (root / "emu" / "notes.txt").write_text("no images here")
        return "class folder .*emu holds no images"
    if problem == "undecodable file":
        make_folder(root)
        (root / "dog" / "broken.jpg").write_bytes(b"\x00garbage, not a JPEG" * 10)
        return r"cannot decode the image .*dog.broken\.jpg"
    if problem == "wrong num_classes":
        make_folder(root, classes={**COLOURS, "yak": (1, 2, 3)})
        return "data.num_classes=3 but .* has 4 class folders"
    if problem == "unknown test class":
        make_folder(root / "train")
        make_folder(root / "test", classes={"cat": COLOURS["cat"], "emu": (1, 2, 3)})
        return "emu is not one of the training classes"
    if problem == "empty test folder":
        make_folder(root / "train")
        (root / "test").mkdir()
        return "the test folder .*test has no class sub-folders"
    raise ValueError(problem)


PROBLEMS = (
    "empty",
    "one class",
    "class without images",
    "undecodable file",
    "wrong num_classes",
    "unknown test class",
    "empty test folder",
)


def test_one_folder_of_unlabelled_images_is_enough_for_generative_projects(tmp_path):
    root = make_folder(tmp_path / "faces", classes={"all": COLOURS["cat"]})
    dm = ready(tmp_path, root, num_classes=1, min_classes=1)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (3, 16, 16) and set(labels.tolist()) == {0}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_folder_problems_are_user_errors(tmp_path, problem):
    pattern = broken_folder(tmp_path / "pics", problem)
    dm = datamodule(tmp_path, tmp_path / "pics")
    with pytest.raises(UserError, match=pattern):
        dm.prepare_data()
    with pytest.raises(UserError, match=pattern):
        dm.setup("fit")  # without prepare_data (no trainer) too
