"""Networks for 32x32 images: plain nn.Modules, no Lightning.

- `ResNet`: He et al. 2016, CIFAR variant (the recipe of `project=cifar10` and `project=ddp`).
- `SpeedrunNet`: the airbench94 design (Jordan 2024): a frozen whitening first layer, then
  three conv groups without residuals; 94% in a few seconds of GPU time.
- `torchvision_resnet18`: torchvision's ImageNet ResNet-18, optionally with its pretrained
  weights, for transfer learning.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from common.pretrained import build_pretrained

# Makes the activation layer; `model/net/activation=` swaps it (configs/model/net/activation/).
Activation = Callable[[], nn.Module]
RELU = partial(nn.ReLU, inplace=True)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut: out = act(bn(conv(act(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, activation: Activation = RELU):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            activation(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        # A 1x1 projection when the shape changes, else the identity.
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.out = activation()

    def forward(self, x):
        return self.out(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A 3x3 stem (no max-pool: the images are small), four stages, global average pooling.

    (B, C, 32, 32) -> (B, w, 32, 32) -> (B, w, 32, 32) -> (B, 2w, 16, 16) -> (B, 4w, 8, 8)
    -> (B, 8w, 4, 4) -> (B, 8w) -> (B, num_classes). depths=(2, 2, 2, 2), width=64: ResNet-18,
    11.2M parameters.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        drop_rate: float = 0.0,
        activation: Activation = RELU,
    ):
        super().__init__()
        layers = [
            nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            activation(),
        ]
        cin = width
        for stage, depth in enumerate(depths):
            cout = width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, cout, stride, activation))
                cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen scale of 1 (only the shift is learned) and fast-moving running
    statistics, as in airbench: with few steps per epoch, slow averages would lag the weights."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class ConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU: (B, cin, H, W) ->
    (B, cout, H/2, W/2). No residual connection: the net is only 7 layers deep."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.norm1 = BatchNorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.norm2 = BatchNorm(cout)
        for conv in (self.conv1, self.conv2):
            # Identity-like start: the first min(cin, cout) filters pass their channel through.
            w = conv.weight.data
            nn.init.dirac_(w[: w.size(1)])

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class SpeedrunNet(nn.Module):
    """airbench94's net: (B, 3, 32, 32) -> whiten (B, 24, 31, 31) -> groups (B, 64, 15, 15),
    (B, 256, 7, 7), (B, 256, 3, 3) -> max-pool (B, 256) -> logits (B, num_classes).

    The first layer is a fixed 2x2 convolution that whitens image patches: its filters are the
    eigenvectors of the training patches' covariance, scaled by 1/sqrt(eigenvalue), and their
    negatives (so GELU keeps both signs). Call `init_whitening(train_images)` before training;
    its weights are then frozen and only its bias learns. The head has unit-variance weights and
    its output is divided by the width (256): a low-temperature start that the recipe's
    learning rates are tuned for.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
    ):
        super().__init__()
        whiten_width = 2 * in_chans * 2 * 2  # 12 eigenvectors and their negatives
        self.whiten = nn.Conv2d(in_chans, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.groups = nn.Sequential(
            ConvGroup(whiten_width, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        with torch.no_grad():  # unit-variance head weights, and logits divided by the width
            self.head.weight /= self.head.weight.std()

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalized training images (N, C, H, W)."""
        c, k = images.shape[1], self.whiten.kernel_size[0]
        patches = images.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H-1, W-1, k, k)
        patches = patches.transpose(1, 3).reshape(-1, c * k * k).double()  # (N*(H-1)*(W-1), 12)
        # Second moments of normalized pixels (their mean is about 0), as airbench computes them.
        covariance = patches.T @ patches / len(patches)  # (12, 12)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]  # (12, 12)
        filters = filters.reshape(-1, c, k, k).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))  # (24, C, k, k)

    def forward(self, x):
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)  # (B, widths[2])
        return self.head(x) / x.shape[1]


def torchvision_resnet18(
    num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, cifar_stem: bool = True
) -> nn.Module:
    """torchvision's ResNet-18 with a fresh `num_classes` head.

    `pretrained=True` loads the ImageNet weights (a download into torch's cache the first time):
    transfer learning. `cifar_stem=True` swaps the 7x7 stride-2 stem and its max-pool for a 3x3
    stride-1 conv, which keeps 32x32 images from shrinking to 1x1 before the last stage; with
    pretrained weights, keeping the ImageNet stem (`cifar_stem=false`) with larger images
    (e.g. `data=image_folder data.image_size=224`) also keeps the first layer that was learned.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    if pretrained:
        net = build_pretrained(resnet18, ResNet18_Weights.IMAGENET1K_V1, "ResNet-18")
    else:
        net = resnet18(weights=None)
    if cifar_stem or in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, *((3, 1, 1) if cifar_stem else (7, 2, 3)), bias=False)
    if cifar_stem:
        net.maxpool = nn.Identity()
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net
