"""Deep Q-learning (Mnih et al. 2015) with Double-DQN targets (van Hasselt et al. 2016).

Each training batch is a rollout of a few environment steps taken epsilon-greedily; the step
stores it in a replay buffer and learns from a uniform sample of old transitions instead of the
new ones (consecutive steps are correlated, and a transition is worth replaying many times). The
target network, a lagging copy of the Q-network, holds the regression target still between syncs.
"""

import copy

import torch
import torch.nn.functional as F

from common.data.gym import Rollout, require_counts
from common.errors import UserError
from common.rl.agent import RLAgent
from common.rl.rollout import ReplayBuffer, double_dqn_targets, linear_schedule


class DQN(RLAgent):
    """`net(obs_dim, num_actions)`: a Q-network, obs (B, obs_dim) -> Q-values (B, num_actions).

    Exploration: epsilon falls linearly from `epsilon_start` to `epsilon_end` over the first
    `exploration_steps` environment steps. Learning starts after `learning_starts` steps (of
    this fit: a resumed run refills its buffer first): `updates_per_rollout` Huber-loss steps,
    each on a fresh sample of `replay_batch_size` transitions (per process), after each rollout
    of `data.rollout_steps` steps of each of `data.num_envs` environments; gradients clipped to
    norm `max_grad_norm`. Updates per environment step are updates_per_rollout / (rollout_steps
    x num_envs): change them together to keep the recipe's 1:2. The target network is synced
    every `target_sync_every` updates, fully (`tau=1`) or by Polyak averaging (a small `tau`).
    """

    def __init__(
        self,
        env: str,
        net,
        optimizer=None,
        scheduler=None,
        gamma: float = 0.99,
        buffer_size: int = 50_000,
        replay_batch_size: int = 128,
        learning_starts: int = 1000,
        updates_per_rollout: int = 1,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        exploration_steps: int = 10_000,
        target_sync_every: int = 500,
        tau: float = 1.0,
        double: bool = True,
        max_grad_norm: float | None = 10.0,
        stop_when_solved: bool = True,
        film_every_n_epochs: int = 5,
    ):
        super().__init__(env, optimizer, scheduler, gamma, stop_when_solved, film_every_n_epochs)
        if not 0.0 < tau <= 1.0:
            raise UserError(
                f"model.tau={tau}: the share of the online weights a sync copies, in (0, 1]"
            )
        require_counts(
            "model",
            buffer_size=buffer_size,
            replay_batch_size=replay_batch_size,
            updates_per_rollout=updates_per_rollout,
            target_sync_every=target_sync_every,
        )
        self.q = net(self.obs_dim, self.num_actions)
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.buffer_size, self.replay_batch_size = buffer_size, replay_batch_size
        self.learning_starts, self.updates_per_rollout = learning_starts, updates_per_rollout
        self.epsilon_start, self.epsilon_end = epsilon_start, epsilon_end
        self.exploration_steps = exploration_steps
        self.target_sync_every, self.tau, self.double = target_sync_every, tau, double
        self.max_grad_norm = max_grad_norm
        self.buffer: ReplayBuffer | None = None
        self.fit_began_at = (
            0  # env_steps when this fit began (a resumed run's are not in the buffer)
        )

    def epsilon(self) -> float:
        return linear_schedule(
            self.env_steps, self.epsilon_start, self.epsilon_end, self.exploration_steps
        )

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(obs.to(self.device)).argmax(dim=1)  # (N,)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Epsilon-greedy: each environment's action is uniform at random with probability
        epsilon, else greedy."""
        actions = self.greedy(obs).cpu()
        explore = torch.rand(len(obs), generator=self.rng) < self.epsilon()
        random = torch.randint(0, self.num_actions, (len(obs),), generator=self.rng)
        return torch.where(explore, random, actions)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Transitions are not checkpointed (they would outweigh the net 1000x): a resumed run
        # refills the buffer, then learns again.
        self.buffer = ReplayBuffer(self.buffer_size, (self.obs_dim,), device=self.device)
        self.fit_began_at = self.env_steps

    def td_loss(self, obs, actions, rewards, next_obs, terminated) -> torch.Tensor:
        """Huber loss between Q(s, a) and r + gamma * Q_target(s', a*) (B transitions)."""
        q = self.q(obs).gather(1, actions[:, None]).squeeze(1)  # (B,)
        with torch.no_grad():
            next_target = self.target_q(next_obs)  # (B, A)
            # Double DQN: the online net picks a*, the target net values it. Plain DQN: both.
            next_online = self.q(next_obs) if self.double else next_target
            target = double_dqn_targets(rewards, terminated, next_online, next_target, self.gamma)
        return F.smooth_l1_loss(q, target)

    def training_step(self, rollout: Rollout, batch_idx: int) -> None:
        self.count_steps(rollout)
        if rollout.num_samples > self.buffer_size:
            raise UserError(
                f"a rollout of {rollout.num_samples} transitions does not fit "
                f"model.buffer_size={self.buffer_size}: make the buffer larger"
            )
        self.buffer.push(*(x.flatten(0, 1) for x in rollout[:5]))  # (T * N, ...) transitions
        # Every process's count: all of them start learning at the same rollout (DDP).
        if self.env_steps - self.fit_began_at < self.learning_starts:
            return
        for _ in range(self.updates_per_rollout):
            loss = self.td_loss(*self.buffer.sample(self.replay_batch_size, self.rng))
            self.learn(loss, self.max_grad_norm)
            self.tally("loss", loss)
            if self.global_step % self.target_sync_every == 0:  # optimizer steps so far
                self.sync_target()

    @torch.no_grad()
    def sync_target(self) -> None:
        """target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
        for target, online in zip(self.target_q.parameters(), self.q.parameters(), strict=True):
            target.lerp_(online, self.tau)

    def on_train_epoch_end(self) -> None:
        self.log("train/epsilon", self.epsilon(), sync_dist=True)  # equal everywhere
        super().on_train_epoch_end()
