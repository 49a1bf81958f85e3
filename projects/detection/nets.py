"""A single-stage, anchor-free object detector: plain nn.Modules, no Lightning.

YOLOv1's idea (Redmon et al. 2016): one forward pass turns the image into an H x W grid of
cells, and every cell predicts at once whether an object's centre is near it (objectness),
which class it is, and its box. The box is four distances (l, t, r, b) from the cell's centre
to the box's sides, as in FCOS (Tian et al. 2019), so there are no anchor boxes to tune. How
targets are assigned to cells, the loss and the decoding are in `boxes.py`.

- `Backbone`: a small conv-BN-SiLU CNN, (B, 3, S, S) -> (B, C, S/stride, S/stride).
- `torchvision_backbone`: a torchvision ResNet trunk instead, optionally pretrained.
- `DetectionHead`: (B, C, H, W) -> (B, H, W, 1 + num_classes + 4) raw outputs per cell.
- `Detector`: backbone + head. The default (width 32, stride 8, 20 classes) has 761,529
  parameters: small enough to train on a CPU in minutes.
"""

import math
from functools import partial

import torch
from torch import nn

from common.pretrained import build_pretrained


class ConvBNAct(nn.Module):
    """conv kxk (stride s) -> BN -> SiLU. SiLU as in YOLOv5 onwards: smooth, a little better
    than ReLU for small nets at the same cost."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """x + conv3x3(conv3x3(x)): same shape in and out. The shortcut lets each stage add depth
    without making the net harder to optimize."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(channels, channels), ConvBNAct(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class Backbone(nn.Module):
    """A stride-2 stem, then one stage per further halving: a stride-2 conv and a ResBlock.

    (B, in_chans, S, S) -> stem (B, w, S/2, S/2) -> (B, 2w, S/4, S/4) -> (B, 4w, S/8, S/8)
    [-> (B, 4w, S/16, S/16) for stride 16]. Widths double with each halving up to 4w, then
    stay there: the stride-16 stage is there for a coarser grid (bigger objects, fewer cells),
    not for more capacity, and keeping it at 4w keeps both strides around the same budget
    (width 32: 462,880 parameters at stride 8, 906,016 at stride 16).
    """

    def __init__(self, in_chans: int = 3, width: int = 32, stride: int = 8):
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"stride must be 8 or 16, got {stride}")
        self.stride = stride
        layers = [ConvBNAct(in_chans, width, 3, 2)]  # S/2
        cin = width
        for i in range(1, int(math.log2(stride))):  # S/4, S/8[, S/16]
            cout = width * min(2**i, 4)
            layers += [ConvBNAct(cin, cout, 3, 2), ResBlock(cout)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_chans = cin

    def forward(self, x):  # (B, in_chans, S, S) -> (B, out_chans, S/stride, S/stride)
        return self.layers(x)


class TorchvisionBackbone(nn.Sequential):
    """A torchvision ResNet's trunk: stem, max-pool, layer1, layer2 (stride 8) [, layer3
    (stride 16)]; the later layers, pooling and classifier are dropped. `out_chans`, `stride`."""

    def __init__(self, net: nn.Module, stride: int):
        layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2]
        if stride == 16:
            layers.append(net.layer3)
        super().__init__(*layers)
        self.stride = stride
        # The last BatchNorm of the last layer kept: 128 / 256 channels for resnet18 and 34,
        # 512 / 1024 for the bottleneck ResNets (resnet50, resnext, wide_resnet).
        norms = [m for m in layers[-1].modules() if isinstance(m, nn.BatchNorm2d)]
        self.out_chans = norms[-1].num_features


