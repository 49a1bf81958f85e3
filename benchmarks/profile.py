"""Where a training step's time goes, through the real `make train` stack: a torch.profiler
summary of a few steps of any project.

    python -m benchmarks.profile project=cifar10 experiment=cifar10_speedrun data.synthetic=true
    python -m benchmarks.profile project=vit data.synthetic=true
    python -m benchmarks.profile project=detection

Hydra overrides as `make train` takes them; the run gets `--warmup` + `--steps` training
batches, no validation, no checkpoint. The profiler records `--steps` batches after `--warmup`
(so cuDNN autotuning, a compile and first-call costs stay out) and prints the ops that took
the most time of their own (GPU kernel time on a GPU, CPU time elsewhere), per step and as a
share, then the batch augmentation's range (`data.transform`, its ops included). An optimizer's
row (`Optimizer.step#...`) is its Python-side time alone: its math is in the aten rows, and
under automatic optimization its range also holds the forward and backward (Lightning runs them
in the step's closure). Asserts nothing.
"""

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from benchmarks.stack import compose_config
from common.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_model,
    instantiate_trainer,
)


class ProfileSteps(L.Callback):
    """torch.profiler over training batches [warmup, warmup + steps) of a run of exactly that
    many batches."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.seen = warmup, steps, 0
        self.profiler, self.seconds = None, 0.0

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    # From the end of batch `warmup` - 1: the next batch's transfer and augmentation (run
    # before its on_train_batch_start) fall inside.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.warmup:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._sync(pl_module)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.start = time.perf_counter()
        elif self.seen == self.warmup + self.steps:
            self._sync(pl_module)
            self.seconds = time.perf_counter() - self.start
            self.profiler.__exit__(None, None, None)


def summary(profiler, steps: int, seconds: float, on_gpu: bool, rows: int) -> str:
    events = profiler.key_averages()

    def own(e) -> float:  # µs of the op's own time
        return e.self_device_time_total if on_gpu else e.self_cpu_time_total

    total = sum(own(e) for e in events)
    where = "GPU kernel" if on_gpu else "CPU"
    lines = [
        f"{steps} steps, {1000 * seconds / steps:.1f} ms a step (wall); {where} time of each "
        f"op's own, per step, and its share of all of it:",
        f"{'op':<58}{'ms/step':>9}{'share':>8}",
    ]
    for e in sorted(events, key=own, reverse=True)[:rows]:
        if own(e) <= 0:
            break
        name = e.key if len(e.key) <= 56 else e.key[:53] + "..."
        lines.append(f"{name:<58}{own(e) / 1000 / steps:9.2f}{own(e) / total:8.1%}")
    for e in events:
        if e.key == "data.transform":
            spent = e.device_time_total if on_gpu else e.cpu_time_total  # its ops included
            lines.append(
                f"range data.transform (the batch augmentation): {spent / 1000 / steps:.2f} ms a step"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="profiled training batches")
    parser.add_argument("--warmup", type=int, default=3, help="batches before the profiler")
    parser.add_argument("--rows", type=int, default=12, help="ops listed")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. project=vit")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("error: --warmup and --steps must be at least 1")
    quiet = [
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        f"trainer.limit_train_batches={args.warmup + args.steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint=null",
        "callbacks.progress_bar=null",
        "logger=csv",
        "print_config=false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(Path(tmp), [*args.overrides, *quiet])
        L.seed_everything(cfg.seed, verbose=False)
        datamodule = instantiate(cfg.data)
        model = instantiate_model(cfg.model)
        profile = ProfileSteps(args.warmup, args.steps)
        callbacks = [*instantiate_callbacks(cfg), profile]
        trainer = instantiate_trainer(cfg, callbacks=callbacks, logger=instantiate_loggers(cfg))
        trainer.fit(model, datamodule=datamodule)
    if not profile.seconds:
        raise SystemExit("error: the run ended before the profiled steps (fewer batches?)")
    on_gpu = model.device.type == "cuda"
    device = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nprofile of {' '.join(args.overrides)} on {device}, {trainer.precision}")
    print(summary(profile.profiler, args.steps, profile.seconds, on_gpu, args.rows))


if __name__ == "__main__":
    main()
