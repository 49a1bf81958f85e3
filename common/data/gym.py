"""The environment as a datamodule: training batches are rollouts the agent collects as it acts,
and the validation (and test) batch is the greedy returns of seeded evaluation episodes.

The loaders ask the model being trained for its actions (the `Agent` protocol), so the Trainer
drives an RL agent like any other project: fetch a batch, `training_step`, repeat; validate.

On-policy by construction: the rollout loader has a length, and Lightning fetches a batch with a
length only when the step before it is done (it fetches one ahead only for loaders without one),
so every rollout is collected by the weights the previous step left.

Under DDP every process is a learner with its own environments (seeded apart) and DDP averages
the gradients: N processes learn like one with N times the environments. The evaluation
episodes are shared out between them and their returns summed back together.
"""

from typing import NamedTuple, Protocol

import lightning as L
import numpy as np
import torch

from common.data.loaders import shard_bounds
from common.errors import UserError
from common.rl.envs import evaluate, make_vector

# Evaluation episodes are seeded far from the training environments' seeds, and test from val.
VAL_SEEDS, TEST_SEEDS = 1_000_000, 2_000_000


def require_counts(group: str, **values) -> None:
    """A UserError naming `<group>.<key>` unless every value is a whole number >= 1."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{group}.{key}={value} must be a whole number >= 1")


class Agent(Protocol):
    """What the loaders ask of the model: actions for observations (N, obs_dim) float32."""

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions (N,) int64 to learn from: exploring."""
        ...

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions (N,) int64 to be judged by: the best the agent knows."""
        ...


class Rollout(NamedTuple):
    """T steps of N environments, each field (T, N, ...)."""

    obs: torch.Tensor  # (T, N, obs_dim) float32
    actions: torch.Tensor  # (T, N) int64
    rewards: torch.Tensor  # (T, N) float32
    next_obs: torch.Tensor  # (T, N, obs_dim): where an ended episode ended, not the next start
    terminated: torch.Tensor  # (T, N) bool: the episode ended in the environment: no future
    truncated: torch.Tensor  # (T, N) bool: a time limit cut it: the future was still there
    valid: torch.Tensor  # (T, N) bool: the step counts (whole-episode rollouts drop the tails)
    episode_returns: torch.Tensor  # (E,) the returns of the episodes that ended in it

    @property
    def num_samples(self) -> int:
        """Environment steps taken (the Throughput callback counts these)."""
        return self.actions.numel()


class RolloutLoader:
    """`batches` rollouts per epoch from the vector environment `envs`, acted in by `agent`.

    `steps`: each rollout is that many steps of every environment (the environments carry on
    across rollouts); None: whole episodes (REINFORCE's Monte Carlo returns need them): each
    rollout starts new episodes and runs until every environment has ended at least one; the
    steps after an environment's last ending are not `valid` (they were taken, and count as
    environment steps, but their episode is cut off: the next rollout starts afresh).
    """

    def __init__(self, envs, agent: Agent, steps: int | None, batches: int):
        self.envs, self.agent, self.steps, self.batches = envs, agent, steps, batches
        self.obs = None  # (N, obs_dim): where the environments are now
        self.episode_return = np.zeros(envs.num_envs)  # running sums of the open episodes

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            yield self.collect()

    def collect(self) -> Rollout:
        if self.obs is None or self.steps is None:
            self.obs, _ = self.envs.reset()  # seeded once, in `make_vector`: this goes on from it
            self.episode_return[:] = 0.0
        n = self.envs.num_envs
        columns = {k: [] for k in Rollout._fields[:6]}
        ended_at = np.full(n, -1)  # each environment's last episode end in this rollout
        finished = []
        t = 0
        while (self.steps is not None and t < self.steps) or (
            self.steps is None and (ended_at < 0).any()
        ):
            obs = torch.as_tensor(self.obs)
            actions = self.agent.act(obs).cpu()
            next_obs, rewards, terminated, truncated, info = self.envs.step(actions.numpy())
            ended = terminated | truncated
            landed = next_obs.copy()  # where each step really went, ended episodes included
            for i in np.flatnonzero(ended):
                landed[i] = info["final_obs"][i]
            self.episode_return += rewards
            finished += self.episode_return[ended].tolist()
            self.episode_return[ended] = 0.0
            ended_at[ended] = t
            for key, value in zip(
                columns, (obs, actions, rewards, landed, terminated, truncated), strict=True
            ):
                columns[key].append(torch.as_tensor(value))
            self.obs = next_obs
            t += 1
        batch = {k: torch.stack(v) for k, v in columns.items()}  # (T, N, ...)
        batch["rewards"] = batch["rewards"].float()
        if self.steps is None:
            valid = torch.arange(t)[:, None] <= torch.as_tensor(ended_at)[None]  # (T, N)
        else:
            valid = torch.ones(t, n, dtype=torch.bool)
        return Rollout(**batch, valid=valid, episode_returns=torch.tensor(finished))


class EvaluationLoader:
    """One batch: the greedy returns (E,) of the episodes seeded `seeds` (this process's share)."""

    def __init__(self, agent: Agent, env_id: str, seeds: list[int]):
        self.agent, self.env_id, self.seeds = agent, env_id, seeds

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield evaluate(self.agent.greedy, self.env_id, self.seeds)


class GymDataModule(L.LightningDataModule):
    """A gymnasium environment to learn from (`num_envs` copies) and to be judged on
    (`eval_episodes` seeded episodes, mean and std of the return: the way RL papers report)."""

    def __init__(
        self,
        env: str = "CartPole-v1",
        num_envs: int = 1,
        rollout_steps: int | None = 1,
        rollouts_per_epoch: int = 1000,
        eval_episodes: int = 100,
        num_workers: int = 0,
        seed: int = 42,
    ):
        super().__init__()
        if num_workers:
            raise UserError(
                f"data.num_workers={num_workers}: the environments step in the training process, "
                "where the agent acts (data.num_envs sets how many)"
            )
        require_counts(
            "data",
            num_envs=num_envs,
            rollouts_per_epoch=rollouts_per_epoch,
            eval_episodes=eval_episodes,
        )
        if rollout_steps is not None:  # null: whole episodes
            require_counts("data", rollout_steps=rollout_steps)
        self.env_id = env
        self.num_envs = num_envs
        self.rollout_steps = rollout_steps
        self.rollouts_per_epoch = rollouts_per_epoch
        self.eval_episodes = eval_episodes
        self.seed = seed
        self.train_envs = None

    def adopt(self, spec) -> None:
        """A checkpoint's data spec (`DataModule.adopt`): an environment derives nothing from
        its data that a trained agent would need back."""

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_world()
        if world > self.eval_episodes:
            raise UserError(
                f"data.eval_episodes={self.eval_episodes} cannot be shared out over {world} "
                "processes: evaluate at least one episode in each"
            )
        if stage in ("fit", None) and self.train_envs is None:
            # Each process learns from its own environments: seeds seed + rank * num_envs, ...
            self.train_envs = make_vector(
                self.env_id, self.num_envs, self.seed + rank * self.num_envs
            )

    def teardown(self, stage: str | None = None) -> None:
        if stage == "fit" and self.train_envs is not None:
            self.train_envs.close()
            self.train_envs = None

    def _agent(self) -> Agent:
        model = self.trainer.lightning_module
        if not callable(getattr(model, "act", None)) or not callable(
            getattr(model, "greedy", None)
        ):
            raise UserError(
                f"{type(model).__name__} cannot act in an environment (it needs act and greedy, "
                "common/data/gym.py): data=gym is for the RL projects"
            )
        return model

    def _seeds(self, base: int) -> list[int]:
        rank, world = self._rank_world()
        start, stop = shard_bounds(self.eval_episodes, rank, world)
        return list(range(base + self.seed + start, base + self.seed + stop))

    def train_dataloader(self):
        return RolloutLoader(
            self.train_envs, self._agent(), self.rollout_steps, self.rollouts_per_epoch
        )

    def val_dataloader(self):
        return EvaluationLoader(self._agent(), self.env_id, self._seeds(VAL_SEEDS))

    def test_dataloader(self):
        return EvaluationLoader(self._agent(), self.env_id, self._seeds(TEST_SEEDS))
