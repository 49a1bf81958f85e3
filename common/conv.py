"""Strided convolution stacks that double or halve an image in every layer, after the
all-convolutional guidelines of Radford et al. (2016): no pooling, no fully connected hidden
layers, BatchNorm between layers. The generative projects build their nets from them.

Both stacks work for any image size s * 2**k with 4 <= s <= 7: 28 (MNIST) is 7 * 4, 32
(CIFAR-10) is 4 * 8, 64 is 4 * 16.
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
            "64, 96, 128, ...): these nets double or halve the image in every layer"
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
    (B, 4w, 4, 4). The first layer has no BatchNorm (Radford et al.: it destabilized training there).
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
