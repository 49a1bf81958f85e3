"""The policy-gradient agents' network, and the MLP every RL agent's nets are made of. Plain
nn.Modules."""

import torch
from torch import nn


def mlp(sizes: list[int], activation=nn.Tanh) -> nn.Sequential:
    """Linear layers of `sizes` with `activation` between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """pi(.|s) and V(s) from two separate MLPs (a shared trunk lets the value loss's larger
    gradients disturb the policy): obs (B, obs_dim) -> (logits (B, num_actions), value (B,)).

    The policy's last layer starts 100x smaller, so the first policy is near uniform, and
    layers are orthogonally initialized (both after the PPO implementation details of
    Huang et al. 2022)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.actor = mlp([obs_dim, *hidden, num_actions])
        self.critic = mlp([obs_dim, *hidden, 1])
        for body, last_gain in ((self.actor, 0.01), (self.critic, 1.0)):
            linears = [m for m in body if isinstance(m, nn.Linear)]
            for layer in linears:
                gain = last_gain if layer is linears[-1] else 2**0.5
                nn.init.orthogonal_(layer.weight, gain)
                nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.critic(obs).squeeze(-1)
