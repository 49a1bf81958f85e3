"""Environment steps per second of the RL agents through `make train`'s stack versus the same
agent in a plain PyTorch loop: `python -m benchmarks.rl` (part of `make bench`).

Both paths use the same model object's pieces (nets, `td_loss`, `advantages`, `loss`), the same
seeded CartPole-v1 environments and the same rollout loader, so what differs is the Trainer's
loop, hooks, callbacks and `manual_backward`/`clip_gradients` wrappers around each optimizer
step. Timed after `--warmup` rollouts (DQN learns from step 1000 on), without evaluation
(`limit_val_batches=0`). Every run is a fresh process; rounds alternate which path goes first.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
from hydra.utils import instantiate

from benchmarks.stack import StepTimer, clocks, compose_config, run_worker
from common.instantiate import instantiate_callbacks, instantiate_loggers, instantiate_model


def rl_config(out: Path, project: str, rollouts: int):
    """The project's config for `rollouts` training batches and no evaluation."""
    overrides = [f"project={project}", "trainer.max_epochs=1", "trainer.limit_val_batches=0"]
    overrides += [f"data.rollouts_per_epoch={rollouts}", "trainer.accelerator=cpu", "test=false"]
    overrides += ["model.stop_when_solved=false", "model.film_every_n_epochs=0"]
    # No evaluation in either path: nothing for the checkpoint to watch.
    overrides += ["callbacks.model_checkpoint.monitor=null"]
    return compose_config(out, overrides)


def run_lightning(cfg, warmup: int) -> tuple[float, float]:
    """(steady wall s, steady CPU s) through the same calls as common.train."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate_model(cfg.model)
    timer = StepTimer(warmup)
    timer.on_train_batch_start = rollout_start(timer, warmup)
    trainer = instantiate(
        cfg.trainer, callbacks=[*instantiate_callbacks(cfg), timer], logger=instantiate_loggers(cfg)
    )
    trainer.fit(model, datamodule=datamodule)
    return tuple(end - start for end, start in zip(timer.end, timer.start, strict=True))


def rollout_start(timer: StepTimer, warmup: int):
    """Start the clock at rollout `warmup` (batches, not optimizer steps: DQN takes 128 steps
    per rollout, PPO 16). The rollout itself is collected before this hook, so the clock
    starts after collecting rollout `warmup` in both paths."""

    def hook(trainer, pl_module, batch, batch_idx):
        if batch_idx == warmup:
            timer.start = clocks()

    return hook


def run_plain(cfg, warmup: int) -> tuple[float, float]:
    """The same agent written by hand around the model's own pieces."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate_model(cfg.model)
    datamodule.trainer = None
    datamodule.setup("fit")
    from common.data.gym import RolloutLoader

    loader = RolloutLoader(
        datamodule.train_envs, model, datamodule.rollout_steps, datamodule.rollouts_per_epoch
    )
    optimizer = model.optimizer_factory(params=model.parameters())
    model.rng.manual_seed(torch.initial_seed())  # as on_fit_start seeds it in one process
    step = dqn_step if cfg.name == "dqn" else pg_step
    start = None
    for i, rollout in enumerate(loader):
        if i == warmup:
            start = clocks()
        step(model, optimizer, rollout)
    end = clocks()
    return end[0] - start[0], end[1] - start[1]


def clip_and_step(model, optimizer, loss, max_grad_norm) -> None:
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()


def dqn_step(model, optimizer, rollout) -> None:
    """DQN.training_step without the Trainer."""
    from common.rl.rollout import ReplayBuffer

    if model.buffer is None:
        model.buffer = ReplayBuffer(model.buffer_size, (model.obs_dim,))
    model.env_steps += rollout.num_samples
    model.buffer.push(*(x.flatten(0, 1) for x in rollout[:5]))
    if model.env_steps < model.learning_starts:
        return
    for _ in range(model.updates_per_rollout):
        loss = model.td_loss(*model.buffer.sample(model.replay_batch_size, model.rng))
        clip_and_step(model, optimizer, loss, model.max_grad_norm)
        model.plain_updates = getattr(model, "plain_updates", 0) + 1
        if model.plain_updates % model.target_sync_every == 0:
            model.sync_target()


