"""The vision layer: device-resident data, batch augmentation, test-time augmentation, the
speedrun's whitening, and the cifar10 and vit projects learning on synthetic images."""

import pytest
import torch
from torch import nn

from common.data.cifar10 import CIFAR10DataModule
from common.data.images import auto_augment, cutout, flip_and_translate
from common.train import train
from projects.cifar10.model import tta_logits
from projects.cifar10.nets import SpeedrunNet
from tests.test_data import fake_trainer


def cifar(tmp_path, **kwargs) -> CIFAR10DataModule:
    args = dict(synthetic=True, synthetic_size=(600, 100), in_chans=3, image_size=32, batch_size=64)
    return CIFAR10DataModule(str(tmp_path), **{**args, **kwargs})


# --- data.loader=device ------------------------------------------------------------------


def test_device_loader_holds_the_data_on_the_training_device(tmp_path):
    # "meta" stands in for a GPU: tensors that live there can only have come from the move.
    dm = cifar(tmp_path)
    dm.trainer = fake_trainer(world_size=1)
    dm.trainer.strategy.root_device = torch.device("meta")
    dm.setup("fit")
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        assert all(t.device.type == "meta" for t in dataset.tensors)
    x, y = next(iter(dm.train_dataloader()))
    assert x.device.type == "meta" and x.shape == (64, 3, 32, 32) and x.dtype == torch.uint8
    assert y.device.type == "meta" and y.dtype == torch.int64


def test_dataloader_path_leaves_the_data_in_host_memory(tmp_path):
    dm = cifar(tmp_path, loader="dataloader")
    dm.trainer = fake_trainer(world_size=1)
    dm.trainer.strategy.root_device = torch.device("meta")
    dm.setup("fit")
    assert dm.train_set.tensors[0].device.type == "cpu"


def test_device_loader_gives_every_sample_once_and_disjoint_shards(tmp_path):
    seen = []
    for rank in range(3):
        dm = cifar(tmp_path, val_size=0.5, batch_size=60)
        dm.trainer = fake_trainer(world_size=3, rank=rank)
        dm.setup("fit")
        # Identify samples by their label and first pixels: unique enough for 300 images.
        keys = [tuple(x[:8].tolist()) for x, _ in _samples(dm.val_dataloader())]
        seen.append(keys)
    flat = [k for keys in seen for k in keys]
    assert len(flat) == 300 and len(set(flat)) == 300  # all of val, once, split over 3 ranks


def _samples(loader):
    for x, y in loader:
        yield from zip(x.flatten(1), y, strict=True)


def test_transform_normalizes_and_augments(tmp_path):
    dm = cifar(tmp_path, flip=True, crop_padding=4, cutout=8, auto_augment="randaugment")
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    plain = dm.transform(x, train=False)
    assert plain.dtype == torch.float32 and plain.shape == (64, 3, 32, 32)
    assert torch.allclose(plain, (x.float() / 255 - mean) / std, atol=1e-5)
    augmented = dm.transform(x, train=True)
    assert augmented.shape == plain.shape and torch.isfinite(augmented).all()
    low, high = (0 - mean) / std, (1 - mean) / std  # black and white after normalization
    assert (augmented >= low - 1e-5).all() and (augmented <= high + 1e-5).all()
    assert not torch.equal(augmented, plain)


def test_cutout_zeroes_one_square_per_image():
    out = cutout(torch.ones(32, 3, 16, 16), size=5)
    zeros = out[:, 0] == 0  # (B, H, W)
    assert torch.equal(zeros, (out == 0).all(1))  # every channel alike
    for mask in zeros:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert 1 <= len(rows) <= 5 and 1 <= len(cols) <= 5
        assert mask.sum() == len(rows) * len(cols)  # a (clipped) rectangle, nothing else


def test_reflect_padding_brings_in_no_black_pixels():
    images = torch.rand(16, 3, 8, 8) + 1  # no zeros anywhere
    out = flip_and_translate(images, flip=True, padding=3, padding_mode="reflect")
    assert (out >= 1).all()
    constant = flip_and_translate(images, flip=False, padding=3)
    assert (constant == 0).any()  # zero padding does


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_auto_augment_keeps_uint8_images(policy):
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    out = auto_augment(images, policy, groups=8)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_bad_augmentation_names_are_user_errors(tmp_path):
    from common.errors import UserError

    with pytest.raises(UserError, match="padding_mode"):
        cifar(tmp_path, padding_mode="wrap")
    with pytest.raises(UserError, match="auto_augment"):
        cifar(tmp_path, auto_augment="trivial")


