"""The mnist project through `make train`'s stack versus the same work in a plain PyTorch loop.

Same net, initial weights, data, batch size, optimizer, schedule and number of steps.
`--project gan` times the DCGAN instead: Lightning's manual optimization (two optimizers,
toggle_optimizer, manual_backward) against the same two steps written by hand. Steady-state
throughput is timed after `--warmup` steps; start-up (building the Trainer, sanity check) is
reported apart. Every run is a fresh process, as a user's run is (a second Trainer in one process
inherits the first one's heap and threads). Run: `make bench` or `python -m benchmarks.stack`.

`--overhead` times the stack's own cost per step: the mnist net at width 4, batch 8, one thread,
so small that the step is mostly host work (Python, dispatch, Lightning's loop, logging,
callbacks); it prints µs per step of both paths and their difference. At GPU pace (a few ms per
step) that difference is what decides the ratio to a hand-written loop. `--device cuda` runs
both paths on the GPU (the data resident there for both, as `data.loader=device` keeps it).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch.utils.data import TensorDataset

from common.instantiate import instantiate_callbacks, instantiate_loggers, instantiate_model
from common.resolvers import REPO_ROOT, register_resolvers

# Lightning's global_step counts optimizer steps: the GAN takes two (D, then G) per batch.
STEPS_PER_BATCH = {"gan": 2}


def clocks(device: torch.device | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread of this process), once a GPU has finished."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


class StepTimer(L.Callback):
    """Clocks from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = clocks(pl_module.device)

    def on_train_end(self, trainer, pl_module):
        self.end = clocks(pl_module.device)


def bench_config(
    out: Path,
    steps: int,
    batch_size: int,
    extra: list[str] = (),
    project: str = "mnist",
    device: str = "cpu",
):
    """A project's config on synthetic data, `steps` batches, no validation, under `out`."""
    per_batch = STEPS_PER_BATCH.get(project, 1)
    overrides = [
        f"project={project}",
        "data.synthetic=true",
        "data.val_size=0.01",
        f"data.synthetic_size=[{(steps + 10) * batch_size * 10 // 9},100]",
        f"data.batch_size={batch_size}",
        f"trainer.max_steps={steps * per_batch}",
        "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        # No validation in either path: nothing for these two to watch.
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",
        *extra,
    ]
    return compose_config(out, overrides)


def compose_config(out: Path, overrides: list[str], config_name: str = "train"):
    """The resolved `make <config_name>` config of `overrides`, writing under `out`."""
    register_resolvers()
    with initialize_config_dir(str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out)
        del cfg["hydra"]
    # Resolved, the config needs no Hydra state; cleared, Lightning's ddp re-launches this
    # script as it is instead of as a Hydra app.
    OmegaConf.resolve(cfg)
    HydraConfig.instance().cfg = None
    return cfg


def run_lightning(cfg, warmup: int) -> tuple[float, float, float]:
    """(steady wall s, steady CPU s, start-up wall s) through the same calls as common.train."""
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate_model(cfg.model)
    timer = StepTimer(warmup * STEPS_PER_BATCH.get(cfg.name, 1))
    trainer = instantiate(
        cfg.trainer, callbacks=[*instantiate_callbacks(cfg), timer], logger=instantiate_loggers(cfg)
    )
    trainer.fit(model, datamodule=datamodule)
    total = time.perf_counter() - t0
    wall, cpu = (end - start for end, start in zip(timer.end, timer.start, strict=True))
    return wall, cpu, total - wall


def run_plain(cfg, warmup: int) -> tuple[float, float, float]:
    """The same training written by hand: forward, loss, backward, step, schedule."""
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    # Identical initial weights: same seed, same construction.
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    model = instantiate_model(cfg.model).to(device)
    datamodule.setup("fit")
    # The training set on the device, as data.loader=device puts it for the stack.
    datamodule.train_set = TensorDataset(*(t.to(device) for t in datamodule.train_set.tensors))
    loader = datamodule.train_dataloader()
    step_fn = plain_gan_step(model, cfg) if cfg.name == "gan" else plain_classifier_step(model, cfg)
    steps = cfg.trainer.max_steps // STEPS_PER_BATCH.get(cfg.name, 1)
    step, start = 0, None
    while step < steps:
        for batch in loader:
            if step == warmup:
                start = clocks(device)
            step_fn(*datamodule.on_after_batch_transfer(batch, 0))
            step += 1
            if step == steps:
                break
    end = clocks(device)
    wall, cpu = end[0] - start[0], end[1] - start[1]
    return wall, cpu, (end[0] - t0) - wall


def plain_classifier_step(model, cfg):
    """One step of the mnist recipe: cross-entropy, AdamW, one-cycle schedule."""
    net = model.net.train()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    peak = cfg.model.optimizer.lr  # OneCycleLR's max_lr, which TemplateModule passes per group
    scheduler = instantiate(cfg.model.scheduler)(
        optimizer=optimizer, total_steps=cfg.trainer.max_steps, max_lr=peak
    )  # one optimizer: steps = batches

    def step(x, y):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return step