def pg_step(model, optimizer, rollout) -> None:
    """PolicyGradient.training_step without the Trainer."""
    model.env_steps += rollout.num_samples
    advantages, returns, old_logp = model.advantages(rollout)
    valid = rollout.valid.flatten()
    samples = [
        x.flatten(0, 1)[valid]
        for x in (rollout.obs, rollout.actions, advantages, returns, old_logp)
    ]
    for _ in range(model.update_epochs):
        for index in torch.randperm(len(samples[0]), generator=model.rng).tensor_split(
            model.minibatches
        ):
            loss, _ = model.loss(*(x[index] for x in samples))
            clip_and_step(model, optimizer, loss, model.max_grad_norm)


def worker(path: str, project: str, rollouts: int, warmup: int) -> None:
    with TemporaryDirectory() as tmp:
        cfg = rl_config(Path(tmp), project, rollouts)
        result = {"plain": run_plain, "lightning": run_lightning}[path](cfg, warmup)
    print("RESULT " + json.dumps(result))


def spawn(path: str, project: str, rollouts: int, warmup: int) -> tuple[float, float]:
    command = [sys.executable, "-m", "benchmarks.rl", "--worker", path, "--projects", project]
    command += ["--rollouts", str(rollouts), "--warmup", str(warmup)]
    return tuple(run_worker(command, f"benchmark run failed ({project}, {path})"))


# Rollouts to time per project, after the warm-up: DQN's rollouts are 256 steps and 128
# updates (it starts learning at step 1000, in rollout 4), PPO's 512 steps and 16 updates.
ROLLOUTS = {"dqn": (14, 4), "ppo": (26, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", nargs="+", default=list(ROLLOUTS), choices=list(ROLLOUTS))
    parser.add_argument("--rollouts", type=int, help="rollouts per run (default: per project)")
    parser.add_argument("--warmup", type=int, help="rollouts before the clock starts")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians shown")
    parser.add_argument("--worker", choices=["plain", "lightning"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rollouts is not None and args.warmup is not None and args.warmup >= args.rollouts:
        parser.error(
            f"--warmup {args.warmup} leaves no rollout of --rollouts {args.rollouts} to time"
        )
    if args.worker:
        (project,) = args.projects
        worker(args.worker, project, args.rollouts, args.warmup)
        return

    rows = []
    for project in args.projects:
        rollouts = args.rollouts or ROLLOUTS[project][0]
        warmup = args.warmup if args.warmup is not None else ROLLOUTS[project][1]
        with TemporaryDirectory() as tmp:
            cfg = rl_config(Path(tmp), project, rollouts)
        steps = (rollouts - warmup) * cfg.data.num_envs * cfg.data.rollout_steps
        results = {"plain": [], "lightning": []}
        for round_ in range(args.rounds):
            order = ["plain", "lightning"] if round_ % 2 == 0 else ["lightning", "plain"]
            for name in order:
                results[name].append(spawn(name, project, rollouts, warmup))
                rate = steps / results[name][-1][0]
                print(
                    f"{project} round {round_ + 1} {name:>9}: {rate:8.0f} env steps/s", flush=True
                )
        ratios = [
            lt[0] / pl[0] for lt, pl in zip(results["lightning"], results["plain"], strict=True)
        ]
        rows.append((project, steps, results, statistics.median(ratios)))

    print(f"\nCartPole-v1, {torch.get_num_threads()} threads, medians of {args.rounds} rounds")
    print(
        f"{'agent':<6}{'timed steps':>12}{'plain env steps/s':>19}{'stack env steps/s':>19}{'ratio':>8}"
    )
    for project, steps, results, ratio in rows:
        plain = steps / statistics.median(r[0] for r in results["plain"])
        stack = steps / statistics.median(r[0] for r in results["lightning"])
        print(f"{project:<6}{steps:>12}{plain:>19.0f}{stack:>19.0f}{ratio:>7.3f}x")
    print("ratio: wall time of the make train stack / the plain loop, for the same steps")


if __name__ == "__main__":
    main()
