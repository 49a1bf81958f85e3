"""The generative projects: DCGAN's nets and its two-optimizer step, the VAE's ELBO terms against
their closed forms, learning, pictures in TensorBoard, FID, and `make sample`."""

import math
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from common.callbacks.fid import build_fid
from common.conv import size_plan
from common.errors import UserError
from common.instantiate import instantiate_model
from common.sample import sample
from common.train import train
from projects.gan.model import GAN
from projects.gan.nets import Discriminator, Generator
from projects.vae.model import kl_divergence, reconstruction_nll, reparameterize
from projects.vae.nets import ConvVAE
from tests.conftest import FEW_STEPS, make_config

# (image size, channels): MNIST, CIFAR-10, and 64x64 (the DCGAN paper's size, data=image_folder).
SIZES = [(28, 1), (32, 3), (64, 3)]

SHORT = [
    *FEW_STEPS,
    "data.synthetic_size=[200,40]",
    "data.val_size=40",
    "data.batch_size=16",
]


@pytest.mark.parametrize("size, chans", SIZES)
def test_gan_nets_map_noise_to_images_and_images_to_one_logit(size, chans):
    g = Generator(latent_dim=16, out_chans=chans, image_size=size, width=8)
    d = Discriminator(in_chans=chans, image_size=size, width=8)
    images = g(torch.randn(5, 16))
    assert images.shape == (5, chans, size, size)
    assert images.min() >= -1 and images.max() <= 1  # tanh: the data's [-1, 1] range
    assert d(images).shape == (5,)


@pytest.mark.parametrize("size, chans", SIZES)
def test_vae_net_encodes_to_latent_statistics_and_decodes_to_images(size, chans):
    net = ConvVAE(in_chans=chans, image_size=size, latent_dim=6, width=8)
    mu, logvar = net.encode(torch.rand(5, chans, size, size))
    assert mu.shape == logvar.shape == (5, 6)
    assert net.decode(mu).shape == (5, chans, size, size)


def test_size_plan_accepts_s_times_a_power_of_two_and_explains_other_sizes():
    assert size_plan(28) == (7, 2)
    assert size_plan(32) == (4, 3)
    assert size_plan(64) == (4, 4)
    assert size_plan(48) == (6, 3)
    for bad in (6, 30, 100):
        with pytest.raises(UserError, match=f"image size {bad} is not s \\* 2\\*\\*k"):
            size_plan(bad)


class RecordSteps(Callback):
    """At each optimizer step: which net it trains, and both nets' gradients at that moment."""

    def __init__(self):
        self.steps = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        d_params = set(map(id, pl_module.discriminator.parameters()))
        which = "d" if id(optimizer.param_groups[0]["params"][0]) in d_params else "g"

        def grads(net):
            return [None if p.grad is None else p.grad.clone() for p in net.parameters()]

        self.steps.append((which, grads(pl_module.generator), grads(pl_module.discriminator)))


def test_one_gan_step_trains_both_nets_and_each_step_leaves_the_other_nets_gradients_alone():
    L.seed_everything(0)
    g = Generator(latent_dim=8, out_chans=1, image_size=28, width=8)
    d = Discriminator(in_chans=1, image_size=28, width=8)
    adam = torch.optim.Adam  # partials: the module builds one per net
    model = GAN(g, d, optimizer_g=adam, optimizer_d=adam, grid_size=4)
    before_g = [p.detach().clone() for p in g.parameters()]
    before_d = [p.detach().clone() for p in d.parameters()]
    images = torch.rand(16, 1, 28, 28) * 2 - 1
    record = RecordSteps()
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(model, DataLoader(TensorDataset(images, torch.zeros(16)), batch_size=16))

    assert [which for which, _, _ in record.steps] == ["d", "g"]  # D first, then G
    _, g_at_d_step, d_at_d_step = record.steps[0]
    _, g_at_g_step, d_at_g_step = record.steps[1]
    assert all(grad is None for grad in g_at_d_step)  # D's step: no gradient reached G
    assert all(grad is not None for grad in d_at_d_step)
    assert any(grad.abs().sum() > 0 for grad in d_at_d_step)
    assert any(grad is not None and grad.abs().sum() > 0 for grad in g_at_g_step)
    # G's backward went through D, yet D's gradients are exactly those of D's own step.
    assert all(torch.equal(a, b) for a, b in zip(d_at_d_step, d_at_g_step, strict=True))
    for before, net in ((before_g, g), (before_d, d)):  # and both nets' weights moved
        assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


