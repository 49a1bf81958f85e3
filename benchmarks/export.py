"""Every exportable project through `make export`: `python -m benchmarks.export` (part of `make bench`).

Each project trains a few steps on its synthetic data (the `TINY` runs the tests use too), is
exported as ONNX and as a torch.export program (and as ExecuTorch when `.[edge]` is installed),
and prints the parity check's largest difference, the file's size, and the milliseconds per call
of the eager model and of onnxruntime (one thread each, the median of 50 calls after 5) at batch
sizes 1 and 16. The weights are a few steps from their initialization: parity and speed depend
on the architecture and the sizes, not on how well the model learned.
"""

import argparse
import contextlib
import io
import json
import logging
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

# Runs small enough to train a few steps in seconds, on synthetic data: one per project with an
# inference path (tests/conftest.py trains the same ones).
TINY = {
    "mnist": ["data.synthetic=true"],
    "cifar10": ["data.synthetic=true", "data.synthetic_size=[256,64]", "data.val_size=32"],
    "vit": ["data.synthetic=true", "data.synthetic_size=[256,64]", "data.val_size=32"],
    "detection": ["data.synthetic_size=[64,16]", "data.val_size=16", "data.image_size=64"],
    "sentiment": ["data.synthetic_size=[256,64]", "data.val_size=32"],
    "kws": ["data.synthetic=true", "data.synthetic_size=[64,32]"],
    "gan": [
        "data.synthetic=true",
        "data.image_size=16",
        "data.synthetic_size=[256,64]",
        "data.val_size=32",
    ],
    "vae": ["data.synthetic=true", "data.synthetic_size=[256,64]", "data.val_size=32"],
}
# One epoch of two training batches, one validation and one test batch, no sanity check (the
# tests' runs too).
FEW_STEPS = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
]
# And here: no test, no progress bars, a small batch.
QUIET = [
    "test=false",
    "logger=csv",
    "data.batch_size=16",
    "~callbacks.progress_bar",  # the table, not progress bars
    "trainer.enable_progress_bar=false",
]


def ms_per_call(run, inputs, calls: int = 50) -> float:
    for _ in range(5):
        run(*inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(*inputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    from benchmarks.stack import compose_config
    from common.capabilities import Exports
    from common.errors import UserError
    from common.export import edge_missing, export, load_onnx
    from common.predict import load_trained
    from common.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", default=",".join(TINY))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)  # the table, not the training logs
    quiet = contextlib.redirect_stdout(io.StringIO())
    formats = ["onnx", "pt2"] + ([] if edge_missing() else ["executorch"])
    print(
        f"{'project':<10}{'format':<11}{'max diff':>10}{'MB':>7}"
        f"{'eager b1':>10}{'ORT b1':>8}{'eager b16':>11}{'ORT b16':>9}  (ms per call, 1 thread)"
    )
    for project in args.projects.split(","):
        with TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cfg = compose_config(
                tmp / "run", [f"project={project}", *TINY[project], *FEW_STEPS, *QUIET]
            )
            with quiet:
                train(cfg)
            ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
            overrides = [f"project={project}", f"ckpt_path={ckpt}"]
            model = load_trained(compose_config(tmp, overrides, "export"), str(ckpt), Exports, "")
            spec = model.export_spec()
            for fmt in formats:
                out = tmp / f"model.{ {'executorch': 'pte'}.get(fmt, fmt) }"
                words = [*overrides, f"format={fmt}", f"output={out}"]
                try:
                    with quiet:
                        export(compose_config(tmp, words, "export"))
                except UserError as err:
                    print(f"{project:<10}{fmt:<11}refused: {str(err)[:150]}", flush=True)
                    continue
                meta = json.loads(Path(f"{out}.json").read_text())
                line = f"{project:<10}{fmt:<11}{meta['parity']['max_abs_diff']:>10.1e}"
                line += f"{out.stat().st_size / 1e6:>7.2f}"
                if fmt == "onnx":
                    ort = load_onnx(out, threads=1)
                    with torch.inference_mode():
                        for n in (1, 16):
                            inputs = spec.batch_of(n)
                            line += f"{ms_per_call(spec.eager, inputs):>{10 if n == 1 else 11}.2f}"
                            line += f"{ms_per_call(ort, inputs):>{8 if n == 1 else 9}.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
