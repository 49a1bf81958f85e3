"""DCGAN with Lightning's manual optimization: one discriminator step, then one generator step,
per batch, each with its own optimizer."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric

from common.errors import UserError
from common.figures import log_image_grid
from common.module import TemplateModule


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """The generator's tanh range [-1, 1] -> [0, 1]."""
    return (images + 1) / 2


class GAN(TemplateModule):
    """The adversarial game of a `Generator` G and a `Discriminator` D on images in [-1, 1].

    Per batch of real images x and noise z: D's step lowers BCE(D(x), real) + BCE(D(G(z)),
    fake); G's step lowers BCE(D(G(z)), real), the non-saturating loss -log D(G(z)) (whose
    gradient stays large while D still wins easily, unlike log(1 - D(G(z)))).

    Logs `train/loss_d`, `train/loss_g`, and D's mean probabilities `train/d_real` = D(x) and
    `train/d_fake` = D(G(z)) (before D's step); the same on held-out images and fresh noise for
    `val/` and `test/`. After each validation, `val/samples`: G's images from the same fixed
    noise, so the grids show G learning. FID: the `common.callbacks.FID` callback
    (`experiment=gan_fid`), which compares `sample_images` with held-out images.

    Under DDP each backward trains one net and leaves the other's parameters without gradients,
    which DDP must be told to expect: the project sets `find_unused_parameters: true`, so
    `trainer=ddp` picks Lightning's `ddp_find_unused_parameters_true`.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer_g: Callable,
        optimizer_d: Callable,
        grid_size: int = 64,
    ):
        super().__init__()
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer_g", "optimizer_d"]
        )
        # Two optimizers, stepped by training_step itself rather than by Lightning's loop.
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.latent_dim = generator.latent_dim
        seeded = torch.Generator().manual_seed(0)
        # A buffer: saved in checkpoints, so a resumed run keeps drawing the same grid.
        self.register_buffer(
            "fixed_noise", torch.randn(grid_size, self.latent_dim, generator=seeded)
        )
        names = ("loss_d", "loss_g", "d_real", "d_fake")
        self.metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in names}
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def configure_optimizers(self):
        opt_g = self.optimizer_g(params=self.generator.parameters())
        opt_d = self.optimizer_d(params=self.discriminator.parameters())
        return opt_g, opt_d

    def noise(self, n: int, seed: int | None = None) -> torch.Tensor:
        """z (n, latent_dim) ~ N(0, I), seeded when `seed` is given."""
        gen = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        return torch.randn(n, self.latent_dim, generator=gen, device=self.device)

    @staticmethod
    def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)

    def training_step(self, batch, batch_idx):
        real, _ = batch  # (B, C, H, W) in [-1, 1]; labels unused
        opt_g, opt_d = self.optimizers()
        fake = self.generator(self.noise(len(real)))  # (B, C, H, W), with G's graph for step 2

        # 1. D learns to tell real from fake. toggle_optimizer sets requires_grad=False on every
        # parameter outside opt_d (G's), and fake is detached: no gradient reaches G.
        self.toggle_optimizer(opt_d)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach())
        loss_d = self.bce(real_logits, True) + self.bce(fake_logits, False)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # 2. G learns to fool the updated D. Now D's parameters are frozen: the gradient flows
        # through D into G without touching D's own .grad.
        self.toggle_optimizer(opt_g)
        loss_g = self.bce(self.discriminator(fake), True)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        if self.logs_this_step():  # each self.log costs host time (README, "Speed")
            self.log("train/loss_d", loss_d, prog_bar=True)
            self.log("train/loss_g", loss_g, prog_bar=True)
            self.log("train/d_real", real_logits.detach().sigmoid().mean())
            self.log("train/d_fake", fake_logits.detach().sigmoid().mean())

    def on_fit_start(self) -> None:
        # DDP has wrapped the module by now; find_unused_parameters is torch's public attribute.
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel) and not wrapped.find_unused_parameters:
            raise UserError(
                "under DDP the GAN needs trainer.strategy=ddp_find_unused_parameters_true (which "
                "trainer=ddp sets for this project): each of its two backward passes leaves one "
                "net without gradients"
            )

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        real, _ = batch
        # Seeded noise per batch (and process): the same fakes every validation.
        seed = batch_idx * self.trainer.world_size + self.global_rank
        fake = self.generator(self.noise(len(real), seed))
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        values = {
            "loss_d": self.bce(real_logits, True) + self.bce(fake_logits, False),
            "loss_g": self.bce(fake_logits, True),
            "d_real": real_logits.sigmoid().mean(),
            "d_fake": fake_logits.sigmoid().mean(),
        }
        for name, value in values.items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value, weight=len(real))
            self.log(f"{stage}/{name}", metric, prog_bar=name == "d_real" and stage == "val")

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, batch_idx, "test")

    def on_validation_epoch_end(self):
        log_image_grid(self, "val/samples", to_unit(self.generator(self.fixed_noise)))

    def export_spec(self):
        """The generator: noise z (B, latent_dim) -> images (B, C, H, W) in [0, 1]."""
        from common.export import generator_spec

        return generator_spec(
            self.generator,
            "forward",
            to_unit,
            self.latent_dim,
            "the generator's tanh output is mapped to [0, 1] inside the graph",
        )

    def sample_images(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images from N(0, I) noise, values in [0, 1], (n, C, H, W) (`make sample`)."""
        return to_unit(self.generator(self.noise(n, seed)))
