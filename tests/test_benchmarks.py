"""The benchmarks still run (tiny sizes): what they print is read by people, not asserted on."""

import re
import sys

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow  # a minute in all: `make test-all`


@pytest.mark.parametrize("project", ["mnist", "gan"])
def test_stack_benchmark_runs_both_paths(project):
    tiny = ["--steps", "8", "--warmup", "2", "--rounds", "1", "--project", project]
    result = run(sys.executable, "-m", "benchmarks.stack", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"time ratio, stack / plain loop: \d+\.\d+x wall", result.stdout)


def test_stack_benchmark_prints_the_per_step_overhead():
    tiny = ["--overhead", "--steps", "30", "--warmup", "10", "--rounds", "1"]
    result = run(sys.executable, "-m", "benchmarks.stack", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"^overhead: -?\d+ µs per step over the plain loop's \d+ µs", result.stdout, re.M
    )


def test_loader_benchmark_runs_every_path():
    result = run(sys.executable, "-m", "benchmarks.loaders", "--samples", "2000")
    assert result.returncode == 0, result.stderr[-3000:]
    for dataset in ("MNIST", "CIFAR-10"):
        assert dataset in result.stdout
    assert result.stdout.count("data.loader=device vs best torchvision path") == 2


def test_audio_benchmark_runs_every_path():
    result = run(sys.executable, "-m", "benchmarks.audio", "--clips", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    for path in ("Dataset, 0 workers", "Dataset, 2 workers", "dataloader, batch-wise"):
        assert path in result.stdout
    assert re.search(r"\(data.loader=device\) vs best per-clip path: \d+\.\dx", result.stdout)


def test_ddp_benchmark_runs_one_and_two_processes():
    result = run(
        sys.executable, "-m", "benchmarks.ddp", "--steps", "8", "--warmup", "2", "--rounds", "1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es):" in result.stdout and "scaling efficiency" in result.stdout


def test_rl_benchmark_runs_both_paths():
    tiny = ["--projects", "ppo", "--rollouts", "3", "--warmup", "1", "--rounds", "1"]
    result = run(sys.executable, "-m", "benchmarks.rl", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"ppo\s+1024\s+\d+\s+\d+\s+\d+\.\d+x", result.stdout), result.stdout


def test_export_benchmark_exports_and_times_each_project():
    result = run(sys.executable, "-m", "benchmarks.export", "--projects", "mnist,sentiment")
    assert result.returncode == 0, result.stderr[-3000:]
    for project in ("mnist", "sentiment"):
        onnx = re.search(
            rf"^{project}\s+onnx\s+(\S+)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+$", result.stdout, re.M
        )
        assert onnx and float(onnx.group(1)) <= 1e-4, result.stdout
        assert re.search(rf"^{project}\s+pt2\s+", result.stdout, re.M)


def test_serve_benchmark_loads_a_server_and_stops_it(tiny_checkpoint):
    ckpt = tiny_checkpoint("mnist")
    words = [
        "--project",
        "mnist",
        "--ckpt",
        str(ckpt),
        "--seconds",
        "1",
        "--clients",
        "2",
        "--batch",
        "4",
    ]
    result = run(sys.executable, "-m", "benchmarks.serve", *words)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(
        r"^fastapi\s+(torch|onnx)\s+(\d+)\s+(\d+)\s+.*\s(\d+)\s+\S+$", result.stdout, re.M
    )
    assert [(b, int(m)) for b, m, _, _ in rows] == [
        ("torch", 1),
        ("torch", 4),
        ("onnx", 1),
        ("onnx", 4),
    ]
    assert all(int(req) > 0 and int(errors) == 0 for _, _, req, errors in rows)


def test_quantize_benchmark_times_every_int8_path():
    result = run(sys.executable, "-m", "benchmarks.quantize", "--calls", "2", "--no-compile")
    assert result.returncode == 0, result.stderr[-3000:]
    for path in ("float eager", "FX static int8", "pt2e int8 eager"):
        assert re.search(rf"^ResNet-10 w16\s+{path}\s+\d+\.\d+\s+\d+\.\d+$", result.stdout, re.M)


def test_extensions_benchmark_times_and_weighs_every_swish():
    tiny = ["--shape", "4", "64", "--rounds", "2", "--no-compile"]
    result = run(sys.executable, "-m", "benchmarks.extensions", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in (
        "x * sigmoid(x)",
        "nn.SiLU",
        "functions.Swish",
        "ops.swish (Python op)",
        "C++ op",
    ):
        row = rf"^{re.escape(variant)}\s+\d+\.\d+\s+\d+\.\d+x\s+\d+\.\d+\s+\d+\.\d+x$"
        assert re.search(row, result.stdout, re.M), result.stdout


def test_detection_benchmark_times_the_box_logic():
    result = run(sys.executable, "-m", "benchmarks.detection", "--batch", "4", "--calls", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    for row in (
        "assignment + loss + backward",
        "postprocess, few candidates",
        "postprocess, every cell",
    ):
        assert re.search(rf"^{re.escape(row)}.*\d+\.\d+ ms$", result.stdout, re.M), result.stdout


def test_cpu_defaults_benchmark_times_precisions_and_threads():
    quick = ["--batch", "4", "--seconds", "0.05"]
    result = run(sys.executable, "-m", "benchmarks.cpu_defaults", *quick)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held to AVX2" in result.stdout
    # Without bf16 instructions the rule picks fp32, whatever this machine has.
    assert re.search(r"^\s+trainer.precision=bf16-mixed becomes 32-true$", result.stdout, re.M)
    rows = re.findall(
        r"^mnist.*(?:nothing|busy)\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+x$", result.stdout, re.M
    )
    assert len(rows) == 4, result.stdout


def test_vit_benchmark_counts_flops_and_names_the_attention_kernel():
    result = run(sys.executable, "-m", "benchmarks.vit", "--batch", "4", "--steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^one step: \d+\.\d GFLOP", result.stdout, re.M), result.stdout
    for row in ("eager, AdamW default", "eager, AdamW fused"):
        assert re.search(rf"^{row}\s+\d+\.\d", result.stdout, re.M), result.stdout
    assert re.search(r"^attention kernel: aten::_scaled_dot_product_\w+", result.stdout, re.M)


def test_profile_benchmark_summarizes_a_projects_steps():
    overrides = ["project=mnist", "data.synthetic=true", "data.batch_size=16"]
    result = run(
        sys.executable, "-m", "benchmarks.profile", "--steps", "1", "--warmup", "1", *overrides
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^1 steps, \d+\.\d ms a step \(wall\); CPU time", result.stdout, re.M)
    assert re.search(r"^aten::\w+\s+\d+\.\d\d\s+\d+\.\d%$", result.stdout, re.M), result.stdout
    assert "range data.transform (the batch augmentation)" in result.stdout