def torchvision_backbone(
    name: str = "resnet18", pretrained: bool = False, stride: int = 8, in_chans: int = 3
) -> TorchvisionBackbone:
    """A torchvision ResNet (`resnet18`, `resnet34`, `resnet50`, ...) cut after layer2 (stride
    8) or layer3 (stride 16).

    `pretrained=True` loads the ImageNet weights (a download into torch's cache the first time);
    they expect images normalized with the ImageNet mean and std. `in_chans != 3` replaces the
    first conv, which throws its pretrained weights away.
    """
    from torchvision.models import get_model, get_model_weights

    if stride not in (8, 16):
        raise ValueError(f"stride must be 8 or 16, got {stride}")
    if pretrained:
        net = build_pretrained(partial(get_model, name), get_model_weights(name).DEFAULT, name)
    else:
        net = get_model(name, weights=None)
    if not hasattr(net, "layer3"):
        raise ValueError(f"{name} is not a ResNet (no layer2/layer3 to cut at)")
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, net.conv1.out_channels, 7, 2, 3, bias=False)
    return TorchvisionBackbone(net, stride)


class DetectionHead(nn.Module):
    """`depth` 3x3 ConvBNActs, then a 1x1 conv to 1 + num_classes + 4 channels per cell:
    (B, in_chans, H, W) -> (B, H, W, 1 + num_classes + 4), channels-last so that a cell's
    prediction is one row.

    Per cell: [0] the objectness logit, [1:1 + num_classes] the class logits, [-4:] the box as
    log-distances: l, t, r, b = stride * exp(out[-4:]) from the cell centre to the box's sides
    (`boxes.decode`). Log-space keeps the distances positive (a decoded box always contains its
    cell's centre, so it can never be inverted), makes a unit of output the same *relative*
    change for a 10-pixel and a 100-pixel box, and starts at a sensible prior: output 0 is a box
    of 2 x 2 cells. One tower shared by the three outputs (YOLOv1); YOLOX's decoupled towers
    (one for classes, one for boxes) train a little better for about twice the head's cost.
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        width: int | None = None,
        depth: int = 2,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        width = width or in_chans
        self.num_classes = num_classes
        self.tower = nn.Sequential(
            *(ConvBNAct(in_chans if i == 0 else width, width) for i in range(depth))
        )
        self.pred = nn.Conv2d(width if depth else in_chans, 1 + num_classes + 4, 1)
        # RetinaNet's init: small weights, and an objectness bias such that every cell starts
        # at probability prior_prob. Almost all cells are background; starting at 0.5 would make
        # the first steps' loss a flood of confident-negative gradients that swamps the few
        # positives (and can diverge).
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)
        with torch.no_grad():
            self.pred.bias[0] = -math.log((1 - prior_prob) / prior_prob)

    def forward(self, x):  # (B, in_chans, H, W) -> (B, H, W, 1 + num_classes + 4)
        return self.pred(self.tower(x)).permute(0, 2, 3, 1)


class Detector(nn.Module):
    """Backbone + DetectionHead: (B, in_chans, S, S) -> (B, S/stride, S/stride, 1 + C + 4) raw
    outputs (decode them with `boxes.postprocess`, train them with `boxes.detection_loss`).

    backbone="cnn" is the small `Backbone` (`width` its multiplier); any other name is a
    torchvision ResNet (`torchvision_backbone`, `pretrained` applies to it only). The head's
    convs have the backbone's width (128 for the default).
    """

    def __init__(
        self,
        num_classes: int = 20,
        in_chans: int = 3,
        stride: int = 8,
        width: int = 32,
        backbone: str = "cnn",
        pretrained: bool = False,
        head_depth: int = 2,
    ):
        super().__init__()
        self.num_classes, self.stride = num_classes, stride
        if backbone == "cnn":
            self.backbone = Backbone(in_chans, width, stride)
        else:
            self.backbone = torchvision_backbone(backbone, pretrained, stride, in_chans)
        self.head = DetectionHead(self.backbone.out_chans, num_classes, depth=head_depth)

    def forward(self, x):  # (B, in_chans, S, S) -> (B, S/stride, S/stride, 1 + C + 4)
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            # Padded strided convs round up: the grid would no longer line up with the cell
            # centres `boxes.cell_centers` assumes, and every box would be shifted.
            raise ValueError(f"image size {H}x{W} is not divisible by the stride {self.stride}")
        return self.head(self.backbone(x))
