"""The newproject network: a plain nn.Module, no Lightning, no config."""

from torch import nn


class NewProjectNet(nn.Module):
    """An MLP: features (B, num_features) -> (B, hidden) -> (B, hidden) -> logits (B, num_classes)."""

    def __init__(
        self, num_features: int, num_classes: int, hidden: int = 64, drop_rate: float = 0.1
    ):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.GELU(),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.layers(x)
