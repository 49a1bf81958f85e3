"""Export a trained model: `make export PROJECT=<name> ckpt_path=<file|last> format=onnx|pt2|executorch`.

The model is rebuilt from its checkpoint (as `make predict` does) and asked for its
`ExportSpec` (the `Exports` capability): the module to trace, with whatever preprocessing the
model owns inside it, example inputs, and the dimensions that vary (the batch, a text's length).
It is traced once with `torch.export` (dynamic dimensions as `torch.export.Dim`), then written as
ONNX (`torch.onnx.export(dynamo=True)`, one file), as a `torch.export` program (.pt2) or as an
ExecuTorch program (.pte, XNNPACK; the optional `.[edge]` install). TorchScript is not offered:
it is deprecated upstream.

Parity: the written file is loaded back (onnxruntime, `torch.export.load`, ExecuTorch's runtime)
and run against the eager module on real inputs (the first validation batch of the checkpoint's
own data; `parity_data=false`: random inputs only) and on random inputs at batch sizes 1, 7 and
`max_batch` (and other text lengths): the largest difference is printed, and an export above
`tolerance` is refused (the file removed). A JSON description (inputs, outputs, preprocessing,
class names, the checkpoint) is written beside the file.
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
from common.errors import UserError, first_line
from common.predict import checkpoint_path, load_trained, output_beside
from common.runs import checkpoint_data, checkpoint_datamodule, load_checkpoint, saved_config

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "executorch": ".pte"}
# The largest batch a graph takes unless max_batch= says: ExecuTorch 1.5.1's XNNPACK programs
# with a dynamic batch fail above 15 on convolutions (measured; a linear layer runs to any size).
DEFAULT_MAX_BATCH = {"onnx": 64, "pt2": 64, "executorch": 15}
# Integer outputs (a detector's classes, an argmax) must agree but for this fraction: where two
# classes' scores tie to within float rounding, runtimes may pick either.
MAX_FLIPPED = 1e-3


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
    examples: tuple[torch.Tensor, ...]  # one example per input, batch >= 2
    inputs: list[Tensor]
    outputs: list[Tensor]
    preprocessing: str  # what a caller does before the graph, and what the graph does itself
    class_names: list[str] | None = None
    # What `make serve`'s POST /predict takes: "image" or "audio" (a file), "text"; None: the
    # graph is not served (a generator's noise is no request).
    request: str | None = None
    # The (smallest, largest) size of each named dimension but the batch (a text's length:
    # from 3, so that no size-1 broadcast specializes the graph, to the tokenizer's longest).
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (inputs of one size) -> the same inputs at other sizes of the named dimensions: what the
    # parity check runs besides the examples. None: the examples' first items, repeated.
    resize: object = None
    # A padding value per input, for batching inputs of different lengths (`collate`).
    pad_values: tuple = (0,)
    # The model as trained, when `module` is a traceable twin of it (same function, other ops):
    # what the parity check compares against and `make serve backend=torch` runs.
    reference: nn.Module | None = None

    @property
    def eager(self) -> nn.Module:
        return self.reference if self.reference is not None else self.module

    def dynamic_shapes(self, max_batch: int) -> tuple:
        """torch.export's per-input {dim: Dim} for every dimension named by a string."""
        dims: dict[str, torch.export.Dim] = {}
        shapes = []
        for spec in self.inputs:
            shapes.append(
                {
                    i: dims.setdefault(size, dim(size, *self.limits.get(size, (1, max_batch))))
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
            "request": self.request,
        }

    def collate(self, items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """Inputs of single items (no batch dimension) -> one batch: each input padded with its
        `pad_values` to the graph's fixed sizes, or to the largest item (and at least the
        smallest size the graph takes) along the dimensions that vary."""
        batch = []
        for i, spec in enumerate(self.inputs):
            column = [item[i] for item in items]
            sizes = []
            for d, size in enumerate(spec.shape[1:]):
                longest = max(x.shape[d] for x in column)
                sizes.append(
                    size if isinstance(size, int) else max(longest, self.limits.get(size, (1,))[0])
                )
            padded = []
            for x in column:
                # F.pad's (left, right) pairs run from the last dimension back.
                widths = [w for d in reversed(range(x.ndim)) for w in (0, sizes[d] - x.shape[d])]
                if widths and min(widths) < 0:  # `check_item` refuses such an item first
                    raise ValueError(
                        f"{spec.name} {tuple(x.shape)} is larger than the graph's {sizes}"
                    )
                padded.append(
                    torch.nn.functional.pad(x, widths, value=self.pad_values[i])
                    if any(widths)
                    else x
                )
            batch.append(torch.stack(padded))
        return tuple(batch)

    def check_item(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """A UserError unless one item's inputs (no batch dimension) fit the graph: sizes no
        larger than its fixed sizes or the limits of the dimensions that vary."""
        for x, spec in zip(inputs, self.inputs, strict=True):
            for d, size in enumerate(spec.shape[1:]):
                high = size if isinstance(size, int) else self.limits.get(size, (1, None))[1]
                if high is not None and x.shape[d] > high:
                    raise UserError(
                        f"{spec.name} has {x.shape[d]} along {size}: the graph takes at most {high}"
                    )

    def batch_of(self, n: int, source: tuple[torch.Tensor, ...] | None = None) -> tuple:
        """Inputs of batch size n made of `source`'s items (the examples by default), cycled."""
        source = source or self.examples
        index = torch.arange(n) % len(source[0])
        return tuple(x[index] for x in source)


def dim(name: str, low: int, high: int) -> torch.export.Dim:
    return torch.export.Dim(name, min=low, max=high)


class Generator(nn.Module):
    """Latent codes (B, Z) -> images (B, C, H, W) in [0, 1]: `owner.<decode>` (a generator's
    forward, an autoencoder's decode; `owner` the net alone, so that nothing else lands in the file)
    then `to_unit` (the map of its output range onto [0, 1])."""

    def __init__(self, owner: nn.Module, decode: str, to_unit):
        super().__init__()
        self.owner, self.decode, self.to_unit = owner, decode, to_unit

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_unit(getattr(self.owner, self.decode)(z))


def generator_spec(owner: nn.Module, decode: str, to_unit, latent_dim: int, what: str):
    """The ExportSpec of a generative model's sampling path: z ~ N(0, I) (B, Z) -> images."""
    module = Generator(owner, decode, to_unit).eval()
    z = torch.randn(2, latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        c, h, w = module(z).shape[1:]
    return ExportSpec(
        module=module,
        examples=(z,),
        inputs=[Tensor("z", "float32", ["batch", latent_dim], "latent codes, drawn from N(0, I)")],
        outputs=[Tensor("images", "float32", ["batch", c, h, w], "values in [0, 1]")],
        preprocessing=f"none: draw z from a standard normal; {what}",
    )


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


def as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


def load_onnx(path: Path, threads: int = 1, spin: bool = True):
    """A function running the ONNX file on torch tensors with onnxruntime (CPU); `threads`: its
    intra-op threads (0: one per core); `spin`: whether idle threads busy-wait for work (the
    fastest for back-to-back calls, but CPU a server's other threads then lack)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
            return as_list(module(*inputs))

    return run


def edge_missing() -> str | None:
    """Why `format=executorch` cannot run here, or None when it can."""
    try:
        import executorch.exir  # noqa: F401  (16-30 s on first import)
        import executorch.runtime  # noqa: F401
    except ImportError:
        return "format=executorch needs ExecuTorch: pip install -e '.[edge]' (about 300 MB)"
    return None


def write_executorch(program: torch.export.ExportedProgram, path: Path) -> None:
    """The program lowered to XNNPACK (CPU kernels for phones and laptops) as one .pte file."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path.write_bytes(edge.to_executorch().buffer)


def load_executorch(path: Path):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        return as_list(method.execute([x.contiguous() for x in inputs]))

    return run


LOADERS = {"onnx": load_onnx, "pt2": load_pt2, "executorch": load_executorch}


def check_parity(spec: ExportSpec, run, inputs: list[tuple]) -> float:
    """The largest absolute difference between the exported graph (`run`) and the eager module
    over `inputs` (a list of input tuples)."""
    worst = 0.0
    with torch.inference_mode():
        for args in inputs:
            eager = as_list(spec.eager(*args))
            try:
                exported = run(*args)
            except Exception as err:  # a runtime refusing a size it was exported for
                shapes = ", ".join(str(tuple(x.shape)) for x in args)
                raise UserError(
                    f"the exported graph fails on inputs {shapes}: {first_line(err)}"
                ) from err
            for ours, theirs in zip(eager, exported, strict=True):
                if ours.shape != theirs.shape:
                    raise UserError(
                        f"the exported graph gives {tuple(theirs.shape)} where the model gives "
                        f"{tuple(ours.shape)}: not written"
                    )
                if ours.dtype.is_floating_point:
                    diff = (ours.float().cpu() - theirs.float()).abs().max().item()
                else:  # labels: an argmax may flip where two scores tie to within rounding
                    flipped = (ours.cpu() != theirs).float().mean().item()
                    diff = 0.0 if flipped <= MAX_FLIPPED else float("inf")
                worst = max(worst, diff)
    return worst


def real_inputs(cfg: DictConfig, model, spec: ExportSpec, ckpt_path: str, n: int) -> tuple:
    """Up to n inputs of the checkpoint's own validation data, as the graph takes them."""
    checkpoint = load_checkpoint(ckpt_path)
    data = checkpoint_data(cfg, saved_config(cfg, checkpoint, ckpt_path))
    try:
        datamodule = checkpoint_datamodule(data, checkpoint)
        datamodule.setup("validate")
        batch = next(iter(datamodule.val_dataloader()))
    except UserError as err:
        raise UserError(
            f"the parity check reads the checkpoint's validation data, and: {err} "
            "(parity_data=false checks on random inputs only)"
        ) from err
    inputs = [x[:n].cpu() for x in model.export_inputs(batch)]
    return spec.collate(list(zip(*inputs, strict=True)))  # padded as the graph takes them


def trace(spec: ExportSpec, max_batch: int) -> torch.export.ExportedProgram:
    """`spec.module` traced by torch.export with its dynamic dimensions; a UserError (one line)
    for a net it cannot trace."""
    try:
        return torch.export.export(
            spec.module, spec.examples, dynamic_shapes=spec.dynamic_shapes(max_batch)
        )
    except Exception as err:  # say which net, not 200 lines
        raise UserError(
            f"torch.export could not trace {type(spec.module).__name__}: {first_line(err)}"
        ) from err


def write(fmt: str, spec: ExportSpec, program: torch.export.ExportedProgram, path: Path) -> None:
    """The traced program written as `fmt`; a UserError (and no file) for an op the format
    cannot hold."""
    try:
        if fmt == "onnx":
            write_onnx(spec, program, path)
        elif fmt == "pt2":
            torch.export.save(program, str(path))
        else:
            write_executorch(program, path)
    except Exception as err:  # say which, not 200 lines
        path.unlink(missing_ok=True)
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        raise UserError(
            f"{fmt} cannot hold {type(spec.module).__name__}: {type(err).__name__}: "
            + " ".join(lines[:3])
        ) from err


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint `cfg.ckpt_path` as `cfg.format`; return the written file's path."""
    fmt = cfg.format
    if fmt not in FORMATS:
        raise UserError(f"format={fmt} is not one of {', '.join(FORMATS)}")
    max_batch = cfg.max_batch if cfg.max_batch is not None else DEFAULT_MAX_BATCH[fmt]
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 2:
        raise UserError(f"max_batch={max_batch} must be a whole number >= 2")
    if cfg.device != "cpu":
        raise UserError(f"device={cfg.device}: make export traces on the CPU (device=cpu)")
    require_project(cfg.name, Exports, "be exported")  # before any file is looked at
    if fmt == "executorch" and (why := edge_missing()):
        raise UserError(why)
    ckpt_path = Path(checkpoint_path(cfg))
    from common.compress import int8_method  # (it imports this module)

    if method := int8_method(load_checkpoint(str(ckpt_path))):
        raise UserError(
            f"{ckpt_path} holds torch's int8 layers (make compress method={method}), "
            "which torch.export cannot trace: export the float checkpoint it came from, or make "
            "compress method=onnx-int8 for an int8 ONNX graph"
        )
    path = output_beside(cfg, ckpt_path, ckpt_path.stem + FORMATS[fmt], FORMATS[fmt])
    model = load_trained(cfg, str(ckpt_path), Exports, "be exported")
    spec = model.export_spec()
    spec.module.eval(), spec.eager.eval()
    # Batch sizes up to max_batch only: a .pt2 or .pte program refuses larger ones.
    sizes = sorted({1, 2, min(7, max_batch), max_batch})
    checks = [spec.examples, *(spec.batch_of(n) for n in sizes)]
    if spec.resize is not None:  # other lengths too
        checks += [spec.resize(spec.batch_of(min(3, max_batch)))]
    on_data = cfg.parity_data and hasattr(model, "export_inputs")  # generators: noise is real
    if on_data:
        checks.append(real_inputs(cfg, model, spec, str(ckpt_path), n=min(8, max_batch)))
    start = time.perf_counter()
    write(fmt, spec, trace(spec, max_batch), path)
    try:
        worst = check_parity(spec, LOADERS[fmt](path), checks)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    if worst > cfg.tolerance:
        path.unlink()
        raise UserError(
            f"the exported graph differs from the model by up to {worst:.2e} (tolerance="
            f"{cfg.tolerance}): not written"
        )
    meta = {"project": cfg.name, "format": fmt, **spec.description()}
    meta |= {"max_batch": max_batch, "checkpoint": str(ckpt_path.resolve())}
    meta["parity"] = {
        "max_abs_diff": worst,
        "on": ("the checkpoint's validation data and " if on_data else "")
        + f"random inputs at batch sizes {', '.join(map(str, sizes))}",
    }
    extras = getattr(model, "export_files", dict)()  # what a runtime needs besides the graph
    for name, text in extras.items():
        path.with_name(f"{path.stem}.{name}").write_text(text)
    meta["files"] = [f"{path.stem}.{name}" for name in extras]
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    seconds = time.perf_counter() - start
    size = path.stat().st_size / 1e6
    print(
        f"exported in {seconds:.1f} s ({size:.1f} MB); largest difference from the model: {worst:.2e}"
    )
    print(path)
    return path


@entry("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