class GameProbe(Callback):
    """After each validation: the discriminator's margin on held-out images, mean D(real) -
    mean D(fake) in probabilities (1: it tells them apart with certainty, 0: chance), and how far
    the samples' statistics are from the data's (the mean image, the pixel spread)."""

    def __init__(self):
        self.margins, self.mean_gaps, self.std_gaps = [], [], []

    def on_validation_epoch_end(self, trainer, pl_module):
        dm = trainer.datamodule
        real = dm.transform(dm.val_set.tensors[0][:256], train=False)  # (256, 1, 16, 16)
        fake = pl_module.generator(pl_module.noise(256, seed=123))
        d = pl_module.discriminator
        self.margins.append((d(real).sigmoid().mean() - d(fake).sigmoid().mean()).item())
        self.mean_gaps.append((real.mean(0) - fake.mean(0)).abs().mean().item())
        self.std_gaps.append(abs(real.std() - fake.std()).item())


@pytest.mark.slow
def test_the_gan_game_moves_toward_its_equilibrium(tmp_path):
    """DCGAN on 16x16 synthetic glyphs, 30 epochs of 40 steps (about 12 s): D first learns to tell
    real from fake, then loses much of its margin as G improves, while G's samples take on the
    data's statistics. Measured with seeds 42, 1, 2, 3 (this config otherwise): the margin peaks
    at 0.87-0.91 and ends at 0.44-0.55 (mean of the last three epochs, 0.51-0.61 of the peak);
    the mean-image gap falls from 0.43-0.45 to 0.09-0.15, the spread gap from 0.38-0.42 to
    0.02-0.07. Twenty epochs were too few: one seed ended at 0.74 of its peak."""
    sizes = ["data.image_size=16", "data.synthetic_size=[2560,500]", "data.val_size=300"]
    nets = ["model.generator.width=16", "model.discriminator.width=16"]
    cfg = make_config(
        tmp_path, ["project=gan", "data.synthetic=true", "data.batch_size=64", *sizes, *nets]
    )
    L.seed_everything(cfg.seed)
    probe = GameProbe()
    trainer = L.Trainer(
        default_root_dir=tmp_path,  # where the module's sample grids go
        max_epochs=30,
        num_sanity_val_steps=0,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(instantiate_model(cfg.model), datamodule=instantiate(cfg.data))
    peak, end = max(probe.margins), sum(probe.margins[-3:]) / 3
    assert peak > 0.5  # D did learn to tell them apart
    assert end < 0.75 * peak  # and lost much of that as G caught up
    assert probe.mean_gaps[-1] < 0.5 * probe.mean_gaps[0]
    assert probe.std_gaps[-1] < 0.25 * probe.std_gaps[0]


def test_kl_term_equals_the_closed_form_for_known_means_and_variances():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, math.log(4.0)]])
    # Row 0 is the prior itself; row 1: 0.5 * (1 + 0) + 0.5 * (4 + 4 - 1 - log 4).
    expected = torch.tensor([0.0, 0.5 + 0.5 * (7 - math.log(4.0))])
    assert torch.allclose(kl_divergence(mu, logvar), expected)
    # And against torch.distributions for random values.
    mu, logvar = torch.randn(8, 5), torch.randn(8, 5)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    reference = torch.distributions.kl_divergence(q, p).sum(dim=1)
    assert torch.allclose(kl_divergence(mu, logvar), reference, atol=1e-5)


