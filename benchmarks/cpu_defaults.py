"""What the CPU defaults rest on: bf16 only where the CPU computes it, and torch's thread count.

    python -m benchmarks.cpu_defaults        (part of `make bench`)

1. Precision: a training step (forward, loss, backward, SGD) of the speed recipe's net (batch
   64) and of the mnist ConvNet (batch 128) in fp32 and under bf16 autocast, on this CPU as it
   is and with oneDNN and ATen held to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`: a CPU without bf16
   instructions, imitated), and what `trainer.precision=bf16-mixed` becomes on each
   (`common.instantiate.settle_precision`).
2. Threads: the mnist step (width 32, batch 128) and a tiny one (width 4, batch 8) with one
   thread and with torch's default (one per core), alone and beside one busy process (a Python
   loop spinning on one core: another job on a shared machine).
Each measurement is a fresh process; medians of a few seconds of steps. Asserts nothing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.stack import run_worker

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def step_ms(net_name: str, batch: int, bf16: bool, seconds: float, threads: int | None) -> float:
    """Median ms of training steps (after two) for `seconds`, in this process."""
    from projects.cifar10.nets import SpeedrunNet
    from projects.mnist.nets import ConvNet

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if net_name == "speedrun":
        net = SpeedrunNet().to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    else:
        net = ConvNet(width=4 if net_name == "mnist-w4" else 32)
        x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(args: list[str], env: dict | None = None) -> float:
    """`step_ms` in a fresh process (its own environment: the ISA cap acts at start-up)."""
    command = [sys.executable, "-m", "benchmarks.cpu_defaults", "--worker", *args]
    return run_worker(command, "benchmark worker failed", {**os.environ, **(env or {})})


def chosen(env: dict) -> str:
    code = (
        "from common.instantiate import native_bf16; n = native_bf16('cpu'); "
        "print(f'bf16-mixed ({n})' if n else '32-true')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return done.stdout.strip()


def precision(seconds: float, batch: int | None) -> None:
    print(f"1. bf16 autocast against fp32, one training step, {torch.get_num_threads()} threads")
    print(f"{'CPU':<22}{'net, batch':<18}{'fp32 ms':>9}{'bf16 ms':>9}{'bf16/fp32':>10}")
    for label, env in (("as it is", {}), ("held to AVX2", AVX2)):
        for net, size in (("speedrun", 64), ("mnist", 128)):
            size = batch or size
            fp32 = measure([net, str(size), "0", str(seconds)], env)
            bf16 = measure([net, str(size), "1", str(seconds)], env)
            print(f"{label:<22}{f'{net}, {size}':<18}{fp32:9.1f}{bf16:9.1f}{bf16 / fp32:9.2f}x")
        print(f"{'':<22}trainer.precision=bf16-mixed becomes {chosen(env)}")


def threads(seconds: float, batch: int | None) -> None:
    cores = torch.get_num_threads()
    print(f"\n2. threads: ms per training step, alone and beside one busy process ({cores} cores)")
    print(f"{'net, batch':<18}{'beside':<10}{'1 thread':>10}{f'{cores} threads':>11}{'ratio':>8}")
    for net, size in (("mnist", 128), ("mnist-w4", 8)):
        size = batch or size
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                one = measure([net, str(size), "0", str(seconds), "1"])
                many = measure([net, str(size), "0", str(seconds), str(cores)])
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            beside = "busy" if busy else "nothing"
            print(f"{f'{net}, {size}':<18}{beside:<10}{one:10.2f}{many:11.2f}{many / one:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="of steps per measurement")
    parser.add_argument("--batch", type=int, help="one batch size for every net (a quick run)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        net, batch, bf16, seconds, *rest = args.worker
        ms = step_ms(net, int(batch), bf16 == "1", float(seconds), int(rest[0]) if rest else None)
        print(f"RESULT {json.dumps(ms)}")
        return
    precision(args.seconds, args.batch)
    threads(args.seconds, args.batch)


if __name__ == "__main__":
    main()
