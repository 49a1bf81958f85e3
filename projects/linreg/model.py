"""Linear regression as a LightningModule: y_hat = x @ w + b, trained on mean squared error."""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, R2Score

from common.module import TemplateModule


class LinearRegression(TemplateModule):
    """`net` is an nn.Linear(num_features, 1): features (B, F) -> predictions (B,)."""

    def __init__(self, net: nn.Linear, optimizer, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        # Metric objects sum over batches and processes: exact epoch values under DDP too.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_r2 = R2Score()
        self.test_r2 = R2Score()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (B, 1) -> (B,)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        if self.logs_this_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.val_loss.update(F.mse_loss(pred, y), weight=len(y))
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.val_r2.update(pred, y)
        self.log("val/r2", self.val_r2, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.test_loss.update(F.mse_loss(pred, y), weight=len(y))
        self.log("test/loss", self.test_loss)
        self.test_r2.update(pred, y)
        self.log("test/r2", self.test_r2)
