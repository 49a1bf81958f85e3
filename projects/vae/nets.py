"""A convolutional VAE's encoder and decoder: plain nn.Modules, no Lightning, no config.

The conv stacks are the shared strided ones (`common/conv.py`): the encoder halves the image in
every layer, the decoder doubles it, for image sizes s * 2**k with 4 <= s <= 7 (28, 32, 64, ...).
"""

import torch
from torch import nn

from common.conv import down_stack, up_stack


class ConvVAE(nn.Module):
    """x (B, C, H, W) -> q(z|x) = N(mu, diag(exp(logvar))) over z in R^latent_dim -> p(x|z).

    `encode` gives mu and logvar (B, latent_dim); `decode` gives the decoder's logits
    (B, C, H, W), which the model reads as Bernoulli logits or, through a sigmoid, as the
    Gaussian mean. About 0.6M parameters for 28x28 grey at width 32, latent_dim 20.
    """

    def __init__(
        self, in_chans: int = 1, image_size: int = 28, latent_dim: int = 20, width: int = 32
    ):
        super().__init__()
        self.latent_dim = latent_dim
        features, chans, s = down_stack(in_chans, image_size, width)
        # (B, C, H, W) -> (B, c, s, s) -> (B, c*s*s) -> (B, 2 * latent_dim): mu and logvar.
        self.encoder = nn.Sequential(
            features, nn.Flatten(), nn.Linear(chans * s * s, 2 * latent_dim)
        )
        self.decoder = up_stack(latent_dim, in_chans, image_size, width)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # (B, Z) each
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z[:, :, None, None])  # (B, Z) -> (B, Z, 1, 1) -> (B, C, H, W)
