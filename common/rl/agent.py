"""What the RL agents share: a policy sized by its environment, the count of environment steps,
evaluation by greedy return (mean and std over seeded episodes, the way RL papers report),
stopping once the environment counts as solved, and films of episodes."""

import math
import time

import torch

from common.errors import UserError
from common.figures import animation_path, log_animation, save_gif
from common.module import TemplateModule
from common.rl.envs import film, solved_at, spaces


class RLAgent(TemplateModule):
    """A LightningModule that acts in `env` (a gymnasium id): `act` explores, `greedy` exploits.

    Subclasses build their nets from `self.obs_dim` and `self.num_actions` and define
    `training_step(rollout)`, `act` and `greedy`. `env_steps` counts the environment steps of
    all processes; it is kept in checkpoints (an exploration schedule is a function of it).
    Optimization is manual (`learn`): DQN may not step at all on a rollout, PPO steps many times.
    Randomness of acting and sampling comes from `self.rng`, a CPU generator seeded apart in
    each process, so DDP's learners explore independently.
    """

    def __init__(
        self,
        env: str,
        optimizer=None,
        scheduler=None,
        gamma: float = 0.99,
        stop_when_solved: bool = True,
        film_every_n_epochs: int = 5,
    ):
        super().__init__(optimizer, scheduler)
        if scheduler is not None:
            # Lightning steps no schedule under manual optimization, and its step count is of
            # rollouts, not of updates: a schedule would silently not run as configured.
            raise UserError(
                "the RL agents take no learning-rate schedule: use model.scheduler=null"
            )
        if not 0.0 <= gamma <= 1.0:
            raise UserError(f"model.gamma={gamma} is a discount: between 0 and 1")
        self.env = env
        self.obs_dim, self.num_actions = spaces(env)
        self.gamma = gamma
        self.solved = solved_at(env) if stop_when_solved else None
        self.film_every_n_epochs = film_every_n_epochs
        self.env_steps = 0
        self.automatic_optimization = False
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}  # training statistics (`tally`)
        self.eval_returns: list[torch.Tensor] = []  # this evaluation's, this process's share
        self.fit_started = time.perf_counter()
        self.rng = torch.Generator()

    # --- acting ---------------------------------------------------------------------------------

    def count_steps(self, rollout) -> None:
        """Add a rollout's environment steps, every process's, to `env_steps`; tally the
        returns of the episodes that ended in it (exploring: below what greedy evaluation
        shows)."""
        steps = rollout.num_samples
        if self.trainer.world_size > 1:  # whole-episode rollouts differ in length by process
            steps = int(
                self.trainer.strategy.reduce(
                    torch.tensor(steps, device=self.device), reduce_op="sum"
                )
            )
        self.env_steps += steps
        episodes = rollout.episode_returns  # (E,), E may be 0: a process whose episodes go on
        self.tally("episode_return", episodes.sum(), len(episodes))

    # `self.log` costs ~0.8 ms a call on this CPU (measured): more than a DQN update. The step
    # adds to running sums on the device instead, and their means are logged once an epoch.
    def on_train_epoch_start(self) -> None:
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}

    def tally(self, name: str, total: torch.Tensor, count: int = 1) -> None:
        """Add `total` (a tensor: no device sync) over `count` items to `train/<name>`'s mean."""
        old, n = self.sums.get(name, (0.0, 0))
        self.sums[name] = (old + total.detach(), n + count)

    def on_train_epoch_end(self) -> None:
        # Every process tallies the same names (episode_return even when none ended), so one
        # reduction of (total, count) pairs gives the mean over all processes' items.
        names = sorted(self.sums)
        pairs = torch.tensor([[float(self.sums[k][0]), self.sums[k][1]] for k in names])  # (K, 2)
        pairs = self.trainer.strategy.reduce(pairs.to(self.device), reduce_op="sum").cpu()
        means = {
            f"train/{k}": total / n
            for k, (total, n) in zip(names, pairs.tolist(), strict=True)
            if n
        }
        means["train/env_steps"] = float(self.env_steps)
        self.log_dict(means, sync_dist=True)  # equal everywhere: this only quiets a warning

    def learn(self, loss: torch.Tensor, max_grad_norm: float | None) -> None:
        """One optimizer step on `loss`, its gradients clipped to norm `max_grad_norm`."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        if max_grad_norm is not None:
            self.clip_gradients(optimizer, max_grad_norm, "norm")
        optimizer.step()

    # --- evaluation -----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self.fit_started = time.perf_counter()
        # Seeded from the run's seed (`seed_everything` set it), apart in each process, and on
        # by the steps taken, so a resumed run does not replay the exploration it began with.
        seed = torch.initial_seed() + 1_000_003 * self.trainer.global_rank + self.env_steps
        self.rng.manual_seed(seed)

    def on_validation_epoch_start(self) -> None:
        self.eval_returns = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, returns: torch.Tensor, batch_idx: int) -> None:
        self.eval_returns.append(returns)  # (E,) greedy returns of this process's episodes

    test_step = validation_step

    def report(self, stage: str) -> tuple[float, int]:
        """Log `<stage>/return` and `<stage>/return_std` over every process's episodes; return
        the mean and the number of episodes."""
        returns = torch.cat(self.eval_returns).double()
        # Exact over processes with uneven shares: sum, sum of squares and count, summed.
        moments = torch.stack([returns.sum(), (returns**2).sum(), torch.tensor(len(returns))])
        total, squares, n = self.trainer.strategy.reduce(
            moments.to(self.device), reduce_op="sum"
        ).tolist()
        mean = total / n
        std = math.sqrt(max(squares / n - mean**2, 0.0))
        self.log(f"{stage}/return", mean, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/return_std", std, sync_dist=True)
        return mean, int(n)

    def on_validation_epoch_end(self) -> None:
        mean, episodes = self.report("val")
        # The learning curve's x axes: environment steps, and wall seconds since fitting began
        # (evaluations included).
        self.log("val/env_steps", float(self.env_steps), sync_dist=True)
        self.log("val/seconds", time.perf_counter() - self.fit_started, sync_dist=True)
        if self.trainer.sanity_checking:
            return
        if self.solved is not None and mean >= self.solved:
            self.print(
                f"{self.env} solved: greedy return {mean:.1f} >= {self.solved:g} over {episodes} "
                f"episodes after {self.env_steps:,} environment steps"
            )
            self.trainer.should_stop = True
        due = self.film_every_n_epochs and (self.current_epoch + 1) % self.film_every_n_epochs == 0
        if due or self.trainer.should_stop:
            self.log_film()

    def on_test_epoch_end(self) -> None:
        self.report("test")

    def log_film(self) -> None:
        """An episode of the greedy policy, to TensorBoard and `<run>/images/val_episode_epochNNN.gif`."""
        if self.trainer.global_rank != 0:
            return
        frames, total, fps = self.play_episode(seed=0)
        log_animation(self, "val/episode", frames, fps)
        save_gif(frames, fps, animation_path(self, "val/episode"))
        self.print(f"filmed an episode of return {total:g} (val/episode)")

    # --- make play ------------------------------------------------------------------------------

    def play_episode(self, seed: int) -> tuple[list, float, float]:
        """One greedy episode: its frames (H, W, 3) uint8, its return, and frames per second."""
        return film(self.greedy, self.env, seed, every=2)  # half the frames: a smaller GIF

    # --- checkpoints ----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["env_steps"] = self.env_steps  # a plain int: weights_only loads it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.env_steps = int(checkpoint.get("env_steps", 0))
