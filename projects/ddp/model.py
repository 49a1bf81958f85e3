"""ResNet classifier for the DDP showcase: label smoothing, channels-last, SyncBatchNorm on GPUs."""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from common.module import TemplateModule


class ResNetClassifier(TemplateModule):
    """Wraps a net mapping images (B, C, H, W) to logits (B, num_classes).

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
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.label_smoothing = label_smoothing
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        distributed_gpu = (
            self.trainer.world_size > 1 and self.trainer.strategy.root_device.type == "cuda"
        )
        if self.hparams.sync_batchnorm and distributed_gpu:
            # Before DDP wraps the model (Lightning wraps it after `setup`).
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        if self.hparams.channels_last:
            # NHWC: the memory layout tensor cores' convolutions want (a no-op cost on CPU).
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.val_acc(logits.argmax(dim=1), y)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.test_acc(logits.argmax(dim=1), y)
        self.log("test/loss", self.test_loss)
        self.log("test/acc", self.test_acc)
