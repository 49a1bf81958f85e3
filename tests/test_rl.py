"""The reinforcement-learning arithmetic against values computed by hand: the replay buffer's
capacity and sampling, the exploration schedule, discounted returns, GAE, Double-DQN targets."""

import pytest
import torch

from common.rl.rollout import (
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


# --- environments and loaders ---------------------------------------------------------------

from common.data.gym import GymDataModule, RolloutLoader  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.rl.envs import evaluate, make_env, make_vector, spaces  # noqa: E402


class Push:
    """A scripted agent: always action `a` (CartPole: push left; the pole falls in ~10 steps)."""

    def __init__(self, a: int = 0):
        self.a = a

    def act(self, obs):
        return torch.full((len(obs),), self.a)

    greedy = act


def test_unknown_and_continuous_environments_are_one_readable_error():
    with pytest.raises(UserError, match="CartPole-v1"):
        make_env("CartPol-v1")
    with pytest.raises(UserError, match="continuous actions"):
        make_env("Pendulum-v1")
    assert spaces("CartPole-v1") == (4, 2)
    assert spaces("Acrobot-v1") == (6, 3)


def test_fixed_length_rollouts_record_real_transitions_across_episode_ends():
    envs = make_vector("CartPole-v1", num_envs=3, seed=0)
    loader = RolloutLoader(envs, Push(0), steps=40, batches=2)
    first, second = list(loader)
    assert len(loader) == 2
    assert first.obs.shape == (40, 3, 4) and first.actions.shape == (40, 3)
    assert first.valid.all() and first.num_samples == 120
    # A rollout continues where the last one stopped.
    going = ~(first.terminated[-1] | first.truncated[-1])
    assert going.any() and torch.equal(second.obs[0][going], first.next_obs[-1][going])
    for n in range(3):
        ends = first.terminated[:, n].nonzero().flatten().tolist()
        assert len(ends) >= 2  # pushing left, the pole falls within ~10 steps
        for t in ends[:-1] if ends[-1] == 39 else ends:
            # An ended step's next_obs is where it ended (the pole past 12 degrees), and the
            # next step starts a fresh episode (near upright).
            assert abs(first.next_obs[t, n, 2]) > 0.2
            assert abs(first.obs[t + 1, n, 2]) < 0.05
        steps = [t for t in range(39) if not first.terminated[t, n]]
        assert all(torch.equal(first.next_obs[t, n], first.obs[t + 1, n]) for t in steps)
    # CartPole pays 1 a step: each finished episode's return is its length.
    lengths = []
    for n in range(3):
        ends = [-1, *first.terminated[:, n].nonzero().flatten().tolist()]
        lengths += [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
    assert sorted(first.episode_returns.tolist()) == sorted(float(x) for x in lengths)
    envs.close()


def test_whole_episode_rollouts_hold_whole_episodes_and_mark_the_tails_invalid():
    envs = make_vector("CartPole-v1", num_envs=4, seed=1)
    for rollout in RolloutLoader(envs, Push(1), steps=None, batches=3):
        ended = rollout.terminated | rollout.truncated  # (T, N)
        assert ended.any(dim=0).all()  # every environment finished an episode
        for n in range(4):
            last = ended[:, n].nonzero().max()
            assert rollout.valid[: last + 1, n].all() and not rollout.valid[last + 1 :, n].any()
        # Every rollout starts new episodes: its valid steps are exactly the episodes that
        # ended in it, and their rewards add up to those episodes' returns.
        assert abs(rollout.obs[0, :, 2]).max() < 0.05  # poles near upright: fresh starts
        assert rollout.rewards[rollout.valid].sum() == rollout.episode_returns.sum()
    envs.close()


def test_evaluation_is_one_seeded_episode_per_seed():
    returns = evaluate(Push(0).greedy, "CartPole-v1", seeds=list(range(10)))
    assert returns.shape == (10,)
    assert (returns >= 8).all() and (returns <= 12).all()  # pushing one way: ~10 steps up
    assert torch.equal(returns, evaluate(Push(0).greedy, "CartPole-v1", seeds=list(range(10))))
    assert not torch.equal(
        returns, evaluate(Push(0).greedy, "CartPole-v1", seeds=list(range(10, 20)))
    )


def test_processes_get_their_own_environments_and_a_share_of_the_episodes():
    class Trainer:
        world_size = 3
        lightning_module = Push(0)

        def __init__(self, rank):
            self.global_rank = rank

    shares, starts = [], []
    for rank in range(3):
        dm = GymDataModule(num_envs=2, rollout_steps=1, eval_episodes=100, seed=5)
        dm.trainer = Trainer(rank)
        dm.setup("fit")
        shares.append(next(iter(dm.val_dataloader())))
        starts.append(next(iter(dm.train_dataloader())).obs[0])  # (2, 4)
        dm.teardown("fit")
    assert [len(s) for s in shares] == [33, 33, 34]
    starts = torch.cat(starts)  # 6 environments, seeded apart: 6 different first states
    assert len(torch.unique(starts, dim=0)) == 6
    everyone = torch.cat(shares)
    one = GymDataModule(num_envs=2, eval_episodes=100, seed=5)
    one.trainer = type("T", (), {"world_size": 1, "global_rank": 0, "lightning_module": Push(0)})()
    one.setup("fit")
    assert torch.equal(everyone, next(iter(one.val_dataloader())))  # the same 100 episodes
    for bad in ({"num_envs": 0}, {"num_envs": 1.5}, {"eval_episodes": True}, {"rollout_steps": 0}):
        with pytest.raises(UserError, match=f"data.{next(iter(bad))}=.* must be a whole number"):
            GymDataModule(**bad)
    with pytest.raises(UserError, match="num_workers"):
        GymDataModule(num_workers=2)


# --- recipes the agents refuse, each as one readable error ----------------------------------

from hydra.errors import InstantiationException  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from common.instantiate import instantiate_model  # noqa: E402
from common.train import train  # noqa: E402


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["project=reinforce", "data.rollout_steps=16"], "monte_carlo .* whole episodes"),
        (["project=ppo", "model.minibatches=600"], "more than the 512 samples"),
        (["project=dqn", "+model/scheduler=onecycle"], "no learning-rate schedule"),
        (["project=dqn", "model.target_sync_every=0"], "target_sync_every=0 must be"),
        (["project=dqn", "model.tau=0"], "tau=0"),
    ],
)
def test_a_recipe_that_cannot_run_is_refused_before_training(config, overrides, message):
    with pytest.raises((UserError, InstantiationException), match=message):
        instantiate_model(config(*overrides).model)


def test_a_rollout_larger_than_the_replay_buffer_is_refused(config):
    cfg = config("project=dqn", "model.buffer_size=100", "trainer.max_epochs=1", "test=false")
    with pytest.raises(UserError, match="256 transitions does not fit model.buffer_size=100"):
        train(cfg)
    assert isinstance(instantiate(cfg.data), GymDataModule)
