"""Detection data: the synthetic shapes, Pascal VOC on a fake folder, and the batch contract."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

import projects.detection.shapes
from common.errors import UserError
from projects.detection.data import (
    DetectionDataset,
    ShapesDataModule,
    VOCDataModule,
    collate,
    flip_horizontally,
)
from projects.detection.data import shapes_dataset as generate_shapes
from projects.detection.voc import VOC_CLASSES, read_annotation
from tests.conftest import make_config

SMALL = dict(image_size=32, min_size=4, max_size=12)  # fast shapes for loader tests


def fake_trainer(world_size: int = 1, rank: int = 0, training: bool = False):
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    return SimpleNamespace(
        world_size=world_size, global_rank=rank, strategy=strategy, training=training
    )


def pixel_box(mask: torch.Tensor) -> list[float]:
    """xyxy pixel edges of the True pixels of a (H, W) mask."""
    ys, xs = mask.nonzero().unbind(1)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def check_contract(images, targets, batch: int, size: int, num_classes: int) -> None:
    assert images.shape == (batch, 3, size, size) and images.dtype == torch.uint8
    assert isinstance(targets, list) and len(targets) == batch
    for t in targets:
        boxes, labels = t["boxes"], t["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(labels), 4)
        assert ((0 <= labels) & (labels < num_classes)).all()
        assert (boxes >= 0).all() and (boxes <= size).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


# --- the shapes generator -----------------------------------------------------------------------


def test_shapes_are_seeded_and_splits_differ():
    a = generate_shapes(40, seed=1)
    b = generate_shapes(40, seed=1)
    for x, y in zip(
        (a.images, a.boxes, a.labels, a.counts),
        (b.images, b.boxes, b.labels, b.counts),
        strict=True,
    ):
        assert torch.equal(x, y)
    assert not torch.equal(a.images, generate_shapes(40, seed=2).images)
    assert not torch.equal(a.images, generate_shapes(40, seed=1, split_seed=1).images)
    train, _, test = ShapesDataModule("unused", synthetic_size=(8, 8), **SMALL).load()
    assert not torch.equal(train.images, test.images)


def test_shapes_boxes_labels_and_counts_are_valid():
    ds = generate_shapes(300, max_objects=4, min_size=16, max_size=48)
    assert ds.images.shape == (300, 3, 128, 128) and ds.images.dtype == torch.uint8
    assert 1 <= ds.counts.min() and ds.counts.max() <= 4
    assert set(ds.counts.tolist()) == {1, 2, 3, 4}
    for i in range(len(ds)):
        _, target = ds[i]
        boxes, labels = target["boxes"], target["labels"]
        assert ((0 <= labels) & (labels < 3)).all()
        assert (boxes >= 0).all() and (boxes <= 128).all()
        sides = boxes[:, 2:] - boxes[:, :2]  # (N_i, 2)
        assert (sides >= 16 - 2).all() and (sides <= 48).all()  # tight: at most a pixel less a side
    assert (ds.labels[torch.arange(4) >= ds.counts[:, None]] == -1).all()  # padding


def check_tight_boxes(ds: DetectionDataset, size: int = 128) -> int:
    """Every box that no other box comes near is the tight extent of its shape's pixels (within
    a pixel); returns how many were checked. Plain backgrounds only: drawn = not background."""
    checked = 0
    for i in range(len(ds)):
        image, target = ds[i]
        boxes = target["boxes"].long()
        outside = torch.ones(size, size, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.tolist():
            outside[y1:y2, x1:x2] = False
        background = image[:, outside][:, 0]  # (3,): the colour of a pixel no box covers
        for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            # The box grown by 2 pixels, when no other box reaches into it.
            a, b, c, d = max(x1 - 2, 0), max(y1 - 2, 0), min(x2 + 2, size), min(y2 + 2, size)
            others = torch.cat([boxes[:j], boxes[j + 1 :]])
            if (
                (others[:, 0] < c) & (others[:, 2] > a) & (others[:, 1] < d) & (others[:, 3] > b)
            ).any():
                continue
            drawn = (image[:, b:d, a:c] != background[:, None, None]).any(0)  # (d - b, c - a)
            found = torch.tensor(pixel_box(drawn)) + torch.tensor([a, b, a, b])
            assert (found - torch.tensor([x1, y1, x2, y2])).abs().max() <= 1, (i, j)
            checked += 1
    return checked


def test_boxes_are_tight_around_isolated_shapes():
    assert check_tight_boxes(generate_shapes(150, noise=0.0, seed=3)) > 100


def test_images_drawn_in_chunks_keep_their_own_boxes(monkeypatch):
    """The generator draws CHUNK images at a time through strided views of the batch: images
    past the first chunk must get their own shapes and boxes, not another chunk's."""
    monkeypatch.setattr(projects.detection.shapes, "CHUNK", 8)
    ds = generate_shapes(30, noise=0.0, seed=4)  # chunks of 8, 8, 8 and 6 images
    assert check_tight_boxes(ds) > 20
    firsts = ds.images[:, :, 0, 0]  # one background pixel per image: they must not repeat
    assert len({tuple(p.tolist()) for p in firsts}) > 25


