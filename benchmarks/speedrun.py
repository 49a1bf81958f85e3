"""The speed recipe against airbench94_muon.py, on the same images and GPU, in one run.

    python -m benchmarks.speedrun --root <train folder> --reference path/to/airbench94_muon.py

`--root` is a CIFAR-10 image folder (train/<class>/<n>.jpg, as benchmarks/gpu_speedrun.sh
unpacks it). Both sides use the same split: 5,000 held-out images (data.seed=0), the rest for
training. The reference (Keller Jordan's script, fetched by you from
github.com/KellerJordan/cifar10-airbench; it needs a CUDA GPU) reads them as its cifar10/train.pt
and test.pt; a copy of it runs `--runs` times instead of 200, after its own warm-up run.

What each timer holds:
- reference: its CUDA-event timer: whitening init, the 8 training epochs, and the final 6-view
  TTA evaluation; not its per-epoch untimed evaluation, data loading, or `torch.compile`
  (its warm-up run on random labels pays that).
- ours: "training took" (`SpeedrunClassifier.on_train_start` to `on_train_end`, synchronized):
  the 8 epochs, the end-of-training validation with TTA, and the checkpoint writes; not
  start-up, data decoding, the whitening init (in `setup`), or the recipe's untimed warm-up
  steps on random images (`model.warmup_steps`: cuDNN autotuning and a compile happen there,
  in each process, as the reference's warm-up run pays them). One whole run goes first,
  reported apart (a machine's first run also fills disk caches: decoded images, compiled
  kernels).
Our runs differ in `seed` (initial weights, crops); the split, the batch order and the flips
follow `data.seed=0` in all of them. The reference's runs differ in everything but the split.

Prints both, the median time ratio and the mean accuracies, and writes the summary to `--out`.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# The reference's final loop, `range(200)` runs: the one line a copy changes.
REFERENCE_RUNS = "for run in range(200)"
HELD_OUT, SPLIT_SEED = 5000, 0  # both sides: the same images held out
OURS = ["project=cifar10", "experiment=cifar10_speedrun"]


def write_reference_data(
    root: Path, out: Path, work: Path, held_out: int = HELD_OUT
) -> tuple[int, int]:
    """Our run's split of the image folder (its own config's datamodule), as the reference's
    cifar10/{train,test}.pt: uint8 (N, 32, 32, 3) images, int64 labels, class names. Returns
    the (train, held-out) counts."""
    from hydra.utils import instantiate

    from benchmarks.stack import compose_config

    overrides = [*OURS, *split_overrides(root, held_out), f"paths.data_dir={work}"]
    dm = instantiate(compose_config(work, overrides).data)
    dm.prepare_data()
    dm.setup("fit")
    out.mkdir(parents=True, exist_ok=True)
    sizes = []
    for name, subset in (("train", dm.train_set), ("test", dm.val_set)):
        images, labels = subset.tensors  # (N, 3, 32, 32) uint8, (N,) int64
        record = {
            "images": images.permute(0, 2, 3, 1).contiguous(),
            "labels": labels.long(),
            "classes": list(dm.class_names),
        }
        torch.save(record, out / f"{name}.pt")
        sizes.append(len(labels))
    return sizes[0], sizes[1]


def parse_reference(text: str) -> list[tuple[float, float]]:
    """(TTA accuracy, seconds) of each run in the reference's table, its warm-up run left out.

    Its rows read `|  run  |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |`;
    a run's last row has epoch "eval". The first run is the warm-up on random labels.
    """
    runs = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1] == "eval":
            runs.append((float(cells[4]), float(cells[5])))
    return runs[1:]


def parse_ours(text: str) -> tuple[float, Path]:
    """(seconds, run directory) of one `make train` run's output."""
    took = re.search(r"training took ([0-9.]+) s", text)
    run_dir = re.search(r"run directory: (\S+)", text)
    if not (took and run_dir):
        tail = "\n".join(text.splitlines()[-15:])
        raise SystemExit(f"error: the speed recipe's run did not finish; its last lines:\n{tail}")
    return float(took.group(1)), Path(run_dir.group(1))


