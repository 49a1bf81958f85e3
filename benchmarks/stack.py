"""The mnist project through `make train`'s stack versus the same work in a plain PyTorch loop.

Same net, initial weights, data, batch size, optimizer, schedule and number of steps. Steady-state
throughput is timed after `--warmup` steps; start-up (building the Trainer, sanity check) is
reported apart. Run: `make bench` or `python -m benchmarks.stack --steps 200`.
"""

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from common.instantiate import instantiate_callbacks, instantiate_loggers
from common.resolvers import REPO_ROOT, register_resolvers


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def mnist_config(out: Path, steps: int, batch_size: int):
    register_resolvers()
    overrides = [
        "project=mnist",
        "data.synthetic=true",
        f"data.synthetic_size=[{(steps + 10) * batch_size * 10 // 9},100]",
        f"data.batch_size={batch_size}",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
        "trainer.accelerator=cpu",
        # No validation in either path: nothing for these two to watch.
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",
    ]
    with initialize_config_dir(str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out)
        del cfg["hydra"]
    return cfg


def run_lightning(cfg, warmup: int) -> tuple[float, float]:
    """(steady seconds, start-up seconds) through the same calls as common.train."""
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    timer = StepTimer(warmup)
    trainer = instantiate(
        cfg.trainer, callbacks=[*instantiate_callbacks(cfg), timer], logger=instantiate_loggers(cfg)
    )
    trainer.fit(model, datamodule=datamodule)
    total = time.perf_counter() - t0
    steady = timer.end - timer.start
    return steady, total - steady


def run_plain(cfg, warmup: int) -> tuple[float, float]:
    """The same training written by hand: forward, loss, backward, step, schedule."""
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model).net  # identical initial weights: same seed, same construction
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    steps = cfg.trainer.max_steps
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer, total_steps=steps)
    net.train()
    step, start = 0, None
    while step < steps:
        for batch in loader:
            if step == warmup:
                start = time.perf_counter()
            x, y = datamodule.on_after_batch_transfer(batch, 0)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == steps:
                break
    end = time.perf_counter()
    return end - start, (end - t0) - (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians shown")
    args = parser.parse_args()

    timed = args.steps - args.warmup
    results = {"plain": [], "lightning": []}
    with TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, fn in (("plain", run_plain), ("lightning", run_lightning)):
                cfg = mnist_config(Path(tmp) / f"{name}{round_}", args.steps, args.batch_size)
                results[name].append(fn(cfg, args.warmup))
                steady = results[name][-1][0]
                print(f"round {round_ + 1} {name:>9}: {timed * args.batch_size / steady:8.1f} samples/s")

    print(
        f"\nmnist ConvNet, batch {args.batch_size}, {timed} timed steps after {args.warmup} warm-up,"
        f" {torch.get_num_threads()} threads, medians of {args.rounds} rounds"
    )
    print(f"{'path':<28}{'samples/s':>12}{'ms/step':>10}{'start-up s':>12}")
    medians = {}
    for name, label in (("plain", "plain PyTorch loop"), ("lightning", "make train stack")):
        steady = statistics.median(r[0] for r in results[name])
        startup = statistics.median(r[1] for r in results[name])
        medians[name] = steady
        print(
            f"{label:<28}{timed * args.batch_size / steady:12.1f}"
            f"{1000 * steady / timed:10.2f}{startup:12.2f}"
        )
    print(f"time ratio, stack / plain loop: {medians['lightning'] / medians['plain']:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
