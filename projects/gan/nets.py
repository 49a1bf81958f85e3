"""DCGAN's two networks (Radford et al., 2016): plain nn.Modules, no Lightning, no config.

Both are built for any image size s * 2**k with 4 <= s <= 7: 28 (MNIST) is 7 * 4, 32 (CIFAR-10)
is 4 * 8, 64 is 4 * 16. The generator starts from an s x s map and doubles it k times with
stride-2 transposed convolutions; the discriminator halves the image k times with stride-2
convolutions back to s x s. No pooling and no fully connected hidden layers, BatchNorm
everywhere except the generator's output and the discriminator's input, ReLU in the generator and
LeakyReLU(0.2) in the discriminator: the paper's architecture guidelines.
"""

from itertools import pairwise

from torch import nn

from common.errors import UserError


def size_plan(image_size: int) -> tuple[int, int]:
    """(s, k) with s * 2**k == image_size, 4 <= s <= 7 and k >= 1; a clear error otherwise."""
    s, k = image_size, 0
    while s % 2 == 0 and s // 2 >= 4:
        s, k = s // 2, k + 1
    if k == 0 or s > 7:
        raise UserError(
            f"image size {image_size} is not s * 2**k with s in 4..7 (8, 14, 16, 28, 32, 48, 56, "
            "64, 96, 128, ...): the DCGAN nets double or halve the image in every layer"
        )
    return s, k


def up_stack(in_features: int, out_chans: int, image_size: int, width: int) -> nn.Sequential:
    """(B, in_features, 1, 1) -> (B, out_chans, image_size, image_size), no output activation.

    With width w and k doublings the channels go 2**(k-1) * w, ..., 2w, w, out_chans: for 32x32,
    (B, z, 1, 1) -> (B, 4w, 4, 4) -> (B, 2w, 8, 8) -> (B, w, 16, 16) -> (B, C, 32, 32).
    """
    s, k = size_plan(image_size)
    chans = [width * 2 ** (k - 1 - i) for i in range(k)]
    # A transposed conv with an s x s kernel on a 1 x 1 input is a linear layer to an s x s map.
    layers = [nn.ConvTranspose2d(in_features, chans[0], s, 1, 0, bias=False)]
    layers += [nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)]
    for cin, cout in pairwise(chans):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)]  # doubles H and W
        layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers.append(nn.ConvTranspose2d(chans[-1], out_chans, 4, 2, 1))
    return nn.Sequential(*layers)


def down_stack(
    in_chans: int, image_size: int, width: int, running_stats: bool = True
) -> tuple[nn.Sequential, int, int]:
    """(B, in_chans, image_size, image_size) -> (B, c, s, s); returns (stack, c, s).

    The mirror of `up_stack`: for 32x32, (B, C, 32, 32) -> (B, w, 16, 16) -> (B, 2w, 8, 8) ->
    (B, 4w, 4, 4). The first layer has no BatchNorm (DCGAN: it destabilized training there).
    `running_stats=False`: BatchNorm always normalizes with the batch's own statistics.
    """
    s, k = size_plan(image_size)
    chans = [width * 2**i for i in range(k)]
    layers = [nn.Conv2d(in_chans, chans[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    for cin, cout in pairwise(chans):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False)]  # halves H and W
        layers += [nn.BatchNorm2d(cout, track_running_stats=running_stats)]
        layers += [nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers), chans[-1], s


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
