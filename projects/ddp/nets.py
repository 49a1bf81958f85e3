"""ResNets for 32x32 images (He et al. 2016, CIFAR variant): plain nn.Modules, no Lightning."""

from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut: out = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        # A 1x1 projection when the shape changes, else the identity.
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return (self.body(x) + self.shortcut(x)).relu_()


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
    ):
        super().__init__()
        layers = [
            nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        cin = width
        for stage, depth in enumerate(depths):
            cout = width * 2**stage
            for i in range(depth):
                layers.append(BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
