"""The reinforcement-learning arithmetic against values computed by hand: the replay buffer's
capacity and sampling, the exploration schedule, discounted returns, GAE, Double-DQN targets."""

import pytest
import torch

from projects.rl.rollout import (
    ReplayBuffer,
    discounted_returns,
    double_dqn_targets,
    gae,
    linear_schedule,
)


def fill(buffer: ReplayBuffer, values: range) -> None:
    """One transition per value v: obs = (v, v), action v % 2, reward v, terminated every 5th."""
    for v in values:
        buffer.push([[v, v]], [v % 2], [float(v)], [[v + 1, v + 1]], [v % 5 == 4])


def test_replay_buffer_keeps_the_last_capacity_transitions():
    buffer = ReplayBuffer(capacity=8, obs_shape=(2,))
    fill(buffer, range(5))
    assert len(buffer) == 5
    fill(buffer, range(5, 13))  # 13 pushed in all: 0-4 overwritten
    assert len(buffer) == 8
    assert sorted(buffer.rewards.tolist()) == [float(v) for v in range(5, 13)]
    stored = {
        int(r): (o.tolist(), n.tolist(), int(a), bool(t))
        for r, o, n, a, t in zip(
            buffer.rewards,
            buffer.obs,
            buffer.next_obs,
            buffer.actions,
            buffer.terminated,
            strict=True,
        )
    }
    assert stored[9] == ([9.0, 9.0], [10.0, 10.0], 1, True)  # fields stay together


def test_a_batch_of_transitions_from_vector_environments_wraps_around():
    buffer = ReplayBuffer(capacity=5, obs_shape=(1,))
    buffer.push(torch.zeros(3, 1), [0, 1, 0], [1.0, 2.0, 3.0], torch.ones(3, 1), [False] * 3)
    buffer.push(torch.zeros(4, 1), [1, 1, 1, 1], [4.0, 5.0, 6.0, 7.0], torch.ones(4, 1), [True] * 4)
    assert len(buffer) == 5 and buffer.position == 2
    assert buffer.rewards.tolist() == [6.0, 7.0, 3.0, 4.0, 5.0]


def test_sampling_is_uniform_over_the_stored_transitions_and_never_past_the_fill():
    buffer = ReplayBuffer(capacity=1000, obs_shape=(2,))
    fill(buffer, range(10))  # 10 of 1000 slots used: the other 990 are zeros, never drawn
    gen = torch.Generator().manual_seed(0)
    obs, actions, rewards, next_obs, terminated = buffer.sample(20000, gen)
    assert obs.shape == next_obs.shape == (20000, 2) and actions.shape == (20000,)
    assert torch.equal(obs[:, 0], rewards) and torch.equal(next_obs[:, 0], rewards + 1)
    counts = torch.bincount(rewards.long(), minlength=10).float()
    assert len(counts) == 10  # rewards 0-9 only; an empty slot (all zeros) would pass this, but
    assert torch.equal(terminated, rewards.long() % 5 == 4)  # not next_obs = reward + 1 above
    expected = 20000 / 10
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # 9 degrees of freedom: p = 0.001


def test_an_empty_buffer_cannot_be_sampled():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, (1,)).sample(2)


def test_epsilon_falls_linearly_then_stays():
    values = [linear_schedule(s, 1.0, 0.05, 100) for s in (0, 50, 100, 1000)]
    assert values == pytest.approx([1.0, 0.525, 0.05, 0.05])
    assert linear_schedule(10, 1.0, 0.1, 0) == 0.1


def test_discounted_returns_restart_at_episode_ends():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    dones = torch.tensor([False, False, True, False, False])
    returns = discounted_returns(rewards, dones, gamma=0.5)
    # Episode one: 1 + 0.5 * (1 + 0.5 * 1) = 1.75, 1.5, 1; episode two (unfinished): 1.5, 1.
    assert returns.tolist() == [1.75, 1.5, 1.0, 1.5, 1.0]
    two_envs = discounted_returns(torch.ones(3, 2), torch.tensor([[False, True]] * 3), 0.5)
    assert two_envs.tolist() == [[1.75, 1.0], [1.5, 1.0], [1.0, 1.0]]


def test_gae_by_hand():
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    next_values = torch.tensor([[1.0], [1.5], [3.0]])  # V(s1), V(s2), V(s3)
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = gae(rewards, values, next_values, no, no, gamma, lam)
    d = [1 + 0.9 * 1.0 - 0.5, 0 + 0.9 * 1.5 - 1.0, 2 + 0.9 * 3.0 - 1.5]  # TD errors
    a2 = d[2]
    a1 = d[1] + gamma * lam * a2
    a0 = d[0] + gamma * lam * a1
    assert adv[:, 0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[:, 0].tolist() == pytest.approx([a0 + 0.5, a1 + 1.0, a2 + 1.5])


def test_gae_limits_and_episode_boundaries():
    torch.manual_seed(0)
    rewards, values = torch.randn(6, 3), torch.randn(6, 3)
    next_values = torch.cat([values[1:], torch.randn(1, 3)])
    terminated = torch.zeros(6, 3, dtype=torch.bool)
    terminated[2, 1] = True  # env 1's episode ends at step 2: no bootstrap, no carry-over
    adv0, _ = gae(rewards, values, next_values, terminated, terminated, 0.99, lam=0.0)
    td = rewards + 0.99 * next_values * (~terminated) - values
    torch.testing.assert_close(adv0, td)  # lam = 0: the one-step TD error
    adv1, ret1 = gae(rewards, values, next_values, terminated, terminated, 0.99, lam=1.0)
    # lam = 1: the discounted return (bootstrapped from the last next value) minus V.
    mc = torch.zeros(6, 3)
    future = next_values[-1]
    for t in reversed(range(6)):
        future = rewards[t] + 0.99 * future * (~terminated[t])
        mc[t] = future
    torch.testing.assert_close(ret1, mc)
    # A time limit (truncated, not terminated) cuts the sum but still bootstraps from V.
    truncated = torch.zeros(6, 3, dtype=torch.bool)
    truncated[2, 1] = True
    adv_t, _ = gae(rewards, values, next_values, torch.zeros_like(truncated), truncated, 0.99, 1.0)
    assert adv_t[2, 1] == pytest.approx(
        float(rewards[2, 1] + 0.99 * next_values[2, 1] - values[2, 1])
    )


def test_double_dqn_target_on_a_hand_made_batch():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    terminated = torch.tensor([False, False, True])
    online = torch.tensor([[1.0, 3.0], [5.0, 4.0], [0.0, 9.0]])  # picks actions 1, 0, 1
    target = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    targets = double_dqn_targets(rewards, terminated, online, target, gamma=0.5)
    # 1 + 0.5 * target[0, 1]; 0 + 0.5 * target[1, 0]; terminated: the reward alone.
    assert targets.tolist() == [11.0, 15.0, 2.0]
    plain = rewards + 0.5 * target.max(1).values * (~terminated)  # DQN's max: 11, 20, 2
    assert plain[1] > targets[1]  # Double DQN does not take the target net's own max