def plain_gan_step(model, cfg):
    """One DCGAN step as `projects.gan.model.GAN` takes it: D, then G, each with the other net's
    parameters frozen (what toggle_optimizer does), so both paths compute the same gradients."""
    g, d = model.generator.train(), model.discriminator.train()
    opt_g = instantiate(cfg.model.optimizer_g)(params=g.parameters())
    opt_d = instantiate(cfg.model.optimizer_d)(params=d.parameters())

    bce = model.bce  # the same loss function: only the loop around it differs

    def step(x, _):
        fake = g(torch.randn(len(x), g.latent_dim, device=x.device))
        g.requires_grad_(False)
        loss_d = bce(d(x), True) + bce(d(fake.detach()), False)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        g.requires_grad_(True)
        d.requires_grad_(False)
        loss_g = bce(d(fake), True)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)

    return step


def worker(
    path: str,
    project: str,
    steps: int,
    warmup: int,
    batch_size: int,
    overrides: list[str],
    threads: int | None = None,
    device: str = "cpu",
) -> None:
    """One timed run in this process; prints its (wall, cpu, start-up) seconds as JSON."""
    if threads:
        torch.set_num_threads(threads)
    with TemporaryDirectory() as tmp:
        cfg = bench_config(Path(tmp), steps, batch_size, overrides, project, device)
        result = {"plain": run_plain, "lightning": run_lightning}[path](cfg, warmup)
    print("RESULT " + json.dumps(result))


def run_worker(command: list[str], failure: str, env: dict | None = None):
    """Run a benchmark worker process; return what it printed as `RESULT <json>`."""
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{failure}:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def spawn(path: str, args) -> tuple[float, float, float]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.stack",
        "--worker",
        path,
        "--project",
        args.project,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        *(["--threads", str(args.threads)] if args.threads else []),
        "--device",
        args.device,
        *args.overrides,
    ]
    return tuple(run_worker(command, f"benchmark run failed ({path})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="default 260; 1060 with --overhead")
    # Past the first logging step (50): the first TensorBoard write imports and opens files, a
    # one-off cost that would otherwise read as per-step overhead in a short timed window.
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians shown")
    parser.add_argument("--project", choices=["mnist", "gan"], default="mnist")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="the per-step cost of the stack: width 4, batch 8, 1 thread, 1060 steps",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker", choices=["plain", "lightning"], help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for both paths, e.g. model.net.width=64"
    )
    args = parser.parse_args()
    if args.worker:  # spawned with every option explicit
        worker(
            args.worker,
            args.project,
            args.steps,
            args.warmup,
            args.batch_size,
            args.overrides,
            args.threads,
            args.device,
        )
        return
    if args.overhead:  # host work dominates: what the stack adds per step shows
        args.batch_size, args.threads = 8, 1
        args.overrides = ["model.net.width=4", *args.overrides]
    args.steps = args.steps or (1060 if args.overhead else 260)

    timed = args.steps - args.warmup
    results = {"plain": [], "lightning": []}
    for round_ in range(args.rounds):
        # Alternate who goes first, so drift in the machine's speed hits both alike.
        order = ["plain", "lightning"] if round_ % 2 == 0 else ["lightning", "plain"]
        for name in order:
            results[name].append(spawn(name, args))
            wall = results[name][-1][0]
            print(
                f"round {round_ + 1} {name:>9}: {timed * args.batch_size / wall:8.1f} samples/s",
                flush=True,
            )

    what = "mnist ConvNet" if args.project == "mnist" else "gan DCGAN (28x28, D then G)"
    print(
        f"\n{what}, batch {args.batch_size}, {timed} timed steps after {args.warmup} warm-up,"
        f" {args.threads or torch.get_num_threads()} threads, medians of {args.rounds} rounds"
        + (", width 4 (host overhead)" if args.overhead else "")
        + (f", on {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
    )
    print(f"{'path':<24}{'samples/s':>11}{'ms/step':>9}{'CPU ms/step':>13}{'start-up s':>12}")
    for name, label in (("plain", "plain PyTorch loop"), ("lightning", "make train stack")):
        wall = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        startup = statistics.median(r[2] for r in results[name])
        print(
            f"{label:<24}{timed * args.batch_size / wall:11.1f}{1000 * wall / timed:9.2f}"
            f"{1000 * cpu / timed:13.2f}{startup:12.2f}"
        )
    # Ratios of the two runs of each round (they ran back to back), then the median over rounds.
    pairs = list(zip(results["lightning"], results["plain"], strict=True))
    ratios = [lt[0] / pl[0] for lt, pl in pairs]
    cpu_ratio = statistics.median(lt[1] / pl[1] for lt, pl in pairs)
    print(f"per-round wall ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(
        f"time ratio, stack / plain loop: {statistics.median(ratios):.3f}x wall, "
        f"{cpu_ratio:.3f}x CPU (target <= 1.05x)"
    )
    if args.overhead:
        per_step = [1e6 * (lt[0] - pl[0]) / timed for lt, pl in pairs]  # µs, per round
        plain_us = 1e6 * statistics.median(r[0] for r in results["plain"]) / timed
        print(
            f"overhead: {statistics.median(per_step):.0f} µs per step over the plain loop's "
            f"{plain_us:.0f} µs (per round: {' '.join(f'{u:.0f}' for u in per_step)})"
        )


if __name__ == "__main__":
    main()
