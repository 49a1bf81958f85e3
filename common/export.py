"""Export a trained model: `make export PROJECT=<name> ckpt_path=<file|last> format=onnx|pt2`.

The model is rebuilt from its checkpoint (as `make predict` does) and asked for its
`ExportSpec` (the `Exports` capability): the module to trace, with whatever preprocessing the
model owns inside it, example inputs, and the dimensions that vary (the batch, a text's length).
It is traced once with `torch.export` (dynamic dimensions as `torch.export.Dim`), then written
as ONNX (`torch.onnx.export(dynamo=True)`, one file) or as a `torch.export` program (.pt2). The
written file is loaded back and run on inputs of other sizes than the example's (onnxruntime for
ONNX, `torch.export.load` for .pt2) against the eager module: the largest difference is printed,
and an export above `tolerance` is refused (the file removed). A JSON description (inputs,
outputs, preprocessing, class names, the checkpoint) is written beside the file.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from common.capabilities import Exports, require_project
from common.entry import entry
from common.errors import UserError
from common.predict import checkpoint_path, load_trained, output_beside

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}


@dataclass
class Tensor:
    """One input or output of an exported graph: its name, dtype, shape (names for the sizes that
    vary, numbers for fixed ones) and what it holds."""

    name: str
    dtype: str
    shape: list
    meaning: str


@dataclass
class ExportSpec:
    module: nn.Module  # eval mode; inputs -> outputs, as described below
    examples: tuple[torch.Tensor, ...]  # one example per input
    inputs: list[Tensor]
    outputs: list[Tensor]
    preprocessing: str  # what a caller does before the graph, and what the graph does itself
    class_names: list[str] | None = None
    # What `check_parity` runs besides the examples: inputs with other sizes of the dynamic dims.
    check_inputs: list[tuple[torch.Tensor, ...]] = field(default_factory=list)

    def dynamic_shapes(self) -> tuple:
        """torch.export's per-input {dim: Dim} for every dimension named by a string."""
        dims: dict[str, torch.export.Dim] = {}
        shapes = []
        for spec in self.inputs:
            shapes.append(
                {
                    i: dims.setdefault(size, torch.export.Dim(size, min=1, max=4096))
                    for i, size in enumerate(spec.shape)
                    if isinstance(size, str)
                }
            )
        return tuple(shapes)

    def description(self) -> dict:
        return {
            "inputs": [vars(t) for t in self.inputs],
            "outputs": [vars(t) for t in self.outputs],
            "preprocessing": self.preprocessing,
            "class_names": self.class_names,
        }


def write_onnx(spec: ExportSpec, program: torch.export.ExportedProgram, path: Path) -> None:
    torch.onnx.export(
        program,
        (),
        str(path),
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dynamo=True,
        external_data=False,  # one file
        verbose=False,
    )


def load_onnx(path: Path):
    """A function running the ONNX file on torch tensors with onnxruntime (CPU, 1 thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {n: x.cpu().numpy() for n, x in zip(names, inputs, strict=True)}
        return [torch.from_numpy(y) for y in session.run(None, feeds)]

    return run


def load_pt2(path: Path):
    module = torch.export.load(str(path)).module()

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            out = module(*inputs)
        return list(out) if isinstance(out, tuple | list) else [out]

    return run


def check_parity(spec: ExportSpec, run) -> float:
    """The largest absolute difference between the exported graph (`run`) and the eager module
    over the examples and `spec.check_inputs`."""
    worst = 0.0
    with torch.inference_mode():
        for inputs in [spec.examples, *spec.check_inputs]:
            eager = spec.module(*inputs)
            eager = list(eager) if isinstance(eager, tuple | list) else [eager]
            for ours, theirs in zip(eager, run(*inputs), strict=True):
                worst = max(worst, (ours.float().cpu() - theirs.float()).abs().max().item())
    return worst


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint `cfg.ckpt_path` as `cfg.format`; return the written file's path."""
    fmt = cfg.format
    if fmt not in FORMATS:
        raise UserError(f"format={fmt} is not one of {', '.join(FORMATS)}")
    require_project(cfg.name, Exports, "be exported")  # before any file is looked at
    ckpt_path = Path(checkpoint_path(cfg))
    path = output_beside(cfg, ckpt_path, ckpt_path.stem + FORMATS[fmt], FORMATS[fmt])
    model = load_trained(cfg, str(ckpt_path), Exports, "be exported")
    spec = model.export_spec()
    spec.module.eval()
    start = time.perf_counter()
    try:
        program = torch.export.export(
            spec.module, spec.examples, dynamic_shapes=spec.dynamic_shapes()
        )
    except Exception as err:  # a net torch.export cannot trace: say which, not 200 lines
        raise UserError(
            f"torch.export could not trace {type(spec.module).__name__}: {err}"
        ) from err
    if fmt == "onnx":
        write_onnx(spec, program, path)
        run = load_onnx(path)
    else:
        torch.export.save(program, str(path))
        run = load_pt2(path)
    worst = check_parity(spec, run)
    if worst > cfg.tolerance:
        path.unlink()
        raise UserError(
            f"the exported graph differs from the model by up to {worst:.2e} (tolerance="
            f"{cfg.tolerance}): not written"
        )
    meta = {**spec.description(), "format": fmt, "checkpoint": str(ckpt_path), "project": cfg.name}
    meta["parity_max_abs_diff"] = worst
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    seconds = time.perf_counter() - start
    print(f"exported in {seconds:.1f} s; largest difference from the model: {worst:.2e}")
    print(path)
    return path


@entry("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
