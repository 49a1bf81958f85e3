"""A variational autoencoder: the ELBO as reconstruction + KL, in nats per image, and pictures of
what the latent space learned (reconstructions, samples, an interpolation strip)."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from common.errors import UserError
from common.figures import log_image_grid
from common.module import TemplateModule

LIKELIHOODS = ("bernoulli", "gaussian")


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): a sample of N(mu, sigma^2) through which
    gradients reach mu and logvar (the randomness sits in eps, which needs none)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per image, in nats: (B, Z) -> (B,).

    Closed form: 0.5 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2).
    """
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1)


def reconstruction_nll(
    logits: torch.Tensor, x: torch.Tensor, likelihood: str, log_scale: torch.Tensor
) -> torch.Tensor:
    """-log p(x|z) per image, in nats, summed over pixels: (B, C, H, W) -> (B,).

    bernoulli: each pixel value in [0, 1] is the probability of "ink" (what the PyTorch example
    VAE, and its ~106 nats on MNIST, uses). gaussian: N(sigmoid(logits), exp(log_scale)^2) with
    one learned scale, a density (it can go below zero).
    """
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        z = (x - logits.sigmoid()) / log_scale.exp()
        nll = 0.5 * z.square() + log_scale + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(dim=1)


class VAE(TemplateModule):
    """Trains a `ConvVAE` by maximizing the evidence lower bound on log p(x):

        ELBO = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)),   loss = recon + beta * kl

    with one z sample per image. Logs `train/loss` (the negative ELBO at beta=1), `train/recon`,
    `train/kl`, the same for `val/` and `test/`, all per image in nats; after each validation,
    `val/reconstructions` (inputs above their reconstructions), `val/samples` (decoded from fixed
    z ~ N(0, I)) and `val/interpolation` (decodings along the line between two images' means).
    Images are in [0, 1] (`data.normalize=unit`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        grid_size: int = 64,
        interpolation_steps: int = 10,
    ):
        super().__init__(optimizer, scheduler)
        if likelihood not in LIKELIHOODS:
            raise UserError(
                f"model.likelihood={likelihood!r} is not one of {', '.join(LIKELIHOODS)}"
            )
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.likelihood, self.beta = likelihood, beta
        self.interpolation_steps = interpolation_steps
        # log sigma of the Gaussian likelihood (0: sigma = 1); unused by the Bernoulli one.
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=likelihood == "gaussian")
        seeded = torch.Generator().manual_seed(0)
        self.register_buffer("fixed_z", torch.randn(grid_size, net.latent_dim, generator=seeded))
        self.metrics = nn.ModuleDict(
            {f"{s}_{n}": MeanMetric() for s in ("val", "test") for n in ("loss", "recon", "kl")}
        )
        self._shown = None  # the first validation batch's images, for the pictures

    def forward(self, x: torch.Tensor):
        """x (B, C, H, W) -> (decoder logits (B, C, H, W), mu (B, Z), logvar (B, Z))."""
        mu, logvar = self.net.encode(x)
        return self.net.decode(reparameterize(mu, logvar)), mu, logvar

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1], (B, C, H, W), for latent codes z (B, Z)."""
        return self.net.decode(z).sigmoid()

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the loss and its two parts, in nats per image."""
        logits, mu, logvar = self(x)
        recon = reconstruction_nll(logits, x, self.likelihood, self.log_scale).mean()
        kl = kl_divergence(mu, logvar).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def training_step(self, batch, batch_idx):
        terms = self.terms(batch[0])
        if self.logs_this_step():
            self.log("train/loss", terms["loss"], prog_bar=True)
            self.log("train/recon", terms["recon"])
            self.log("train/kl", terms["kl"])
        return terms["loss"]

    def evaluate(self, batch, stage: str) -> None:
        x = batch[0]
        for name, value in self.terms(x).items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value, weight=len(x))
            self.log(f"{stage}/{name}", metric, prog_bar=stage == "val" and name == "loss")

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self._shown = batch[0][:8]
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")

    def on_validation_epoch_end(self):
        if self._shown is None:
            return
        x, self._shown = self._shown, None
        mu, _ = self.net.encode(x)
        # Row 1: inputs, row 2: reconstructions from the means (the decoder's best guess).
        log_image_grid(self, "val/reconstructions", torch.cat([x, self.decode_mean(mu)]), len(x))
        log_image_grid(self, "val/samples", self.decode_mean(self.fixed_z))
        if len(x) >= 2:
            strip = self.interpolate(x[0], x[1])  # (T, C, H, W): one row
            log_image_grid(self, "val/interpolation", strip, nrow=len(strip))

    def interpolate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Decodings of `interpolation_steps` points on the line from a's mean code to b's:
        (C, H, W) twice -> (steps, C, H, W), a's reconstruction first, b's last."""
        mu, _ = self.net.encode(torch.stack([a, b]))  # (2, Z)
        t = torch.linspace(0, 1, self.interpolation_steps, device=mu.device)[:, None]  # (T, 1)
        return self.decode_mean((1 - t) * mu[0] + t * mu[1])  # (T, Z) -> (T, C, H, W)

    def export_spec(self):
        """The decoder: latent codes z (B, latent_dim) -> its mean images (B, C, H, W) in [0, 1]."""
        from common.export import generator_spec

        return generator_spec(
            self.net,
            "decode",
            torch.sigmoid,
            self.net.latent_dim,
            "the decoder's logits go through a sigmoid inside the graph",
        )

    def sample_images(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images decoded from z ~ N(0, I), values in [0, 1], (n, C, H, W) (`make sample`)."""
        gen = torch.Generator(self.device).manual_seed(seed)
        z = torch.randn(n, self.net.latent_dim, generator=gen, device=self.device)
        return self.decode_mean(z)
