"""What every image classifier shares: the loss, and metrics that stay exact under DDP."""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from common.module import TemplateModule


class Classifier(TemplateModule):
    """Wraps a net mapping inputs (B, ...) to logits (B, num_classes).

    Logs `train/loss`, `val/loss`, `val/acc`, `test/loss`, `test/acc`. Losses and accuracies are
    torchmetrics objects: they sum over batches and processes, so epoch values under DDP equal
    the single-process ones exactly. Projects subclass it to add figures or model tweaks.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.0,
    ):
        super().__init__(optimizer, scheduler)
        # Primitives only: nets and optimizer partials stay out of the checkpoint's hparams, so
        # it loads with torch's weights_only=True.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.label_smoothing = label_smoothing
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        # average="micro": the plain fraction of correct predictions.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def unpack(self, batch) -> tuple[tuple, torch.Tensor]:
        """(inputs to forward, targets) of a batch; text batches carry lengths too."""
        x, y = batch
        return (x,), y

    def eval_logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits for validation and test; subclasses add test-time augmentation here."""
        return self(*inputs)

    def training_step(self, batch, batch_idx):
        inputs, y = self.unpack(batch)
        loss = F.cross_entropy(self(*inputs), y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluate(self, batch, stage: str) -> torch.Tensor:
        """Update `stage`'s loss and accuracy (unsmoothed loss); return the predictions (B,)."""
        inputs, y = self.unpack(batch)
        logits = self.eval_logits(*inputs)
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss.update(F.cross_entropy(logits, y), weight=len(y))
        preds = logits.argmax(dim=1)
        acc(preds, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc, prog_bar=stage == "val")
        return preds

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")