def test_bad_shape_settings_are_user_errors():
    with pytest.raises(UserError, match="data.num_classes=3"):
        ShapesDataModule("unused", num_classes=4)
    with pytest.raises(UserError, match="2 names for the 3 classes"):
        ShapesDataModule("unused", class_names=["a", "b"])
    with pytest.raises(UserError, match="min_size"):
        ShapesDataModule("unused", min_size=40, max_size=20)


# --- loaders and the batch contract ---------------------------------------------------------------


def shapes_module(world_size: int = 1, rank: int = 0, **kwargs) -> ShapesDataModule:
    settings = dict(synthetic_size=(103, 10), val_size=13, batch_size=8, seed=5, **SMALL)
    dm = ShapesDataModule("unused", **{**settings, **kwargs})
    dm.trainer = fake_trainer(world_size, rank)
    dm.setup("fit")
    return dm


def keyed(dataset: DetectionDataset) -> dict[bytes, dict]:
    """Image bytes -> target: identifies samples (the random images do not repeat)."""
    return {dataset.images[i].numpy().tobytes(): dataset[i][1] for i in range(len(dataset))}


def test_device_loader_yields_every_sample_once_per_epoch():
    dm = shapes_module()
    expected = keyed(dm.train_set)
    assert len(expected) == 90
    loader = dm.train_dataloader()
    epochs = []
    for _ in range(2):
        seen = []
        for images, targets in loader:
            for image, target in zip(images, targets, strict=True):
                truth = expected[image.numpy().tobytes()]  # boxes travel with their image
                assert torch.equal(target["boxes"], truth["boxes"])
                assert torch.equal(target["labels"], truth["labels"])
                seen.append(image.numpy().tobytes())
        assert sorted(seen) == sorted(expected)
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled
    loader.sampler.set_epoch(0)  # what Lightning does (on resume too)
    assert [img.numpy().tobytes() for img in next(iter(loader))[0]] == epochs[0][:8]


def test_device_loader_ddp_shards_are_disjoint():
    ranks = [shapes_module(world_size=2, rank=r) for r in range(2)]
    train = [[x.numpy().tobytes() for b in dm.train_dataloader() for x in b[0]] for dm in ranks]
    val = [[x.numpy().tobytes() for b in dm.val_dataloader() for x in b[0]] for dm in ranks]
    assert ranks[0].batch_size_per_device == 4
    assert len(train[0]) == len(train[1]) == 45 and not set(train[0]) & set(train[1])
    assert sorted(val[0] + val[1]) == sorted(keyed(ranks[0].val_set))  # every one, once


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_batches_follow_the_contract(loader):
    dm = shapes_module(loader=loader)
    images, targets = next(iter(dm.train_dataloader()))
    check_contract(images, targets, 8, 32, 3)
    assert all(1 <= len(t["labels"]) <= 4 for t in targets)
    normalized, same = dm.on_after_batch_transfer((images, targets))  # not training: no flip
    assert normalized.shape == (8, 3, 32, 32) and normalized.dtype == torch.float32
    spec = dm.spec()
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    assert torch.allclose(normalized, (images / 255 - mean) / std, atol=1e-5)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(same, targets, strict=True))


