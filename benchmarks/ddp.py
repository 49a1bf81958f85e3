"""DDP scaling: samples/s of a project's recipe with 1 and 2 processes, and the efficiency.

gloo on CPU (the processes share the machine's cores), NCCL on GPUs (one process per GPU). The
global batch stays `--batch-size`, so with 2 processes each computes half of it per step. The
default project is `ddp` (ResNet-18 on CIFAR-10 shapes) on GPUs and `mnist` on CPU, where a
ResNet-18 step takes seconds.
Each measurement is a fresh `python -m common.train`-style launch: Lightning re-runs this
script once per extra process, as it does for `make train trainer=ddp`.
Run: `make bench-ddp` or `python -m benchmarks.ddp --steps 150`.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
from hydra.utils import instantiate

from benchmarks.stack import StepTimer, bench_config, run_worker
from common.instantiate import instantiate_callbacks, instantiate_model, instantiate_trainer


def worker(processes: int, args) -> None:
    """One fit with `processes` DDP processes; rank 0 prints the timed seconds as JSON."""
    # Lightning's re-launched ranks run this too, so the folder must be one all ranks agree on.
    if "BENCH_DDP_DIR" not in os.environ:  # a worker started by hand, not by `measure`
        os.environ["BENCH_DDP_DIR"] = tempfile.mkdtemp()
    out = Path(os.environ["BENCH_DDP_DIR"])
    overrides = [
        "trainer=ddp",
        f"trainer.devices={processes}",
        f"trainer.accelerator={args.accelerator}",
        "callbacks.lr_monitor=null",  # it needs a logger; none here
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
    ]
    cfg = bench_config(out, args.steps, args.batch_size, overrides, project=args.project)
    L.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer(args.warmup)
    trainer = instantiate_trainer(cfg, callbacks=[*instantiate_callbacks(cfg), timer], logger=False)
    trainer.fit(instantiate_model(cfg.model), datamodule=instantiate(cfg.data))
    if trainer.is_global_zero:
        print("RESULT " + json.dumps({"wall": timer.end[0] - timer.start[0]}), flush=True)


def measure(processes: int, args) -> float:
    command = [
        sys.executable,
        "-m",
        "benchmarks.ddp",
        "--worker",
        str(processes),
        "--accelerator",
        args.accelerator,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
    ]
    with TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_DDP_DIR": tmp}
        failure = f"benchmark run with {processes} process(es) failed"
        return run_worker(command, failure, env)["wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians shown")
    gpu = torch.cuda.device_count() >= 2
    parser.add_argument("--accelerator", default="gpu" if gpu else "cpu", choices=["cpu", "gpu"])
    parser.add_argument("--project", default="ddp" if gpu else "mnist")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    timed = args.steps - args.warmup
    rates = {1: [], 2: []}
    for round_ in range(args.rounds):
        for processes in (1, 2) if round_ % 2 == 0 else (2, 1):  # alternate against drift
            rates[processes].append(timed * args.batch_size / measure(processes, args))
            print(
                f"round {round_ + 1}, {processes} process(es): {rates[processes][-1]:8.1f} samples/s",
                flush=True,
            )
    speedup = statistics.median(two / one for one, two in zip(rates[1], rates[2], strict=True))
    backend = "NCCL" if args.accelerator == "gpu" else f"gloo, {os.cpu_count()} CPU cores shared"
    print(
        f"\nproject {args.project} under DDP ({backend}), global batch {args.batch_size}, "
        f"{timed} timed steps after {args.warmup} warm-up, medians of {args.rounds} rounds"
    )
    for processes in (1, 2):
        print(f"{processes} process(es): {statistics.median(rates[processes]):8.1f} samples/s")
    print(f"speed-up with 2 processes: {speedup:.2f}x")
    print(f"scaling efficiency: {speedup / 2:.0%} (100% = twice the samples/s)")


if __name__ == "__main__":
    main()
