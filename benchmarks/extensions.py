"""Every swish, x * sigmoid(x), timed and weighed: `python -m benchmarks.extensions` (part of
`make bench`).

On a float32 activation the size of a conv net's ((64, 64, 32, 32) by default, `--shape`), one
thread by default (`--threads`): the median forward+backward time of `--rounds` rounds, in which
the variants take turns (a busy spell of the machine then hits them all), and the bytes autograd
keeps for backward (counted with saved_tensors_hooks, each storage once). The variants: the
eager composition (two kernels, keeps x and sigmoid(x)); nn.SiLU (torch's fused kernel);
common.functions.Swish (an autograd Function that recomputes the sigmoid); common.ops.swish (a
torch.library custom op in Python); the C++ op of common.extension (built on first use, ~15 s
once); and the composition under torch.compile (`--no-compile` skips it). Ratios are to the
eager composition.

Then the same choice inside the projects' nets (`model/net/activation=`): the mnist ConvNet
(width 32) and a CIFAR ResNet-10 (width 16) at batch `--batch`, one training forward+backward
each, and what autograd keeps for it, with ReLU (the default) as the reference.
"""

import argparse
import statistics
import time

import torch
from torch import nn

from common.extension import CppSwish
from common.functions import Swish
from common.ops import OpSwish
from common.ops import swish as python_op
from projects.cifar10.nets import ResNet
from projects.mnist.nets import ConvNet

COMPOSITION = "x * sigmoid(x)"


def composition(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def forward_backward(f, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    (dx,) = torch.autograd.grad(f(x), x, grad)  # no .grad accumulation to time
    return dx


def saved_bytes(f, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps from f(x) for backward; a storage saved twice (the
    composition saves sigmoid(x) for the product and for the sigmoid's own backward) counts once."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(x)
    return sum(storages.values())


def interleaved_ms(runs: dict, rounds: int) -> dict[str, float]:
    """Median ms per call of each `runs[name]()`; the runs take turns in each round, starting
    one further each round: what a run leaves behind (freed memory that the next large
    allocation must fault in again) then falls on every run in turn, not on one."""
    names = list(runs)
    times = {name: [] for name in runs}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


class ComposedSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return composition(x)


ACTIVATIONS = {  # what configs/model/net/activation/ builds, and the eager composition
    "relu": lambda: nn.ReLU(inplace=True),
    COMPOSITION: ComposedSwish,
    "silu": nn.SiLU,
    "swish": Swish,
    "swish_op": OpSwish,
    "swish_cpp": CppSwish,
}


def nets_table(batch: int, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for title, build, shape in [
        ("mnist ConvNet w32", lambda a: ConvNet(width=32, activation=a), (1, 28, 28)),
        (
            "ResNet-10 w16",
            lambda a: ResNet(depths=(1, 1, 1, 1), width=16, activation=a),
            (3, 32, 32),
        ),
    ]:
        x = torch.randn(batch, *shape, generator=gen)
        nets = {}
        for name, activation in ACTIVATIONS.items():
            torch.manual_seed(0)  # the same weights for every activation
            nets[name] = build(activation)

        def step(net, x=x):
            return lambda: net(x).square().mean().backward()

        for net in nets.values():
            step(net)()  # warm-up
        ms = interleaved_ms({name: step(net) for name, net in nets.items()}, rounds)
        saved = {name: saved_bytes(net, x) for name, net in nets.items()}
        print(f"\n{title}, batch {batch}: one training step (forward + backward)")
        print(f"{'activation':<14}{'ms':>9}{'vs relu':>9}{'saved MB':>10}{'vs relu':>9}")
        for name in nets:
            print(
                f"{name:<14}{ms[name]:>9.2f}{ms[name] / ms['relu']:>8.2f}x"
                f"{saved[name] / 1e6:>10.1f}{saved[name] / saved['relu']:>8.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 64, 32, 32])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--batch", type=int, default=128, help="batch of the nets' table")
    parser.add_argument("--net-rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = {
        COMPOSITION: composition,
        "nn.SiLU": nn.SiLU(),
        "functions.Swish": Swish(),
        "ops.swish (Python op)": python_op,
        "C++ op": CppSwish(),  # builds the extension now, not inside a timed call
    }
    if not args.no_compile:
        variants["compiled x * sigmoid(x)"] = torch.compile(composition)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*args.shape, generator=gen).requires_grad_()
    grad = torch.randn(*args.shape, generator=gen)
    expected = forward_backward(composition, x, grad)
    for name, f in variants.items():  # warm-up (compiles), and every variant is right
        torch.testing.assert_close(forward_backward(f, x, grad), expected, msg=name)

    runs = {name: (lambda f=f: forward_backward(f, x, grad)) for name, f in variants.items()}
    ms = interleaved_ms(runs, args.rounds)
    saved = {name: saved_bytes(f, x) for name, f in variants.items()}

    mb = x.numel() * x.element_size() / 1e6
    print(
        f"swish forward+backward on {tuple(args.shape)} float32 ({mb:.1f} MB), "
        f"{args.threads} thread(s), median of {args.rounds} rounds"
    )
    print(f"{'variant':<26}{'ms':>9}{'vs comp.':>10}{'saved MB':>10}{'vs comp.':>10}")
    for name in variants:
        time_ratio = ms[name] / ms[COMPOSITION]
        memory_ratio = saved[name] / saved[COMPOSITION]
        print(
            f"{name:<26}{ms[name]:>9.2f}{time_ratio:>9.2f}x"
            f"{saved[name] / 1e6:>10.1f}{memory_ratio:>9.2f}x"
        )
    nets_table(args.batch, args.net_rounds)


if __name__ == "__main__":
    main()
