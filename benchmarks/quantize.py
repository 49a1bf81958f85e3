"""Which int8 path is fast on this CPU: `python -m benchmarks.quantize` (part of `make bench`).

The same conv nets (mnist's ConvNet, a CIFAR ResNet-10) at batch 1 and 32, one thread, the
median of `--calls` calls: float eager, float under `torch.compile`, torch.ao's FX static int8
(what `make compress method=static` uses) and the maintained successor, torch.export + the pt2e
X86InductorQuantizer (torchao), run eagerly and under `torch.compile` (which fuses its
quantize/dequantize pairs into int8 kernels). Weights are random and calibration is one random
batch: speed depends on the shapes, not on what was learned. Compiling takes a minute or more.
"""

import argparse
import copy
import logging
import warnings

import torch

from benchmarks.export import ms_per_call
from common.compress import quantize_static, quiet_deprecations


def pt2e(net: torch.nn.Module, example: tuple):
    """int8 through torch.export + pt2e (torchao's X86InductorQuantizer), calibrated on `example`."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, example, dynamic_shapes=({0: batch},)).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(program, quantizer)
    prepared(*example)
    return convert_pt2e(prepared)


def main() -> None:
    from projects.cifar10.nets import ResNet
    from projects.mnist.nets import ConvNet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_deprecations()
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    except ImportError:
        torchao = None
    nets = {
        "mnist ConvNet": (ConvNet(), (1, 28, 28)),
        "ResNet-10 w16": (ResNet(depths=[1, 1, 1, 1], width=16), (3, 32, 32)),
    }
    print(f"{'net':<15}{'path':<24}{'batch 1 ms':>11}{'batch 32 ms':>12}  (1 thread)")
    for name, (net, shape) in nets.items():
        net.eval()
        gen = torch.Generator().manual_seed(0)
        inputs = {n: (torch.randn(n, *shape, generator=gen),) for n in (1, 32)}
        paths = {
            "float eager": net,
            "FX static int8": quantize_static(copy.deepcopy(net), [inputs[32]]),
        }
        if not args.no_compile:
            paths["float compiled"] = torch.compile(copy.deepcopy(net))
        if torchao is not None:
            quantized = pt2e(copy.deepcopy(net), inputs[32])
            paths["pt2e int8 eager"] = quantized
            if not args.no_compile:
                paths["pt2e int8 compiled"] = torch.compile(quantized)
        for path, run in paths.items():
            with torch.inference_mode():
                ms = [ms_per_call(run, inputs[n], args.calls) for n in (1, 32)]
            print(f"{name:<15}{path:<24}{ms[0]:>11.2f}{ms[1]:>12.2f}", flush=True)
        if torchao is None:
            print(f"{name:<15}pt2e: not measured (pip install torchao)")


if __name__ == "__main__":
    main()