def run_reference(script: Path, data: Path, runs: int, work: Path) -> tuple[list, str]:
    code = script.read_text()
    if REFERENCE_RUNS not in code:
        raise SystemExit(f"error: {script} has no `{REFERENCE_RUNS}`: not airbench94_muon.py?")
    (work / "cifar10").mkdir(parents=True, exist_ok=True)
    for name in ("train.pt", "test.pt"):
        (work / "cifar10" / name).write_bytes((data / name).read_bytes())
    copy = work / "airbench94_muon.py"
    copy.write_text(code.replace(REFERENCE_RUNS, f"for run in range({runs})"))
    done = subprocess.run(
        [sys.executable, copy.name], cwd=work, capture_output=True, text=True, check=False
    )
    text = done.stdout + done.stderr
    results = parse_reference(text)
    if done.returncode or len(results) != runs:
        raise SystemExit(f"error: the reference failed:\n{text[-3000:]}")
    return results, text


def split_overrides(root: Path, held_out: int = HELD_OUT) -> list[str]:
    """Our run's data: the folder's images, `held_out` of them (seeded) validating and testing."""
    return [
        "data=image_folder",
        f"data.root={root}",
        f"data.val_size={held_out}",
        "data.test_size=0",
        f"data.seed={SPLIT_SEED}",
    ]


def run_ours(root: Path, seed: int, extra: list[str], env_dir: Path) -> tuple[float, float, str]:
    command = [
        sys.executable,
        "-m",
        "common.train",
        *OURS,
        *split_overrides(root),
        f"seed={seed}",
        "logger=csv",
        "print_config=false",
        f"paths.data_dir={env_dir / 'data'}",
        f"paths.log_dir={env_dir / 'logs'}",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    text = done.stdout + done.stderr
    seconds, run_dir = parse_ours(text)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return seconds, metrics["test/acc"], text


def summary(name: str, results: list[tuple[float, float]]) -> str:
    accs, times = [a for a, _ in results], [t for _, t in results]
    return (
        f"{name}: {len(results)} runs, seconds median {statistics.median(times):.2f} "
        f"(min {min(times):.2f}, max {max(times):.2f}), held-out accuracy mean "
        f"{statistics.mean(accs):.4f} (min {min(accs):.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="CIFAR-10 image folder")
    parser.add_argument("--reference", type=Path, help="your copy of airbench94_muon.py")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each")
    parser.add_argument("--extra", default="", help="overrides added to our runs")
    parser.add_argument("--out", type=Path, help="summary file (default: benchmarks/results/)")
    parser.add_argument("--log", type=Path, help="keep every run's full output here")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    lines = [f"torch {torch.__version__} on {device}"]
    print(lines[0], flush=True)
    logs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        if args.reference:
            counts = write_reference_data(args.root, work / "ref_data", work / "data_dir")
            print(f"reference data: {counts[0]} training, {counts[1]} held-out images", flush=True)
            results["reference"], text = run_reference(
                args.reference, work / "ref_data", args.runs, work / "ref"
            )
            logs.append(text)
            print(summary("airbench94_muon.py", results["reference"]), flush=True)
        extra = args.extra.split()
        first, acc, text = run_ours(args.root, 0, extra, work)  # warms the caches
        logs.append(text)
        lines.append(
            f"ours, first run (cold caches, untimed in the ratio): {first:.2f} s, {acc:.4f}"
        )
        print(lines[-1], flush=True)
        ours = []
        for seed in range(1, args.runs + 1):
            seconds, acc, text = run_ours(args.root, seed, extra, work)
            logs.append(text)
            ours.append((acc, seconds))
            print(f"  seed {seed}: {seconds:.2f} s, {acc:.4f}", flush=True)
        results["ours"] = ours
    if "reference" in results:
        lines.append(summary("reference airbench94_muon.py", results["reference"]))
    lines.append(summary("ours, experiment=cifar10_speedrun", results["ours"]))
    if "reference" in results:
        ratio = statistics.median(t for _, t in ours) / statistics.median(
            t for _, t in results["reference"]
        )
        lines.append(f"time ratio, ours / reference (medians): {ratio:.2f}x (goal <= 1.25x)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    slug = re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_")
    out = args.out or RESULTS / f"speedrun_vs_airbench_{slug}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    if args.log:
        args.log.write_text("\n".join(logs))


if __name__ == "__main__":
    main()