def test_reconstruction_terms_are_negative_log_likelihoods_per_image():
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    # Bernoulli cross-entropy with soft targets, as in the PyTorch example VAE.
    bce = -(x * logits.sigmoid().log() + (1 - x) * (1 - logits.sigmoid()).log())
    nll = reconstruction_nll(logits, x, "bernoulli", torch.zeros(()))
    assert torch.allclose(nll, bce.flatten(1).sum(1), atol=1e-4)
    log_scale = torch.tensor(-1.0)
    normal = torch.distributions.Normal(logits.sigmoid(), log_scale.exp())
    nll = reconstruction_nll(logits, x, "gaussian", log_scale)
    assert torch.allclose(nll, -normal.log_prob(x).flatten(1).sum(1), atol=1e-4)


def test_reparameterized_samples_have_the_right_moments_and_carry_gradients():
    torch.manual_seed(0)
    mu = torch.full((20000, 1), 3.0, requires_grad=True)
    logvar = torch.full((20000, 1), math.log(0.25), requires_grad=True)
    z = reparameterize(mu, logvar)
    assert abs(z.mean().item() - 3.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones_like(mu))  # dz/dmu = 1
    assert logvar.grad.abs().sum() > 0


def test_vae_loss_falls_clearly_on_synthetic_images(config):
    cfg = config(
        "project=vae",
        "data.synthetic=true",
        "data.synthetic_size=[1000,100]",
        "data.val_size=100",
        "data.batch_size=32",
        "trainer.max_epochs=2",
        "logger=csv",
    )
    L.seed_everything(cfg.seed)  # as train() does: the same initial weights
    untrained = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    data, model = instantiate(cfg.data), instantiate_model(cfg.model)
    before = untrained.test(model, datamodule=data, verbose=False)[0]["test/loss"]
    metrics = train(cfg)
    # 56 steps: measured 545 -> 423 nats per image. The glyphs' noisy backgrounds cost
    # hundreds of nats that no decoder can save (noise is incompressible), hence "a fifth".
    assert metrics["test/loss"] < 0.85 * before
    assert metrics["test/kl"] > 1  # the latent code carries information about the image
    assert metrics["test/recon"] + metrics["test/kl"] == pytest.approx(metrics["test/loss"], 1e-4)


@pytest.mark.parametrize(
    "project, tags",
    [
        ("gan", ["val/samples"]),
        ("vae", ["val/samples", "val/reconstructions", "val/interpolation"]),
    ],
)
def test_training_logs_image_grids_to_tensorboard_and_the_run_folder(tmp_path, project, tags):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [f"project={project}", "data.synthetic=true", "model.grid_size=16", *SHORT]
    cfg = make_config(tmp_path, overrides)
    train(cfg)
    events = EventAccumulator(str(cfg.paths.output_dir)).Reload()
    assert set(tags) <= set(events.Tags()["images"])
    for tag in tags:
        png = Path(cfg.paths.output_dir, "images", f"{tag.replace('/', '_')}_epoch000.png")
        assert png.is_file()


@pytest.mark.parametrize("project", ["gan", "vae"])
def test_cifar10_shaped_colour_images_run_too(config, project):
    sizes = ["data.synthetic_size=[200,40]", "data.val_size=40"]
    cfg = config(f"project={project}", "data=cifar10", "data.synthetic=true", "debug=fdr", *sizes)
    assert any(key.startswith("test/loss") for key in train(cfg))


@pytest.fixture(scope="module", params=["gan", "vae"])
def trained(request, tmp_path_factory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = make_config(
        tmp, [f"project={request.param}", "data.synthetic=true", "logger=csv", *SHORT]
    )
    train(cfg)
    return request.param, Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")


def test_sample_writes_a_png_grid_of_n_images(tmp_path, trained, capsys):
    project, ckpt = trained
    cfg = make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}", "n=10"], "sample")
    path = sample(cfg)
    assert path == ckpt.with_name("last_samples_n10_seed42.png")
    assert str(path) in capsys.readouterr().out
    # 10 images of 28x28 as 4 per row, 3 rows, with 2-pixel gaps around each.
    assert Image.open(path).size == (4 * 30 + 2, 3 * 30 + 2)
    cfg = make_config(
        tmp_path,
        [f"project={project}", f"ckpt_path={ckpt}", "n=5", "nrow=5", f"output={tmp_path}/row.png"],
        "sample",
    )
    assert Image.open(sample(cfg)).size == (5 * 30 + 2, 30 + 2)


