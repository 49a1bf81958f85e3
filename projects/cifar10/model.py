"""CIFAR-10 classifier: channels-last convolutions and test-time augmentation."""

import torch
import torch.nn.functional as F
from torch import nn

from common.classifier import ImageClassifier

TTA = ("none", "flip", "flip_translate")


def tta_logits(net: nn.Module, x: torch.Tensor, level: str) -> torch.Tensor:
    """Average the logits of augmented views of x (B, C, H, W) -> (B, num_classes).

    "flip": x and its mirror image (2 views). "flip_translate": also both shifted by one pixel
    diagonally up-left and down-right (6 views, weighted as in airbench: the untranslated pair
    counts half). Flips and small shifts are the training augmentations, so the net has learned
    to treat these views as the same image; averaging removes part of its per-view error.
    """
    if level == "none":
        return net(x)
    views = torch.cat([x, x.flip(3)])  # (2B, C, H, W): one forward pass for both
    logits = net(views).view(2, len(x), -1).mean(0)
    if level == "flip":
        return logits
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[2:]
    shifted = torch.cat([padded[..., :h, :w], padded[..., 2:, 2:]])  # (2B, C, H, W)
    shifted_logits = net(torch.cat([shifted, shifted.flip(3)])).view(4, len(x), -1).mean(0)
    return 0.5 * logits + 0.5 * shifted_logits


class CIFARClassifier(ImageClassifier):
    """The shared image classifier (label-smoothed cross-entropy, exact metrics under DDP,
    `make predict`), plus:

    - channels-last memory layout: NHWC is what tensor-core convolutions want;
    - `tta`: test-time augmentation for validation and test ("none", "flip", "flip_translate").
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.1,
        channels_last: bool = True,
        tta: str = "none",
        compile: bool = False,
    ):
        super().__init__(net, num_classes, optimizer, scheduler, label_smoothing, compile)
        if tta not in TTA:
            raise ValueError(f"model.tta={tta!r} is not one of {', '.join(TTA)}")
        self.channels_last = channels_last
        self.tta = tta

    def setup(self, stage: str) -> None:
        if self.channels_last:  # before the compile (Classifier.setup) sees the net
            self.net = self.net.to(memory_format=torch.channels_last)
        super().setup(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        return tta_logits(self, x, self.tta)
