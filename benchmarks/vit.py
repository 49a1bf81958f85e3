"""Where a ViT training step's time goes, and what compile and a fused optimizer buy.

    python -m benchmarks.vit [--batch 512] [--steps 10] [--compile]

The project's own net and augmentation (`project=vit`, from its configs) on synthetic CIFAR-size
images, on the GPU when there is one:
- the augmentation (RandAugment, flip, crop, normalize) of one uint8 batch on the device;
- one training step (forward, loss, backward, AdamW) in each optimizer mode: torch's default
  (a `foreach` loop over tensors on GPUs, one tensor at a time on CPUs) and `fused=True`; with
  `--compile`, also the compiled net with the fused optimizer, its compile time, and the steps
  it needs to pay that back;
- the step's FLOPs (counted by torch's FlopCounterMode: forward and backward), the achieved
  TFLOP/s and, on the GPUs `DENSE_BF16` lists, the model FLOP utilization (MFU);
- the attention kernel that `F.scaled_dot_product_attention` dispatched to, from a profile.
bf16 autocast where the device computes bf16 natively (`common.instantiate.native_bf16`'s
rule), else fp32. Prints a table; asserts nothing.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.stack import compose_config
from common.instantiate import native_bf16

# Dense bf16 tensor-core peaks, FLOP/s, from NVIDIA's datasheets (which print twice these "with
# sparsity"; Lightning's get_available_flops returns those, and does not know "NVIDIA H200"). A
# model's matmuls are dense: MFU is measured against these. Checked in order: PCIe before SXM.
DENSE_BF16 = {"H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device: torch.device, dtype) -> float | None:
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in DENSE_BF16.items() if chip in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, steps: int) -> float:
    """Median seconds of `steps` calls of `fn`, each synchronized."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_step(net, optimizer, images, labels, dtype):
    def step():
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(net(images), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def attention_kernels(step) -> list[str]:
    """The attention ops one step ran, as the profiler names them."""
    with torch.profiler.profile() as prof:
        step()
    names = {e.key for e in prof.key_averages() if "attention" in e.key.lower()}
    return sorted(n for n in names if n.startswith("aten::_"))  # the kernel, not the wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="default: 512 on GPU, 64 on CPU")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians over all steps")
    parser.add_argument("--compile", action="store_true", help="also time the compiled net")
    parser.add_argument("--size", default="tiny", help="model/vit_size preset")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (512 if device.type == "cuda" else 64)
    native = native_bf16(device.type)
    dtype = torch.bfloat16 if native else None
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["project=vit", "data.synthetic=true", "data.val_size=0.1"]
        overrides.append(f"model/vit_size={args.size}")
        cfg = compose_config(Path(tmp), [*overrides, f"data.synthetic_size=[{batch * 2},100]"])
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        net = instantiate(cfg.model.net).to(device)
    images, labels = (t[:batch].to(device) for t in datamodule.train_set.tensors)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    precision = "bf16 autocast" if dtype else "fp32"
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    params = sum(p.numel() for p in net.parameters())
    print(f"ViT-{args.size} ({params:,} parameters), batch {batch}, {precision}, {name}{threads}")

    augment = timed(lambda: datamodule.transform(images, train=True), device, args.steps)
    inputs = datamodule.transform(images, train=True)  # (B, 3, 32, 32) normalized
    net.train()
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
            F.cross_entropy(net(inputs), labels).backward()
    flops = counter.get_total_flops()  # forward + backward of one batch
    net.zero_grad(set_to_none=True)
    peak = peak_flops(device, dtype)

    # Each path times `steps` steps in every round, the paths taking turns: drift in the
    # machine's speed hits all alike. The compiled net shares the eager net's parameters.
    paths = {
        "eager, AdamW default": (net, False),
        "eager, AdamW fused": (net, True),
        **({"compiled, AdamW fused": (torch.compile(net), True)} if args.compile else {}),
    }
    steps, optimizers, firsts = {}, {}, {}
    for label, (model, fused) in paths.items():
        optimizers[label] = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=fused or None)
        steps[label] = make_step(model, optimizers[label], inputs, labels, dtype)
        start = time.perf_counter()
        for _ in range(2):  # warm-up (compiled: the compile)
            steps[label]()
        sync(device)
        firsts[label] = time.perf_counter() - start
    times = {label: [] for label in paths}
    for _ in range(args.rounds):
        for label, step in steps.items():
            times[label] += [timed(step, device, 1) for _ in range(args.steps)]
    rows = [(label, statistics.median(t)) for label, t in times.items()]
    seconds = dict(rows)
    eager = seconds["eager, AdamW default"]

    # The optimizer alone, on the gradients of one backward.
    F.cross_entropy(net(inputs), labels).backward()
    alone = {
        label: timed(optimizers[label].step, device, args.steps)
        for label in ("eager, AdamW default", "eager, AdamW fused")
    }
    net.zero_grad(set_to_none=True)
    kernels = attention_kernels(
        make_step(net, torch.optim.SGD(net.parameters()), inputs, labels, dtype)
    )
    if args.compile:
        compiled, fused = seconds["compiled, AdamW fused"], seconds["eager, AdamW fused"]
        compile_s = firsts["compiled, AdamW fused"] - 2 * compiled
        gain = fused - compiled
        payback = f"{compile_s / gain:,.0f} steps" if gain > 0 else "never (no faster)"

    print(f"augmentation of one batch: {1000 * augment:.1f} ms ({batch / augment:,.0f} samples/s)")
    print(f"one step: {flops / 1e9:.1f} GFLOP ({flops / batch / 1e9:.2f} per sample, fwd + bwd)")
    print(f"{'path':28s} {'ms/step':>9s} {'samples/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s}")
    for label, took in rows:
        achieved = flops / took
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        print(
            f"{label:28s} {1000 * took:9.1f} {batch / took:10,.0f} {achieved / 1e12:8.2f} {mfu:>6s}"
        )
    default_ms, fused_ms = (1000 * t for t in alone.values())
    print(f"AdamW step alone: {default_ms:.1f} ms default, {fused_ms:.1f} ms fused")
    if not peak:
        print("MFU: n/a (no dense bf16 peak known for this device: DENSE_BF16)")
    if args.compile:
        print(f"compile: {compile_s:.1f} s, paid back (against eager fused) after {payback}")
    print(f"step with augmentation: augmentation is {augment / (augment + eager):.0%} of it")
    print(f"attention kernel: {', '.join(kernels) or 'none found'}")


if __name__ == "__main__":
    main()
