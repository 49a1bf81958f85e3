"""Compress a trained classifier: `make compress PROJECT=<name> ckpt_path=<file|last> method=...`.

Methods, by family of compression (`method=null` picks `static` for nets made mostly of
convolutions that torch.fx can trace, `dynamic` for the others: `default_method`):

- `dynamic`: int8 weights for Linear, LSTM and GRU layers, activations quantized on the fly at
  each call; embeddings' rows stored as 8-bit too. No data needed.
- `static`: int8 weights and activations through torch.ao's FX graph mode: BatchNorm folded into
  the convolutions, activation ranges observed on `calibration_batches` training batches.
- `qat`: quantization-aware training: the same int8 graph with fake quantization in it, fine-tuned
  `steps` steps so the weights learn to live with the rounding; `compare=true` adds `static`'s
  row for the same checkpoint.
- `prune`: structured pruning with torch-pruning: the `amount` of each layer's channels with the
  smallest L2 norms are removed (and whatever depends on them), then `steps` fine-tuning steps.
- `distill`: a smaller student, the checkpoint's model with the `model.<key>=` overrides of this
  command line (`model.net.width=8`), trained `steps` steps on the teacher's softened logits
  (`temperature`, `alpha`); `compare=true` trains the same student alone as well.
- `onnx-int8`: the `make export` ONNX graph, quantized by onnxruntime (static QDQ with calibration
  for conv nets, dynamic otherwise).

Why torch.ao's eager/FX quantization, which warns that it will be removed: on x86 CPUs without
VNNI it is still the only int8 path here that is faster than float (`README.md`, Compress;
`benchmarks/quantize.py` measures its successor, torch.export + pt2e, against it).

The compressed model is written beside the checkpoint as `<stem>.<method>.ckpt`: the
checkpoint's config and data spec, the compressed weights (without optimizer state) and a
`compression` record saying how to rebuild the structure they fit, so `make eval`, `make predict`
and `make serve backend=torch` load it like any checkpoint (`rebuild`), and `make export` where
the format can hold it (pruned and distilled models: yes; int8 ones: no). `onnx-int8` writes
`<stem>.int8.onnx`. Then a table row per model: parameters, size, CPU latency at batch 1 and 32
and test accuracy, each beside the original's.
"""

import copy
import io
import itertools
import logging
import statistics
import time
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from common.capabilities import Compresses, require, require_project
from common.entry import entry
from common.errors import UserError, first_line, weights_mismatch
from common.instantiate import instantiate_model
from common.integrity import KEY, digest
from common.predict import checkpoint_path, output_beside
from common.runs import (
    checkpoint_data,
    checkpoint_datamodule,
    checkpoint_model,
    load_checkpoint,
    load_weights,
    saved_config,
    typed_keys,
)

METHODS = ("dynamic", "static", "qat", "prune", "distill", "onnx-int8")
# What each method leaves the net as: how `rebuild` makes a fresh model fit the saved weights.
STRUCTURES = {
    "dynamic": "dynamic-int8",
    "static": "static-int8",
    "qat": "static-int8",
    "prune": "pruned",
    "distill": "float",
}
BATCHES = (1, 32)  # the batch sizes latency is measured at
ROUNDS = 5  # the models take turns this many times while their latency is measured

# torch.ao.quantization warns on every layer that it is deprecated (said once, in the docstring
# above and in the README, instead).
DEPRECATIONS = (
    ".*torch.ao.quantization is deprecated.*",
    ".*quantized tensor creation functions.*",
    ".*reduce_range will be deprecated.*",
)


def quiet_deprecations() -> None:
    for message in DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)


# --- knowledge distillation ----------------------------------------------------------------------


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) +
    (1 - alpha) * cross-entropy(student, labels), for logits (B, K) and labels (B,).

    A temperature T > 1 softens both distributions, so the teacher's ranking of the wrong classes
    (a 4 looks more like a 9 than like a 0) carries signal; the T^2 keeps the soft term's
    gradients on the scale of the hard term's as T grows. KL is averaged over the batch.
    """
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student, labels)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


# --- quantization ----------------------------------------------------------------------------------


def quantize_dynamic(net: nn.Module) -> nn.Module:
    """int8 weights for Linear/LSTM/GRU (activations quantized per call), 8-bit embedding rows."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        quantize_dynamic,
    )

    layers = dict.fromkeys((nn.Linear, nn.LSTM, nn.GRU), default_dynamic_qconfig)
    layers |= dict.fromkeys((nn.Embedding, nn.EmbeddingBag), float_qparams_weight_only_qconfig)
    return quantize_dynamic(net.eval(), layers)


