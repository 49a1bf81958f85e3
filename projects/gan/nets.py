"""DCGAN's two networks (Radford et al., 2016) on the shared strided stacks (`common/conv.py`):
plain nn.Modules, no Lightning, no config.

Both are built for any image size s * 2**k with 4 <= s <= 7: 28 (MNIST) is 7 * 4, 32 (CIFAR-10)
is 4 * 8, 64 is 4 * 16. The generator starts from an s x s map and doubles it k times with
stride-2 transposed convolutions; the discriminator halves the image k times with stride-2
convolutions back to s x s. No pooling and no fully connected hidden layers, BatchNorm
everywhere except the generator's output and the discriminator's input, ReLU in the generator and
LeakyReLU(0.2) in the discriminator: the paper's architecture guidelines.
"""

from torch import nn

from common.conv import down_stack, up_stack


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialization: conv weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """Noise z (B, latent_dim) -> images (B, C, H, W) in [-1, 1] (tanh).

    At latent_dim=100, width=64: 3.6M parameters for 64x64 RGB (the paper's net), 1.1M for
    32x32 RGB, 0.76M for 28x28 grey.
    """

    def __init__(
        self, latent_dim: int = 100, out_chans: int = 1, image_size: int = 28, width: int = 64
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = up_stack(latent_dim, out_chans, image_size, width)
        dcgan_init(self)

    def forward(self, z):
        return self.net(z[:, :, None, None]).tanh()  # (B, Z) -> (B, Z, 1, 1) -> (B, C, H, W)


class Discriminator(nn.Module):
    """Images (B, C, H, W) -> logits (B,): > 0 means "real". The sigmoid lives in the loss
    (`binary_cross_entropy_with_logits`), which is the numerically stable form.

    Its BatchNorm keeps no running statistics: D judges all-real and all-fake batches in
    training, so running averages would mix the two (two fake batches per real one), and D in
    eval mode would judge held-out images by statistics it never trained with. With batch
    statistics always, validation sees D exactly as training does. D is not used after training.
    """

    def __init__(self, in_chans: int = 1, image_size: int = 28, width: int = 64):
        super().__init__()
        self.features, chans, s = down_stack(in_chans, image_size, width, running_stats=False)
        self.head = nn.Conv2d(chans, 1, s, 1, 0)  # (B, c, s, s) -> (B, 1, 1, 1): one score
        dcgan_init(self)

    def forward(self, x):
        return self.head(self.features(x)).flatten()  # (B,)
