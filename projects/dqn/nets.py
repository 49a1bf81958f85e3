"""DQN's network: Q-values of every action from an observation. A plain nn.Module."""

import torch
from torch import nn

from common.rl.nets import mlp


class QNet(nn.Module):
    """Q(s, .): an observation (B, obs_dim) -> one value per action (B, num_actions)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        self.body = mlp([obs_dim, *hidden, num_actions], activation=nn.ReLU)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs)