# --- test-time augmentation and the speedrun net ------------------------------------------


def test_tta_averages_the_views():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(tta_logits(net, x, "none"), net(x))
    flip = tta_logits(net, x, "flip")
    assert torch.allclose(flip, (net(x) + net(x.flip(3))) / 2, atol=1e-6)
    full = tta_logits(net, x, "flip_translate")
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, x.flip(3)] + [
        v for s in (padded[..., :8, :8], padded[..., 2:, 2:]) for v in (s, s.flip(3))
    ]
    weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    expected = sum(w * net(v) for w, v in zip(weights, views, strict=True))
    assert torch.allclose(full, expected, atol=1e-5)


def test_whitening_layer_decorrelates_patches():
    # Correlated pixels: smooth random images, then normalized.
    images = nn.functional.avg_pool2d(torch.randn(400, 3, 34, 34), 3, 1)  # (400, 3, 32, 32)
    images = (images - images.mean()) / images.std()
    net = SpeedrunNet()
    net.init_whitening(images, eps=0)
    with torch.no_grad():
        out = nn.functional.conv2d(images, net.whiten.weight[:12])  # (N, 12, 31, 31)
    flat = out.transpose(0, 1).reshape(12, -1)
    second_moment = flat @ flat.T / flat.shape[1]
    assert torch.allclose(second_moment, torch.eye(12), atol=0.02)  # whitened: identity


# --- learning -----------------------------------------------------------------------------

LEARN = ["data.synthetic=true", "logger=csv", "trainer.limit_val_batches=2", "trainer.max_epochs=1"]


def test_resnet_learns_synthetic_images(config):
    cfg = config(
        "project=cifar10",
        *LEARN,
        "model.net.depths=[1,1,1,1]",
        "model.net.width=16",
        "data.batch_size=64",
        "trainer.max_steps=120",
        "data.synthetic_size=[8000,500]",
    )
    assert train(cfg)["test/acc"] > 0.6  # chance is 0.1


def test_speedrun_learns_synthetic_images(config):
    cfg = config(
        "project=cifar10",
        "experiment=cifar10_speedrun",
        *LEARN,
        "trainer.precision=32-true",
        "model.net.widths=[16,32,32]",
        "data.batch_size=200",
        "trainer.max_epochs=2",
        "data.synthetic_size=[4000,400]",
        "data.val_size=400",
    )
    assert train(cfg)["test/acc"] > 0.6


def test_the_speedrun_warm_up_changes_nothing_it_trains(config, caplog):
    # Untimed steps before the timer (cuDNN autotuning, a compile): the run that follows is the
    # one it would have been without them, to the last bit on a CPU.
    def run(steps: int) -> dict:
        return train(
            config(
                "project=cifar10",
                "experiment=cifar10_speedrun",
                *LEARN,
                "trainer.precision=32-true",
                "model.net.widths=[8,16,16]",
                "data.batch_size=100",
                "trainer.max_steps=3",
                "data.synthetic_size=[600,100]",
                "data.val_size=100",
                f"model.warmup_steps={steps}",
            )
        )

    with caplog.at_level("INFO"):
        warmed = run(2)
    assert "after 2 untimed warm-up steps" in caplog.text
    cold = run(0)
    assert warmed["test/loss"] == cold["test/loss"]


def test_vit_learns_synthetic_images(config):
    cfg = config(
        "project=vit",
        *LEARN,
        "model.net.embed_dim=64",
        "model.net.depth=2",
        "model.net.num_heads=2",
        "model.net.drop_path_rate=0",
        "data.auto_augment=null",
        "model.optimizer.lr=0.002",
        "data.batch_size=64",
        "trainer.max_steps=150",
        "data.synthetic_size=[9600,500]",
    )
    assert train(cfg)["test/acc"] > 0.6  # measured 0.79; attention learns position slowly
