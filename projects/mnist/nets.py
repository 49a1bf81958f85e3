"""The MNIST network: a plain nn.Module, no Lightning, no config."""

from collections.abc import Callable
from functools import partial

from torch import nn

# Makes the activation layer; `model/net/activation=` swaps it (configs/model/net/activation/).
Activation = Callable[[], nn.Module]
RELU = partial(nn.ReLU, inplace=True)


def conv_block(cin: int, cout: int, activation: Activation = RELU) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),  # BN follows: a bias would be redundant
        nn.BatchNorm2d(cout),
        activation(),
    )


class ConvNet(nn.Module):
    """Three conv blocks, two poolings, global average pooling, one linear layer.

    (B, C, 28, 28) -> (B, w, 14, 14) -> (B, 2w, 7, 7) -> (B, 4w) -> (B, num_classes) logits.
    About 100k parameters at width 32; ~99.3% on MNIST is typical for nets of this size.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 10,
        width: int = 32,
        drop_rate: float = 0.1,
        activation: Activation = RELU,
    ):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_chans, width, activation),
            nn.MaxPool2d(2),
            conv_block(width, 2 * width, activation),
            nn.MaxPool2d(2),
            conv_block(2 * width, 4 * width, activation),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
