"""The arithmetic of reinforcement learning from experience, as plain tensor functions: a replay
buffer, an exploration schedule, discounted returns, generalized advantage estimation, and the
Double-DQN target. No environment and no Lightning here: each piece is tested against values
computed by hand (tests/test_rl.py).

Shapes: T steps of N parallel environments; B a batch of transitions; A actions.
"""

import torch


class ReplayBuffer:
    """The last `capacity` transitions (obs, action, reward, next_obs, terminated) as tensors,
    overwritten oldest first; `sample` draws a batch uniformly from what has been stored.

    `terminated` means the episode ended in the environment (the pole fell): no future reward
    to bootstrap from. A time-limit truncation is not a termination, and the next observation
    of a truncated step is the one the episode ended on (gymnasium's `final_obs`).
    """

    def __init__(
        self, capacity: int, obs_shape: tuple[int, ...], obs_dtype=torch.float32, device=None
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device or "cpu")  # the learner's: sampling copies nothing
        self.obs = torch.zeros(capacity, *obs_shape, dtype=obs_dtype, device=device)
        self.next_obs = torch.zeros(capacity, *obs_shape, dtype=obs_dtype, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.position = 0  # where the next transition goes
        self.size = 0  # how many slots hold a transition

    def __len__(self) -> int:
        return self.size

    def push(self, obs, actions, rewards, next_obs, terminated) -> None:
        """Store n transitions at once (n, ...) (one per vector environment), wrapping around."""
        n = len(actions)
        if n > self.capacity:
            raise ValueError(f"{n} transitions at once do not fit a buffer of {self.capacity}")
        index = (self.position + torch.arange(n, device=self.device)) % self.capacity  # (n,)
        for store, values in (
            (self.obs, obs),
            (self.next_obs, next_obs),
            (self.actions, actions),
            (self.rewards, rewards),
            (self.terminated, terminated),
        ):
            store[index] = torch.as_tensor(values, dtype=store.dtype, device=self.device)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple:
        """(obs (B, ...), actions (B,), rewards (B,), next_obs (B, ...), terminated (B,)),
        drawn uniformly with replacement from the stored transitions only."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty: collect transitions first")
        index = torch.randint(0, self.size, (batch_size,), generator=generator).to(self.device)
        return (
            self.obs[index],
            self.actions[index],
            self.rewards[index],
            self.next_obs[index],
            self.terminated[index],
        )


def linear_schedule(step: int, start: float, end: float, steps: int) -> float:
    """`start` at step 0, moving linearly to `end` at `steps`, then `end` (epsilon for
    epsilon-greedy exploration: act at random often early, rarely later)."""
    if steps <= 0:
        return end
    fraction = min(max(step, 0) / steps, 1.0)
    return start + fraction * (end - start)


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, restarting where an episode ended: rewards and dones (T, N)
    or (T,); dones[t] true when the episode ended at step t. Steps after the last end of the
    rollout count only the rewards seen (no bootstrap): REINFORCE's Monte Carlo returns."""
    returns = torch.zeros_like(rewards, dtype=torch.float32)
    future = torch.zeros_like(rewards[0], dtype=torch.float32)
    for t in reversed(range(len(rewards))):
        future = rewards[t] + gamma * future * (~dones[t])
        returns[t] = future
    return returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016): (advantages, returns), (T, N).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t), and
    A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}. `next_values` (T, N) are V of each
    step's next state (for a truncated step, of the state it stopped in, so a time limit still
    bootstraps); `dones` (terminated or truncated) cut the sum between episodes. lam=0: the
    one-step TD error; lam=1: the Monte Carlo return minus V. Returns = advantages + values.
    """
    advantages = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros_like(rewards[0], dtype=torch.float32)
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] * (~terminated[t]) - values[t]
        running = delta + gamma * lam * (~dones[t]) * running
        advantages[t] = running
    return advantages, advantages + values


def double_dqn_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """r + gamma * Q_target(s', argmax_a Q_online(s', a)) * (1 - terminated), (B,)
    (van Hasselt et al. 2016): the online net picks the next action, the target net values it,
    which removes most of plain DQN's overestimation (max over noisy estimates is biased up).
    next_q_*: (B, A)."""
    best = next_q_online.argmax(dim=1, keepdim=True)  # (B, 1)
    next_value = next_q_target.gather(1, best).squeeze(1)  # (B,)
    return rewards + gamma * next_value * (~terminated)
