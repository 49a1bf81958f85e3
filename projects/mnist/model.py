"""MNIST classifier: cross-entropy, torchmetrics accuracy, a confusion matrix each validation."""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from common.figures import confusion_matrix_figure, log_figure
from common.module import TemplateModule


class MNISTClassifier(TemplateModule):
    """Wraps any net mapping images (B, C, H, W) to logits (B, num_classes)."""

    def __init__(self, net: nn.Module, num_classes: int, optimizer, scheduler=None):
        super().__init__(optimizer, scheduler)
        # Primitives only: nets and optimizer partials stay out of the checkpoint's hparams, so
        # it loads with torch's weights_only=True.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        # Metric objects sum over batches and processes, so epoch values under DDP equal the
        # single-process ones exactly. average="micro": the plain fraction of correct predictions.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_confusion = MulticlassConfusionMatrix(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.log("val/loss", self.val_loss, prog_bar=True)
        preds = logits.argmax(dim=1)
        self.val_acc(preds, y)
        self.val_confusion.update(preds, y)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def on_validation_epoch_end(self):
        matrix = self.val_confusion.compute()  # (K, K), synced across processes
        self.val_confusion.reset()
        if not self.trainer.sanity_checking:
            log_figure(self, "val/confusion_matrix", confusion_matrix_figure(matrix))

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.log("test/loss", self.test_loss)
        self.test_acc(logits.argmax(dim=1), y)
        self.log("test/acc", self.test_acc)