def test_the_same_seed_draws_the_same_samples(tmp_path, trained):
    project, ckpt = trained
    paths = []
    for seed in (1, 1, 2):
        overrides = [f"project={project}", f"ckpt_path={ckpt}", "n=4", f"seed={seed}"]
        overrides.append(f"output={tmp_path}/{len(paths)}.png")
        paths.append(sample(make_config(tmp_path, overrides, "sample")))
    pixels = [Image.open(p).tobytes() for p in paths]
    assert pixels[0] == pixels[1] != pixels[2]


def test_sample_errors_are_readable(tmp_path, trained):
    project, ckpt = trained
    for bad, message in [
        ("n=0", "n=0 must be a positive"),
        ("nrow=-2", "nrow=-2 must be a positive"),
        ("output=grid.jpg", "must end in .png"),
    ]:
        with pytest.raises(UserError, match=message):
            sample(
                make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}", bad], "sample")
            )
    other = "vae" if project == "gan" else "gan"
    with pytest.raises(UserError, match=f"trained by project '{project}'"):
        sample(make_config(tmp_path, [f"project={other}", f"ckpt_path={ckpt}"], "sample"))


def test_sample_from_a_classifier_says_the_project_does_not_sample(tmp_path):
    cfg = make_config(tmp_path, ["project=mnist", "data.synthetic=true", "logger=csv", *SHORT])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    with pytest.raises(
        UserError, match="project 'mnist' cannot sample images; the projects that can: gan, vae"
    ):
        sample(make_config(tmp_path, ["project=mnist", f"ckpt_path={ckpt}"], "sample"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (any connection attempt fails) and an empty torch hub cache."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_fid_without_inception_weights_is_one_readable_error(offline, tmp_path):
    with pytest.raises(UserError, match="FID needs torch-fidelity's InceptionV3") as err:
        build_fid(None)
    assert str(tmp_path / "torch_home") in str(err.value)  # says where to put the file
    assert "callbacks.fid.weights=<file>" in str(err.value)
    corrupt = tmp_path / "inception.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"and {corrupt} failed"):
        build_fid(str(corrupt))


@pytest.mark.parametrize("project", ["gan", "vae"])
def test_fid_is_logged_for_validation_and_test(config, project, tiny_fid):
    """The FID plumbing (real and fake updates, compute, logging, the best checkpoint by it)
    with a tiny stand-in for InceptionV3: features are each image's mean colour and spread."""
    fid = ["+callbacks.fid._target_=common.callbacks.FID", "monitor=val/fid", "monitor_mode=min"]
    setup = ["experiment=gan_fid"] if project == "gan" else fid
    cfg = config(f"project={project}", *setup, "data.synthetic=true", "logger=csv", *SHORT)
    metrics = train(cfg)
    assert metrics["val/fid"] > 0 and metrics["test/fid"] > 0
    assert metrics["score"] == metrics["val/fid"]  # the monitored value


def test_fid_needs_a_model_that_samples(config, tiny_fid):
    fid = ["+callbacks.fid._target_=common.callbacks.FID", "data.synthetic=true", "debug=fdr"]
    with pytest.raises(UserError, match="draws no samples"):
        train(config("project=mnist", *fid))


@pytest.mark.slow
def test_gan_trains_under_ddp_where_each_backward_leaves_one_net_without_gradients(tmp_path):
    from tests.test_process import assert_one_readable_error, make

    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    words = ["PROJECT=gan", "data.synthetic=true", *ddp, *SHORT]
    result = make(tmp_path / "ddp", "train", *words)  # the project's find_unused_parameters
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/d_real" in result.stdout
    refused = make(tmp_path / "plain", "train", *words, "trainer.strategy=ddp")
    assert_one_readable_error(refused, "trainer.strategy=ddp_find_unused_parameters_true")
