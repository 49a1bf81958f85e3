"""The shared datamodule layer: splits, loaders, per-device batches, MNIST files and errors."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from common.data import DataModule, Splits, TensorLoader
from common.data.base import split
from common.data.cifar10 import CIFAR10DataModule
from common.data.mnist import RAW_FILES, MNISTDataModule, write_synthetic_mnist
from common.data.synthetic import synthetic_images
from common.errors import UserError
from projects.linreg.data import RegressionDataModule


def fake_mnist(root: Path, n_train: int = 60, n_test: int = 20) -> Path:
    return write_synthetic_mnist(root, n_train, n_test)


def fake_trainer(world_size: int, rank: int = 0):
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    return SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy)


# --- TensorLoader -------------------------------------------------------------------------


def test_tensor_loader_yields_every_sample_once_per_epoch():
    x = torch.arange(103)
    loader = TensorLoader(x, x * 2, batch_size=10, shuffle=True, seed=1)
    assert len(loader) == 11
    for _ in range(2):
        batches = list(loader)
        seen = torch.cat([b[0] for b in batches])
        assert sorted(seen.tolist()) == list(range(103))
        assert all(torch.equal(b[1], b[0] * 2) for b in batches)  # rows stay aligned
        assert len(batches) == 11 and len(batches[-1][0]) == 3


def test_tensor_loader_is_seeded_and_reshuffles_each_epoch():
    x = torch.arange(50)
    first = [b[0] for b in TensorLoader(x, batch_size=50, shuffle=True, seed=3)]
    again = TensorLoader(x, batch_size=50, shuffle=True, seed=3)
    epoch0, epoch1 = next(iter(again))[0], next(iter(again))[0]
    assert torch.equal(first[0], epoch0)
    assert not torch.equal(epoch0, epoch1)
    again.set_epoch(0)  # what Lightning does on resume
    assert torch.equal(next(iter(again))[0], epoch0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_tensor_loader_ddp_shards_are_disjoint(shuffle):
    x = torch.arange(101)
    shards = [
        torch.cat(
            [b[0] for b in TensorLoader(x, batch_size=8, shuffle=shuffle, rank=r, world_size=3)]
        )
        for r in range(3)
    ]
    union = torch.cat(shards)
    assert len(set(union.tolist())) == len(union)  # no sample on two ranks
    if shuffle:  # training: equal shards, so ranks take the same number of steps
        assert {len(s) for s in shards} == {33}
    else:  # evaluation: every sample exactly once
        assert sorted(union.tolist()) == list(range(101))


def test_tensor_loader_drop_last():
    loader = TensorLoader(torch.arange(25), batch_size=10, drop_last=True)
    assert len(loader) == 2 and [len(b[0]) for b in loader] == [10, 10]


# --- splits and batch sizes ------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_sized():
    ds = TensorDataset(torch.arange(100))
    train, val = split(ds, 0.2, seed=0)
    train2, val2 = split(ds, 20, seed=0)
    assert len(train) == 80 and len(val) == 20
    assert torch.equal(val.tensors[0], val2.tensors[0])
    assert not set(train.tensors[0].tolist()) & set(val.tensors[0].tolist())
    assert not torch.equal(val.tensors[0], split(ds, 0.2, seed=1)[1].tensors[0])


def test_split_rejects_a_validation_set_that_takes_everything_or_nothing():
    with pytest.raises(UserError, match="val_size"):
        split(TensorDataset(torch.arange(10)), 10, seed=0)
    with pytest.raises(UserError, match="data.val_size=0.01 of 10 samples rounds to none"):
        split(TensorDataset(torch.arange(10)), 0.01, seed=0)


def test_training_without_validation_samples_is_a_user_error(tmp_path):
    dm = RegressionDataModule(str(tmp_path), val_size=0)
    with pytest.raises(UserError, match="no validation samples .data.val_size=0."):
        dm.setup("fit")


def test_global_batch_is_split_across_processes(tmp_path):
    dm = RegressionDataModule(str(tmp_path), batch_size=64)
    dm.trainer = fake_trainer(world_size=4, rank=1)
    dm.setup("fit")
    assert dm.batch_size_per_device == 16
    loader = dm.train_dataloader()
    assert loader.batch_size == 16 and loader.world_size == 4 and loader.rank == 1


def test_batch_that_does_not_divide_is_a_user_error(tmp_path):
    dm = RegressionDataModule(str(tmp_path), batch_size=10)
    dm.trainer = fake_trainer(world_size=3)
    with pytest.raises(UserError, match="divide evenly over 3"):
        dm.setup("fit")


def test_dataloader_path_gives_the_same_batches_shapes(tmp_path):
    dm = MNISTDataModule(
        str(tmp_path), synthetic=True, synthetic_size=(300, 50), loader="dataloader"
    )
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64


# --- the source contract ---------------------------------------------------------------------------


class Fetching(DataModule):
    """A new source as a contributor would write one: its file, its download, its reader."""

    name = "fetching"
    expected = ("numbers.pt",)

    def fetch(self) -> None:
        self.fetches = getattr(self, "fetches", 0) + 1
        torch.save(torch.arange(40.0), self.location / "numbers.pt")

    def read(self) -> Splits:
        x = torch.load(self.location / "numbers.pt", weights_only=True)
        return Splits(TensorDataset(x, x * 2))


def test_a_new_source_downloads_in_prepare_data_only(tmp_path):
    dm = Fetching(str(tmp_path), batch_size=4, test_size=8)
    with pytest.raises(UserError, match=r"fetching files missing in .* \(expected numbers.pt\)"):
        dm.setup("fit")  # setup runs on every DDP process: it never downloads
    assert not hasattr(dm, "fetches")
    dm.prepare_data()
    dm.prepare_data()  # the files are there now: no second download
    dm.setup("fit")
    assert dm.fetches == 1
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (29, 3, 8)
    offline = Fetching(str(tmp_path / "empty"), download=False)
    with pytest.raises(UserError, match="data.download=false. Put the files there"):
        offline.prepare_data()


def test_a_source_without_a_synthetic_version_says_so(tmp_path):
    with pytest.raises(UserError, match="fetching has no synthetic version"):
        Fetching(str(tmp_path), synthetic=True).setup("fit")


# --- MNIST -------------------------------------------------------------------------------------


def test_synthetic_mnist_has_the_real_shapes_dtypes_and_ranges(tmp_path):
    dm = MNISTDataModule(str(tmp_path), synthetic=True, synthetic_size=(500, 100), batch_size=32)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (450, 50, 100)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    images, labels = dm.on_after_batch_transfer((x, y))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    low, high = (0 - dm.mean[0]) / dm.std[0], (1 - dm.mean[0]) / dm.std[0]  # black, white
    assert images.min() >= low - 1e-5 and images.max() <= high + 1e-5
    # Synthetic digits have no published statistics: the training pool's own make them standard.
    assert abs(images.mean()) < 0.2 and 0.8 < images.std() < 1.2
    assert torch.equal(labels, y)


def test_a_checkpoints_normalization_is_adopted(tmp_path):
    """Testing or resuming a checkpoint normalizes as its training did, not as this data would."""
    from common.data import DataSpec

    dm = MNISTDataModule(str(tmp_path), synthetic=True, synthetic_size=(200, 50), val_size=20)
    dm.adopt(DataSpec(mean=[0.25], std=[0.5]))
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert dm.spec().mean == [0.25] and dm.spec().std == [0.5]
    assert torch.allclose(dm.transform(x, train=False), (x[:, None] / 255 - 0.25) / 0.5)


def test_synthetic_data_is_seeded_and_splits_share_classes():
    a, la = synthetic_images(64, 10, (28, 28), seed=5, split_seed=0)
    b, lb = synthetic_images(64, 10, (28, 28), seed=5, split_seed=0)
    c, _ = synthetic_images(64, 10, (28, 28), seed=5, split_seed=1)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    rgb, _ = synthetic_images(8, 4, (3, 32, 32), seed=0)
    assert rgb.shape == (8, 3, 32, 32) and rgb.dtype == torch.uint8


def test_mnist_reads_real_idx_files(tmp_path):
    fake_mnist(tmp_path, n_train=60, n_test=20)
    dm = MNISTDataModule(str(tmp_path), val_size=10, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    assert dm.train_set.tensors[0].shape[1:] == (28, 28)


def test_missing_mnist_names_folder_files_and_switch(tmp_path):
    dm = MNISTDataModule(str(tmp_path), download=False)
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in RAW_FILES)
    assert "data.synthetic=true" in message


def test_corrupt_mnist_is_a_user_error(tmp_path):
    raw = fake_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    dm = MNISTDataModule(str(tmp_path), download=False)
    with pytest.raises(UserError, match="cannot read MNIST"):
        dm.setup("fit")


def test_mnist_refuses_other_shapes_on_real_data(tmp_path):
    with pytest.raises(UserError, match="10 classes"):
        MNISTDataModule(str(tmp_path), num_classes=5)


# --- regression -------------------------------------------------------------------------------


def test_synthetic_regression_follows_its_true_weights(tmp_path):
    dm = RegressionDataModule(str(tmp_path), num_features=3, num_samples=500, noise=0.0)
    dm.setup("fit")
    x, y = dm.train_set.tensors
    w, b = dm.known_weights
    assert torch.allclose(x @ w + b, y, atol=1e-5)


def test_diabetes_is_standardized_with_training_statistics(tmp_path):
    dm = RegressionDataModule(str(tmp_path), source="diabetes", num_features=10, standardize=True)
    dm.setup("fit")
    pool_x = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0]])
    assert len(pool_x) + len(dm.test_set) == 442
    assert torch.allclose(pool_x.mean(0), torch.zeros(10), atol=1e-5)
    assert dm.known_weights is None


def test_unknown_regression_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="synthetic, diabetes"):
        RegressionDataModule(str(tmp_path), source="housing")


def test_digits_are_real_offline_and_mnist_shaped(tmp_path):
    from projects.mnist.data import DigitsDataModule

    dm = DigitsDataModule(str(tmp_path), val_size=0.1, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 1797
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 28, 28) and x.dtype == torch.uint8 and y.max() <= 9
    images, _ = dm.on_after_batch_transfer((x, y))
    assert images.shape == (16, 1, 28, 28)


def test_unpadded_sampler_covers_every_sample_once():
    from common.data.loaders import UnpaddedDistributedSampler

    dataset = TensorDataset(torch.arange(10))
    shards = [list(UnpaddedDistributedSampler(dataset, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(s) for s in shards] == [3, 3, 4]


def test_dataloader_path_evaluates_on_unpadded_shards_under_ddp(tmp_path):
    from common.data.loaders import UnpaddedDistributedSampler

    dm = RegressionDataModule(
        str(tmp_path), num_samples=101, test_size=0.0, val_size=11, loader="dataloader"
    )
    dm.trainer = fake_trainer(world_size=2, rank=1)
    dm.setup("fit")
    sampler = dm.val_dataloader().sampler
    assert isinstance(sampler, UnpaddedDistributedSampler) and len(sampler) == 6


# --- CIFAR-10 and augmentation -------------------------------------------------------------------


def fake_cifar(root: Path, per_batch: int = 20) -> Path:
    import pickle

    raw = root / "cifar-10-batches-py"
    raw.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        images, labels = synthetic_images(per_batch, 10, (3, 32, 32), seed=0, split_seed=i)
        batch = {b"data": images.reshape(per_batch, -1).numpy(), b"labels": labels.tolist()}
        (raw / name).write_bytes(pickle.dumps(batch))
    return raw


def test_cifar10_reads_the_batch_files_into_uint8_tensors(tmp_path):

    fake_cifar(tmp_path)
    dm = CIFAR10DataModule(
        str(tmp_path), in_chans=3, image_size=32, val_size=10, download=False, batch_size=8
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 10, 20)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    images, _ = dm.on_after_batch_transfer((x, y))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32


def test_missing_cifar10_names_folder_files_and_switch(tmp_path):

    dm = CIFAR10DataModule(str(tmp_path), in_chans=3, image_size=32, download=False)
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    assert "cifar-10-batches-py" in str(info.value) and "data_batch_1" in str(info.value)
    assert "data.synthetic=true" in str(info.value)


def test_flip_and_translate_keep_shape_and_move_pixels():
    from common.data.images import flip_and_translate

    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    out = flip_and_translate(images, flip=True, padding=2)
    assert out.shape == images.shape
    changed = (out != images).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # unchanged only when unflipped and not shifted (1 in 50)
    only_flip = flip_and_translate(images, flip=True, padding=0)
    for a, b in zip(only_flip, images, strict=True):  # each sample is itself or its mirror
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    shifted = flip_and_translate(torch.ones(16, 1, 8, 8), flip=False, padding=2)
    assert shifted.sum((1, 2, 3)).min() >= 6 * 6  # at most 2 rows and 2 columns of zero padding


def test_alternating_flips_mirror_each_image_in_every_other_epoch(tmp_path):
    # airbench's schedule: an image seen as is in one epoch is seen mirrored in the next.
    dm = CIFAR10DataModule(
        str(tmp_path), synthetic=True, synthetic_size=(400, 50), val_size=50, flip="alternate"
    )
    dm.setup("fit")
    x = dm.train_set.tensors[0][:256]  # (256, 3, 32, 32) uint8
    plain = dm.transform(x, train=False)
    epochs = [dm.transform(x, train=True, epoch=e) for e in range(3)]
    mirrored = [(e != plain).flatten(1).any(1) for e in epochs]  # (256,) each: flipped or not
    for out in epochs:
        for a, b in zip(out, plain, strict=True):
            assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    assert 0.35 < mirrored[0].float().mean() < 0.65  # about half start mirrored
    assert torch.equal(mirrored[1], ~mirrored[0])  # and swap sides each epoch
    assert torch.equal(mirrored[2], mirrored[0])
    # The epoch comes from the trainer, as Lightning hands batches over while training.
    dm.trainer = SimpleNamespace(training=True, current_epoch=1)
    images, _ = dm.on_after_batch_transfer((x, torch.zeros(len(x))), 0)
    assert torch.equal((images != plain).flatten(1).any(1), mirrored[1])
    with pytest.raises(UserError, match="data.flip='sometimes'"):
        CIFAR10DataModule(str(tmp_path), synthetic=True, flip="sometimes")


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_drop_last_drops_the_short_training_batch_only(tmp_path, loader):
    dm = MNISTDataModule(
        str(tmp_path),
        synthetic=True,
        synthetic_size=(100, 50),
        val_size=10,
        batch_size=32,
        loader=loader,
        drop_last=True,
    )
    dm.setup("fit")
    assert [len(y) for _, y in dm.train_dataloader()] == [32, 32]  # 90 images: 26 left out
    assert sum(len(y) for _, y in dm.val_dataloader()) == 10