def prepare_static(net: nn.Module, example: tuple, qat: bool = False) -> nn.Module:
    """The net as an FX graph with observers (or fake quantization, `qat`) after each layer;
    BatchNorm folded into the convolution before it. x86 settings: activations use 7 of their 8
    bits (`reduce_range`), which CPUs without VNNI need to avoid overflowing 16-bit sums."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    try:
        if qat:
            return prepare_qat_fx(net.train(), get_default_qat_qconfig_mapping("x86"), example)
        return prepare_fx(net.eval(), get_default_qconfig_mapping("x86"), example)
    except Exception as err:  # control flow FX cannot trace (a data-dependent branch, say)
        raise UserError(
            f"static int8 traces the net with torch.fx, which fails on {type(net).__name__}: "
            f"{first_line(err)[:200]} (method=dynamic quantizes without tracing)"
        ) from err


def convert_static(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    return convert_fx(prepared.eval())


def quantize_static(net: nn.Module, batches: list[tuple]) -> nn.Module:
    """int8 weights and activations: observe the activations' ranges on `batches` (the net's
    inputs), then convert each layer to its int8 kernel."""
    prepared = prepare_static(net, batches[0])
    with torch.inference_mode():
        for inputs in batches:
            prepared(*inputs)
    return convert_static(prepared)


def has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())


# --- structured pruning ----------------------------------------------------------------------------


def default_method(model) -> str:
    """`static` when convolutions hold most of the net's weights (a conv net, not a
    transformer with a patch convolution) and torch.fx can trace it; `dynamic` otherwise."""
    weights = [
        (m, m.weight.numel())
        for m in model.net.modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    conv = sum(n for m, n in weights if isinstance(m, nn.modules.conv._ConvNd))
    if conv <= 0.5 * sum(n for _, n in weights):
        return "dynamic"
    from torch.fx import symbolic_trace

    try:
        symbolic_trace(model.net)  # reads the net, changes nothing
    except Exception:  # control flow fx cannot follow (a device test, a shape branch)
        return "dynamic"
    return "static"


def check_prunable(net: nn.Module) -> None:
    if not has_conv(net):
        raise UserError(
            f"method=prune removes channels of convolutions; {type(net).__name__} has none "
            "(method=dynamic or method=distill shrink it)"
        )


def prune_channels(net: nn.Module, example: tuple, amount: float) -> nn.Module:
    """Remove `amount` of the channels of every convolution and hidden linear layer (those with
    the smallest L2 norm), and the matching slices of whatever reads them (BatchNorm, the next
    layer, a residual sum's other branch: torch-pruning's dependency graph finds them). The last
    Linear keeps its outputs: they are the classes. In place; returns the net."""
    import torch_pruning as tp

    check_prunable(net)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    try:  # tracing the net's dependency graph
        pruner = tp.pruner.MagnitudePruner(
            net.eval(),
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=amount,
            ignored_layers=linears[-1:],
        )
        pruner.step()
    except Exception as err:  # a layer torch-pruning cannot follow (custom attention, say)
        raise UserError(
            f"torch-pruning could not prune {type(net).__name__}: {first_line(err)[:200]} "
            "(method=distill or method=dynamic shrink it)"
        ) from err
    return net


def fit_shapes(model: nn.Module, state_dict: dict) -> None:
    """Resize `model`'s layers to the (pruned) shapes of `state_dict`'s tensors: a fresh model
    built from the config, made to fit weights that torch-pruning slimmed down."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        resized = False
        for key, tensor in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]:
            saved = state_dict.get(prefix + key)
            if saved is None or tensor is None or saved.shape == tensor.shape:
                continue
            empty = torch.empty(saved.shape, dtype=tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                setattr(module, key, nn.Parameter(empty, requires_grad=tensor.requires_grad))
            else:
                setattr(module, key, empty)
            resized = True
        if not resized:
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * (1 if depthwise else module.groups)
            if depthwise:
                module.groups = module.in_channels = module.out_channels
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            module.num_features = module.running_mean.shape[0]
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = tuple(module.weight.shape)


# --- weights that torch's safe loader reads --------------------------------------------------------


def _quantized_rnns(model: nn.Module):
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase

    return [(n, m) for n, m in model.named_modules() if isinstance(m, RNNBase)]


def portable_state(model: nn.Module) -> dict:
    """`model.state_dict()` in tensors `torch.load(weights_only=True)` accepts: a dynamically
    quantized LSTM/GRU keeps its weights as packed C++ objects, which the safe loader refuses;
    they are stored as their int8 weights and float biases instead (`load_portable`)."""
    state = model.state_dict()
    for name, rnn in _quantized_rnns(model):
        packed = f"{name}._all_weight_values."
        for key in [k for k in state if k.startswith(packed)]:
            del state[key]
        for tensors in rnn._weight_bias().values():  # {"weight": {...}, "bias": {...}}
            for key, tensor in tensors.items():  # weight_ih_l0 (int8), bias_ih_l0 (float), ...
                state[f"{name}._weight_bias.{key}"] = tensor.detach()
    return state


def load_portable(model: nn.Module, state: dict) -> None:
    """Load what `portable_state` saved (strictly: every weight must fit)."""
    # A copy that keeps `_metadata`: the layers' format versions, which int8 layers read.
    state = copy.copy(state)
    for name, rnn in _quantized_rnns(model):
        prefix = f"{name}._weight_bias."
        keys = [k for k in state if k.startswith(prefix)]
        rnn.set_weight_bias({k[len(prefix) :]: state.pop(k) for k in keys})
        packed = f"{name}._all_weight_values."
        state |= {
            k: v for k, v in rnn.state_dict(prefix=f"{name}.").items() if k.startswith(packed)
        }
    model.load_state_dict(state)


def example_inputs(record: dict) -> tuple:
    """Zeros of the shapes and dtypes (a batch of 2) the net took when it was compressed."""
    return tuple(
        torch.zeros((2, *shape), dtype=getattr(torch, dtype)) for shape, dtype in record["inputs"]
    )


def int8_method(checkpoint: dict) -> str | None:
    """The `make compress` method when the checkpoint holds torch.ao's int8 layers (CPU
    kernels that torch.export cannot trace), else None."""
    record = checkpoint.get("compression") or {}
    return record["method"] if record.get("structure", "").endswith("int8") else None


def rebuild(model, checkpoint: dict) -> None:
    """Make a freshly built `model` fit a compressed checkpoint's weights, and load them: the net
    quantized (the values the calibration finds are overwritten by the saved ones) or resized to
    the pruned shapes, as the checkpoint's `compression` record says."""
    record, state = checkpoint["compression"], checkpoint["state_dict"]
    with warnings.catch_warnings():  # quantizing a fresh net warns per layer (docstring above)
        quiet_deprecations()
        rebuild_structure(model, record, state)
    try:
        load_portable(model, state)
    except (RuntimeError, KeyError) as err:
        raise UserError(
            f"the compressed weights ({record['method']}) do not fit the model "
            f"({weights_mismatch(err)})"
        ) from None


def rebuild_structure(model, record: dict, state: dict) -> None:
    structure = record["structure"]
    if structure == "dynamic-int8":
        model.net = quantize_dynamic(model.net)
    elif structure == "static-int8":
        model.net = quantize_static(model.net, [example_inputs(record)])
    elif structure == "pruned":
        fit_shapes(model, state)
    elif structure != "float":
        raise UserError(f"unknown compression {structure!r}: written by a newer version?")


# --- measuring -------------------------------------------------------------------------------------


def rows_of(inputs: tuple, n: int) -> tuple:
    """A batch of n made of `inputs`' items, cycled."""
    index = torch.arange(n) % len(inputs[0])
    return tuple(x[index] for x in inputs)


def serialized_mb(state: dict) -> float:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes / 1e6


def tensors_in(value):
    """The tensors in a state dict's value (dynamic int8 Linear layers keep (weight, bias) tuples)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from tensors_in(item)


def count(state: dict) -> tuple[int, float]:
    """(numbers stored, fraction of them that are zero) over a state dict's float and int8
    tensors (counters and zero points left out)."""
    total = zeros = 0
    for value in state.values():
        for tensor in tensors_in(value):
            if tensor.dtype in (torch.int64, torch.bool):
                continue
            values = tensor.dequantize() if tensor.is_quantized else tensor
            total += values.numel()
            zeros += int((values == 0).sum())
    return total, zeros / max(total, 1)


# --- fine-tuning and distillation ------------------------------------------------------------------


class Tuning(L.LightningModule):
    """Trains `student` (a classifier) for a few steps: on cross-entropy with the labels (with
    the checkpoint's label smoothing), or with a `teacher`, on `distillation_loss`. `lr_scale`:
    the student's optimizer starting at that fraction of its learning rate and decaying to zero
    on a cosine (fine-tuning trained weights); None: the student's own optimizer and schedule
    (training from scratch)."""

    def __init__(
        self,
        student: L.LightningModule,
        teacher: L.LightningModule | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
        lr_scale: float | None = None,
    ):
        super().__init__()
        self.student, self.teacher = student, teacher
        if teacher is not None:
            teacher.requires_grad_(False)
        self.temperature, self.alpha, self.lr_scale = temperature, alpha, lr_scale

    def training_step(self, batch, batch_idx):
        inputs, labels = self.student.unpack(batch)
        logits = self.student(*inputs)  # (B, K)
        if self.teacher is None:
            smoothing = getattr(self.student, "label_smoothing", 0.0)  # the checkpoint's recipe
            loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        else:
            with torch.no_grad():
                teacher = self.teacher(*inputs)
            loss = distillation_loss(logits, teacher, labels, self.temperature, self.alpha)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        if self.lr_scale is None:
            return self.student.configure_optimizers()
        factory = self.student.optimizer_factory
        lr = getattr(factory, "keywords", {}).get("lr")
        if lr is None:
            raise UserError("fine-tuning scales the checkpoint's optimizer lr, and it has none")
        optimizer = factory(params=self.student.optimizer_params(), lr=lr * self.lr_scale)
        # Down to zero by the last step: a trained net moved by a constant rate ends wherever the
        # last steps' noise left it (README, Compress: QAT lost 1.6 more points that way).
        steps = self.trainer.max_steps
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}


def quiet_trainer(callbacks=(), **kwargs) -> L.Trainer:
    """A CPU Trainer that writes nothing: no logger, no checkpoints, no summary."""
    from common.callbacks import ProgressBar

    info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = info.level
    info.setLevel(logging.WARNING)  # not "GPU available: False" before every table row
    try:
        return L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[ProgressBar(), *callbacks],
            **kwargs,
        )
    finally:
        info.setLevel(level)


def tune(cfg: DictConfig, tuning: Tuning, datamodule, clip: float | None, callbacks=()) -> None:
    trainer = quiet_trainer(
        callbacks=list(callbacks),
        max_steps=cfg.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=clip,
    )
    tuning.train()  # Lightning keeps the modes it finds: the student trains (dropout, BN stats)
    if tuning.teacher is not None:
        tuning.teacher.eval()  # the teacher answers as it would at test time
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(val_dataloader|validation_step).*")
        warnings.filterwarnings("ignore", message=".*module.s. in eval mode.*")  # the teacher
        trainer.fit(tuning, datamodule=datamodule)


def test_accuracy(model: L.LightningModule, datamodule, cfg: DictConfig) -> float:
    """`test/acc` of `model` on the test split, as `make eval` reports it."""
    limit = {} if cfg.test_batches is None else {"limit_test_batches": cfg.test_batches}
    trainer = quiet_trainer(**limit)
    trainer.test(model.eval(), datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics["test/acc"])


def first_batch(datamodule, split: str):
    """The first batch of a split, transferred as training would (normalized, no augmentation)."""
    loader = datamodule.train_dataloader() if split == "train" else datamodule.test_dataloader()
    return datamodule.on_after_batch_transfer(next(iter(loader)), 0)


def batches(datamodule, n: int):
    """Up to n training batches, transferred (normalized, not augmented: no trainer is fitting)."""
    for batch in itertools.islice(datamodule.train_dataloader(), n):
        yield datamodule.on_after_batch_transfer(batch, 0)


def net_inputs(model, inputs: tuple) -> tuple:
    """What `model(*inputs)` hands its `net` (after a model's own input transforms)."""
    seen = []
    hook = model.net.register_forward_pre_hook(lambda _, args: seen.append(args))
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        hook.remove()
    return tuple(x.clone() for x in seen[0])


# --- the methods -----------------------------------------------------------------------------------


def static_model(model, datamodule, cfg: DictConfig):
    """`model` with its net quantized to int8 after `calibration_batches` training batches."""
    calibration = [model.unpack(b)[0] for b in batches(datamodule, cfg.calibration_batches)]
    model.net = prepare_static(model.net, net_inputs(model, calibration[0]))
    with torch.inference_mode():
        for inputs in calibration:
            model(*inputs)
    model.net = convert_static(model.net)
    return model


class FreezeQuantization(L.Callback):
    """The usual QAT schedule (PyTorch's quantization tutorial), for a fine-tune: BatchNorm keeps
    the trained statistics from the start (a few steps' batch statistics are noisier than them),
    and the activation ranges stop moving halfway, so the second half trains the weights
    against the rounding they will have."""

    def __init__(self, net: nn.Module, steps: int):
        self.net, self.steps = net, steps

    def on_train_start(self, trainer, pl_module):
        from torch.ao.nn.intrinsic.qat import freeze_bn_stats

        self.net.apply(freeze_bn_stats)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.steps // 2:
            from torch.ao.quantization import disable_observer

            self.net.apply(disable_observer)


def qat_model(model, datamodule, cfg: DictConfig, clip):
    """`model` with fake quantization in its net, fine-tuned `steps` steps, converted to int8."""
    example = net_inputs(model, model.unpack(first_batch(datamodule, "train"))[0])
    teacher = copy.deepcopy(model) if cfg.recover == "distill" else None
    model.net = prepare_static(model.net, example, qat=True)
    schedule = FreezeQuantization(model.net, cfg.steps)
    tuning = Tuning(model, teacher, cfg.temperature, cfg.alpha, lr_scale=cfg.lr_scale)
    tune(cfg, tuning, datamodule, clip, callbacks=[schedule])
    model.net = convert_static(model.net)
    return model


def pruned_model(model, datamodule, cfg: DictConfig, clip):
    """`model` with `amount` of its channels removed, fine-tuned `steps` steps (with
    `recover=distill`, on the unpruned model's soft targets as well as the labels)."""
    example = net_inputs(model, model.unpack(first_batch(datamodule, "train"))[0])
    teacher = copy.deepcopy(model) if cfg.recover == "distill" else None
    prune_channels(model.net, example, cfg.amount)
    if cfg.steps > 0:
        tuning = Tuning(model, teacher, cfg.temperature, cfg.alpha, lr_scale=cfg.lr_scale)
        tune(cfg, tuning, datamodule, clip)
    return model.eval()


def check_student(teacher, student_cfg) -> None:
    """A UserError unless the student the overrides describe is smaller than its teacher."""
    student = instantiate_model(student_cfg)
    sizes = [sum(p.numel() for p in m.net.parameters()) for m in (teacher, student)]
    if sizes[1] >= sizes[0]:
        raise UserError(
            f"the student ({sizes[1]:,} parameters) is not smaller than its teacher "
            f"({sizes[0]:,}): make it so with model.<key>= overrides (e.g. model.net.width=8)"
        )


def distilled_model(teacher, student_cfg, datamodule, cfg: DictConfig, clip, alone=False):
    """A student built from `student_cfg`, trained `steps` steps from scratch with its own
    optimizer and schedule: on the teacher's soft targets, or (`alone`) on the labels only."""
    L.seed_everything(cfg.seed, verbose=False)  # the same initial student either way
    student = instantiate_model(student_cfg)
    student.use_data(teacher.data_spec)
    tuning = Tuning(student, None if alone else teacher, cfg.temperature, cfg.alpha, lr_scale=None)
    tune(cfg, tuning, datamodule, clip)
    return student.eval()


# --- ONNX Runtime's int8 ---------------------------------------------------------------------------


def onnx_int8(model, datamodule, cfg: DictConfig, path: Path, conv: bool) -> tuple[dict, dict]:
    """The `make export` graph as float ONNX and as onnxruntime's int8 (`path`): static QDQ with
    per-channel weights, calibrated on `calibration_batches` training batches, for conv nets;
    dynamic int8 MatMuls otherwise. Returns both graphs' figures: {"onnx fp32": ..., method: ...}."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from common.export import DEFAULT_MAX_BATCH, load_onnx, trace, write

    spec = model.export_spec()
    program = trace(spec, DEFAULT_MAX_BATCH["onnx"])
    names = [t.name for t in spec.inputs]

    def graph_inputs(batch) -> tuple:  # a raw batch -> the graph's inputs, padded as it takes them
        return spec.collate(list(zip(*model.export_inputs(batch), strict=True)))

    class Calibration(CalibrationDataReader):
        def __init__(self):
            raw = itertools.islice(datamodule.train_dataloader(), cfg.calibration_batches)
            self.feeds = (
                {n: x.numpy() for n, x in zip(names, graph_inputs(b), strict=True)} for b in raw
            )

        def get_next(self):
            return next(self.feeds, None)

    with TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        write("onnx", spec, program, fp32)
        graph = onnx.load(str(fp32))
        # The exporter's shape annotations pin intermediate sizes the quantizer then trips over.
        del graph.graph.value_info[:]
        cleared = Path(tmp) / "cleared.onnx"
        onnx.save(graph, str(cleared))
        # The quantizer logs a suggestion to run its pre-processing first, for every file.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            if conv:
                quantize_static(
                    str(cleared),
                    str(path),
                    Calibration(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                )
            else:
                quantize_dynamic(str(cleared), str(path), weight_type=QuantType.QInt8)
        except Exception as err:  # an op the quantizer cannot handle: one line, no half file
            path.unlink(missing_ok=True)
            raise UserError(
                f"onnxruntime could not quantize the graph: {first_line(err)[:300]}"
            ) from err
        finally:
            root.setLevel(level)
        files = {"onnx fp32": fp32, cfg.method: path}
        runs = {name: load_onnx(file, threads=cfg.threads) for name, file in files.items()}
        rows = {
            name: {"params": onnx_params(file), "mb": file.stat().st_size / 1e6}
            for name, file in files.items()
        }
        example = graph_inputs(next(iter(datamodule.test_dataloader())))
        for name, ms in latencies(runs, example, cfg).items():
            rows[name] |= ms
        for name, run in runs.items():
            correct = seen = 0
            for batch in itertools.islice(datamodule.test_dataloader(), cfg.test_batches):
                logits = run(*graph_inputs(batch))[0]  # (B, K)
                labels = model.unpack(batch)[1]
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
            rows[name]["acc"] = correct / max(seen, 1)
    return rows


def onnx_params(path: Path) -> tuple[int, float]:
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    # As `count` counts: float and 8-bit tensors (weights, 8-bit zero points), not int64 shapes.
    stored = [a for a in arrays if a.ndim > 0 and (a.dtype.kind == "f" or a.dtype.itemsize == 1)]
    return sum(a.size for a in stored), 0.0


# --- the command -----------------------------------------------------------------------------------


def sizes(model) -> dict:
    """A torch model's parameters (and the fraction that are zero) and serialized MB."""
    state = portable_state(model)
    return {"params": count(state), "mb": serialized_mb(state)}


def latencies(runs: dict, example: tuple, cfg: DictConfig, rounds: int = ROUNDS) -> dict:
    """{label: {"b1": ms, "b32": ms}}: the median over `repeats` calls of each run at each of
    `BATCHES`, with `threads` threads. The runs take turns, `rounds` times, so that a slow
    stretch of a shared machine falls on all of them rather than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    calls = max(1, cfg.repeats // rounds)
    times = {(label, n): [] for label in runs for n in BATCHES}
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for label, run in runs.items():
                    for n in BATCHES:
                        inputs = rows_of(example, n)
                        for _ in range(2):  # warm up: caches, allocator, lazy init
                            run(*inputs)
                        for _ in range(calls):
                            start = time.perf_counter()
                            run(*inputs)
                            times[label, n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {
        label: {f"b{n}": 1000 * statistics.median(times[label, n]) for n in BATCHES}
        for label in runs
    }


HEADER = (
    "| project | method | params | MB | ms, batch 1 | ms, batch 32 | test accuracy |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def row(project: str, method: str, figures: dict, original: dict | None = None) -> str:
    """One markdown table row; with `original`, each figure followed by its ratio to it."""
    params, zeros = figures["params"]
    cells = [f"{params / 1e3:,.1f}k" + (f" ({zeros:.0%} zero)" if zeros > 0.05 else "")]
    cells += [f"{figures['mb']:.2f}", *(f"{figures[f'b{n}']:.2f}" for n in BATCHES)]
    cells += [f"{figures['acc']:.2%}"]
    if original is not None:
        cells[0] += f" ({original['params'][0] / max(params, 1):.2f}x fewer)"
        cells[1] += f" ({original['mb'] / figures['mb']:.2f}x smaller)"
        for i, n in enumerate(BATCHES, start=2):
            cells[i] += f" ({original[f'b{n}'] / figures[f'b{n}']:.2f}x faster)"
        cells[4] += f" ({100 * (figures['acc'] - original['acc']):+.2f} points)"
    return f"| {project} | {method} | " + " | ".join(cells) + " |"


SETTINGS = ("steps", "lr_scale", "calibration_batches", "amount", "recover", "temperature", "alpha")


def check_settings(cfg: DictConfig) -> None:
    """A UserError for a setting no method can use, before any file is read."""

    def number(key: str, ok, bounds: str, what: str) -> None:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
            raise UserError(f"{key}={value} ({what}) must be a number {bounds}")

    if cfg.method is not None and cfg.method not in METHODS:
        raise UserError(f"method={cfg.method} is not one of {', '.join(METHODS)}")
    if cfg.device != "cpu":
        raise UserError(f"device={cfg.device}: make compress measures int8 on the CPU (device=cpu)")
    for key in ("steps", "calibration_batches", "threads", "repeats"):
        value, low = cfg[key], 0 if key == "steps" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{key}={value} must be a whole number >= {low}")
    if cfg.method in ("qat", "distill") and cfg.steps < 2:
        # QAT's activation ranges are observed while it trains (and frozen halfway).
        raise UserError(f"method={cfg.method} trains: steps={cfg.steps} must be at least 2")
    tests = cfg.test_batches
    if tests is not None and (not isinstance(tests, int) or isinstance(tests, bool) or tests < 1):
        raise UserError(f"test_batches={tests} must be a whole number >= 1, or null (all)")
    if cfg.recover not in ("labels", "distill"):
        raise UserError(f"recover={cfg.recover} is not one of labels, distill")
    if not isinstance(cfg.compare, bool):
        raise UserError(f"compare={cfg.compare} must be true or false")
    number("amount", lambda v: 0 < v < 1, "in (0, 1)", "the fraction of channels removed")
    number("alpha", lambda v: 0 <= v <= 1, "in [0, 1]", "the weight of the soft targets")
    number("temperature", lambda v: v > 0, "> 0", "what softens the logits")
    number("lr_scale", lambda v: v > 0, "> 0", "a fraction of the checkpoint's learning rate")
    if cfg.method == "distill" and not any(k.startswith("model.") for k in typed_keys()):
        raise UserError(
            "method=distill trains a smaller student: say how with model.<key>= overrides of "
            "the checkpoint's model (e.g. model.net.width=8)"
        )


def compressed(method: str, model, student_cfg, datamodule, cfg: DictConfig, clip) -> tuple:
    """(the compressed model, {label: a model to compare it with}) for `method`."""
    others = {}  # what `compare=true` adds
    if method == "dynamic":
        model.net = quantize_dynamic(model.net)
    elif method == "static":
        model = static_model(model, datamodule, cfg)
    elif method == "qat":
        if cfg.compare:
            others["static (no training)"] = static_model(copy.deepcopy(model), datamodule, cfg)
        model = qat_model(model, datamodule, cfg, clip)
    elif method == "prune":
        model = pruned_model(model, datamodule, cfg, clip)
    else:  # distill: `model` is the teacher
        if cfg.compare:
            alone = distilled_model(model, student_cfg, datamodule, cfg, clip, alone=True)
            others["student alone"] = alone
        model = distilled_model(model, student_cfg, datamodule, cfg, clip)
    return model.eval(), others


def write_compressed(path: Path, checkpoint: dict, model, record: dict, student_cfg=None) -> None:
    """The checkpoint with the compressed weights, no optimizer state, and `record` (how
    `rebuild` makes a fresh model fit them); a distilled student's own model config."""
    dropped = ("optimizer_states", "lr_schedulers", "callbacks", "loops", KEY)
    out = {k: v for k, v in checkpoint.items() if k not in dropped}
    out["state_dict"] = portable_state(model)
    if student_cfg is not None:
        from omegaconf import OmegaConf

        model_cfg = OmegaConf.to_container(student_cfg, resolve=True)
        out["config"] = {**(out.get("config") or {}), "model": model_cfg}
    out["compression"] = record
    out[KEY] = {"sha256": digest(out)}
    torch.save(out, path)


def compress(cfg: DictConfig) -> Path:
    """Compress the checkpoint `cfg.ckpt_path` with `cfg.method`; print the table; return the
    written file."""
    check_settings(cfg)
    require_project(cfg.name, Compresses, "be compressed")  # before any file is looked at
    ckpt = Path(checkpoint_path(cfg))
    checkpoint = load_checkpoint(str(ckpt))
    if "compression" in checkpoint:
        raise UserError(
            f"{ckpt} is already compressed ({checkpoint['compression']['method']}): "
            "compress the checkpoint it came from"
        )
    saved = saved_config(cfg, checkpoint, str(ckpt))
    # With method=distill the command line's model.<key>= overrides describe the student.
    model_cfg, changed = checkpoint_model(cfg, saved)
    method = cfg.method
    L.seed_everything(cfg.seed, verbose=False)
    if method == "distill" and saved is cfg:
        raise UserError(
            f"{ckpt} carries no config (an older checkpoint): method=distill needs the teacher's "
            "own config beside the student's overrides; retrain with this repo's make train"
        )
    model = instantiate_model(saved.model if method == "distill" else model_cfg)
    require(model, Compresses, cfg.name, "be compressed")
    load_weights(model, checkpoint, [] if method == "distill" else changed)
    model.on_load_checkpoint(checkpoint)  # its data spec
    model.eval()
    if method is None:
        method = default_method(model)
        print(
            f"method={method} (method=null: static int8 for nets mostly of convolutions that "
            "torch.fx can trace, dynamic int8 otherwise)"
        )
    if method == "prune":
        check_prunable(model.net)
    if method == "distill":
        check_student(model, model_cfg)
    suffix = ".onnx" if method == "onnx-int8" else ".ckpt"
    name = f"{ckpt.stem}.int8.onnx" if method == "onnx-int8" else f"{ckpt.stem}.{method}.ckpt"
    path = output_beside(cfg, ckpt, name, suffix)
    try:
        datamodule = checkpoint_datamodule(checkpoint_data(cfg, saved), checkpoint)
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.setup("test")
    except UserError as err:
        raise UserError(
            f"make compress calibrates, fine-tunes and tests on the checkpoint's data, and: {err}"
        ) from err
    clip = (saved.get("trainer") or {}).get("gradient_clip_val")

    if method == "onnx-int8":
        figures = onnx_int8(model, datamodule, cfg, path, has_conv(model.net))
        others, baseline = {}, "onnx fp32"
    else:
        example = model.unpack(first_batch(datamodule, "test"))[0]
        original = copy.deepcopy(model).eval()
        model, others = compressed(method, model, model_cfg, datamodule, cfg, clip)
        models = {"original": original, **others, method: model}
        figures = {label: sizes(m) for label, m in models.items()}
        for label, ms in latencies(models, example, cfg).items():
            figures[label] |= ms
        for label, m in models.items():
            figures[label]["acc"] = test_accuracy(m, datamodule, cfg)
        baseline = "original"
        record = {
            "method": method,
            "structure": STRUCTURES[method],
            "inputs": [  # the net's inputs without the batch: what rebuilding traces
                [list(x.shape[1:]), str(x.dtype).removeprefix("torch.")]
                for x in net_inputs(model, example)
            ],
            "source": str(ckpt.resolve()),
            "settings": {k: cfg[k] for k in SETTINGS},
            "measured": {"original": figures["original"], "compressed": figures[method]},
        }
        write_compressed(
            path, checkpoint, model, record, model_cfg if method == "distill" else None
        )

    calls = ROUNDS * max(1, cfg.repeats // ROUNDS)
    print(f"{cfg.threads} thread(s), the median of {calls} calls; accuracy on the test split")
    print(HEADER)
    print(row(cfg.name, baseline, figures[baseline]))
    for label in [*others, method]:
        print(row(cfg.name, label, figures[label], figures[baseline]))
    print(path)
    return path


@entry("compress")
def main(cfg: DictConfig) -> None:
    quiet_deprecations()  # this process's own filters: said once in the docstring instead
    compress(cfg)


if __name__ == "__main__":
    main()
