"""ResNet classifier for the DDP showcase: SyncBatchNorm on GPUs, channels-last memory layout."""

import torch
from torch import nn

from common.classifier import Classifier


class ResNetClassifier(Classifier):
    """The shared classifier (label-smoothed cross-entropy, exact metrics under DDP), plus:

    Under DDP on GPUs, BatchNorm layers become SyncBatchNorm so each normalizes with statistics of
    the global batch, not the per-device slice (which shrinks as devices are added). gloo on CPU
    has no SyncBatchNorm kernel, so there BatchNorm stays per process.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.1,
        channels_last: bool = True,
        sync_batchnorm: bool = True,
    ):
        super().__init__(net, num_classes, optimizer, scheduler, label_smoothing)
        self.channels_last = channels_last
        self.sync_batchnorm = sync_batchnorm

    def setup(self, stage: str) -> None:
        on_gpus = self.trainer.world_size > 1 and self.trainer.strategy.root_device.type == "cuda"
        if self.sync_batchnorm and on_gpus:
            # Before DDP wraps the model (Lightning wraps it after `setup`).
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        if self.channels_last:
            # NHWC: the layout tensor-core convolutions want (CPU kernels accept it too).
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)