def test_collate_stacks_images_and_keeps_targets_a_list():
    ds = generate_shapes(3, **SMALL)
    images, targets = collate([ds[i] for i in range(3)])
    assert (
        images.shape == (3, 3, 32, 32) and [len(t["boxes"]) for t in targets] == ds.counts.tolist()
    )


def one_square_batch(n: int) -> tuple[torch.Tensor, list[dict]]:
    """n black 64x64 images with a white square at columns 10..29, rows 40..49."""
    images = torch.zeros(n, 3, 64, 64, dtype=torch.uint8)
    images[:, :, 40:50, 10:30] = 255
    box = torch.tensor([[10.0, 40.0, 30.0, 50.0]])
    return images, [{"boxes": box, "labels": torch.tensor([1])} for _ in range(n)]


def test_flip_moves_boxes_with_the_pixels():
    images, targets = one_square_batch(2)
    flipped, moved = flip_horizontally(images, targets, torch.tensor([True, False]))
    assert moved[0]["boxes"].tolist() == [[34.0, 40.0, 54.0, 50.0]]  # x' = 64 - x
    assert moved[1]["boxes"].tolist() == [[10.0, 40.0, 30.0, 50.0]]
    for image, target in zip(flipped, moved, strict=True):
        assert pixel_box(image[0] > 0) == target["boxes"][0].tolist()


def test_training_batches_are_flipped_with_their_boxes():
    dm = ShapesDataModule("unused", **SMALL)
    dm.trainer = fake_trainer(training=True)
    torch.manual_seed(0)
    images, targets = dm.on_after_batch_transfer(one_square_batch(32))
    lefts = {t["boxes"][0, 0].item() for t in targets}
    assert lefts == {10.0, 34.0}  # some flipped, some not
    for image, target in zip(images, targets, strict=True):
        assert pixel_box(image[0] > 0) == target["boxes"][0].tolist()  # white is > 0 normalized


def test_data_configs_compose_and_instantiate(tmp_path):
    overrides = ["data.synthetic_size=[40,8]", "data.val_size=8", "data.image_size=32"]
    overrides += ["data.min_size=4", "data.max_size=12"]
    cfg = make_config(tmp_path, ["project=mnist", "data=shapes", *overrides])
    dm = instantiate(cfg.data)
    assert isinstance(dm, ShapesDataModule) and dm.class_names == ["circle", "square", "triangle"]
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    check_contract(images, targets, cfg.data.batch_size, 32, 3)

    assert dm.spec().class_names == dm.class_names  # what the model gets

    cfg = make_config(tmp_path, ["project=mnist", "data=voc"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, VOCDataModule) and dm.class_names == list(VOC_CLASSES)
    assert list(cfg.data.class_names) == dm.class_names
    assert (dm.num_classes, dm.image_size, dm.batch_size, dm.year) == (20, 320, 16, "2007")


# --- Pascal VOC ---------------------------------------------------------------------------------

# name: (width, height, [(class, xmin, ymin, xmax, ymax, difficult)]), VOC's 1-based inclusive pixels
FAKE_VOC = {
    "000001": (200, 100, [("dog", 21, 11, 60, 50, 0), ("person", 100, 20, 180, 90, 1)]),
    "000002": (120, 160, [("car", 1, 1, 120, 160, 0), ("cat", 30, 40, 70, 100, 0)]),
    "000003": (100, 100, [("bird", 10, 10, 20, 20, 1)]),  # only a difficult one: no boxes
    "000004": (150, 90, [("tvmonitor", 50, 30, 99, 79, 0)]),
}


def fake_voc(root: Path, trainval=("000001", "000002", "000003"), test=("000004", "000001")):
    """A tiny VOCdevkit/VOC2007 with JPEGs and XML annotations; returns the VOC2007 folder."""
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for name, (w, h, objects) in FAKE_VOC.items():
        Image.new("RGB", (w, h), (90, 140, 200)).save(voc / "JPEGImages" / f"{name}.jpg")
        xml = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2, d in objects
        )
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename>{size}{xml}</annotation>"
        )
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(trainval) + "\n")
    (voc / "ImageSets/Main/test.txt").write_text("\n".join(test) + "\n")
    return voc


def test_read_annotation_skips_difficult_and_counts_pixel_edges(tmp_path):
    voc = fake_voc(tmp_path)
    boxes, labels = read_annotation(voc / "Annotations" / "000001.xml", VOC_CLASSES)
    assert boxes.tolist() == [[20.0, 10.0, 60.0, 50.0]]  # the difficult person is left out
    assert labels.tolist() == [VOC_CLASSES.index("dog")]
    boxes, labels = read_annotation(voc / "Annotations" / "000003.xml", VOC_CLASSES)
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_voc_reads_resizes_and_batches_the_fake_folder(tmp_path):
    fake_voc(tmp_path)
    dm = VOCDataModule(
        str(tmp_path), image_size=64, download=False, val_size=1, batch_size=2, loader="dataloader"
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (2, 1, 2)
    assert not dm.val_set.dataset.augment  # the validation split is only resized

    image, target = dm.test_set[1]  # 000001, 200 x 100 -> 64 x 64: x * 0.32, y * 0.64
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert torch.allclose(target["boxes"], torch.tensor([[6.4, 6.4, 19.2, 32.0]]), atol=1e-4)
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog")]

    images, targets = next(iter(dm.test_dataloader()))
    check_contract(images, targets, 2, 64, 20)
    images, targets = next(iter(dm.train_dataloader()))
    check_contract(images, targets, 2, 64, 20)
    pool = dm.train_set.dataset  # augmented: every sample a few times, the box-less 000003 too
    torch.manual_seed(0)
    for _ in range(4):
        check_contract(*collate([pool[i] for i in range(len(pool))]), 3, 64, 20)


def test_voc_augmentation_moves_boxes_with_the_pixels():
    """Zoom out, IoU crop and resize (the photometric step left out: it changes the colours the
    check finds the object by): a white rectangle's pixels stay inside its box."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from projects.detection.voc import voc_transform

    geometric = v2.Compose(voc_transform(64, augment=True).transforms[1:])
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[:, 20:70, 40:120] = 255
    boxes = tv_tensors.BoundingBoxes([[40, 20, 120, 70]], format="XYXY", canvas_size=(100, 200))
    torch.manual_seed(0)
    checked = 0
    for _ in range(30):
        out, target = geometric(
            tv_tensors.Image(image), {"boxes": boxes, "labels": torch.tensor([7])}
        )
        assert out.shape == (3, 64, 64)
        if len(target["boxes"]):  # the crop may leave the object out
            found = torch.tensor(pixel_box(out.min(0).values > 127), dtype=torch.float32)
            assert (found - target["boxes"][0]).abs().max() <= 1.5
            checked += 1
    assert checked > 10


def test_missing_voc_names_folder_files_and_switch(tmp_path):
    dm = VOCDataModule(str(tmp_path), download=False, loader="dataloader")
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in message
    assert all(f in message for f in ("JPEGImages", "Annotations", "trainval.txt", "test.txt"))
    assert "data=shapes" in message and "data.download=false" in message
    with pytest.raises(UserError, match="files missing"):
        dm.setup("fit")


def test_voc_settings_that_cannot_work_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data.loader=dataloader"):
        VOCDataModule(str(tmp_path), loader="device")
    with pytest.raises(UserError, match="no public test set"):
        VOCDataModule(str(tmp_path), year=2012, loader="dataloader")
    with pytest.raises(UserError, match="data.num_classes=20"):
        VOCDataModule(str(tmp_path), num_classes=10, loader="dataloader")


def test_synthetic_voc_is_shapes_under_voc_names(tmp_path):
    dm = VOCDataModule(
        str(tmp_path),
        synthetic=True,
        synthetic_size=(20, 4),
        image_size=64,
        val_size=4,
        batch_size=4,
        loader="dataloader",
    )
    dm.prepare_data()  # nothing to fetch
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    check_contract(images, targets, 4, 64, 3)  # labels 0-2 only
    assert dm.num_classes == 20
