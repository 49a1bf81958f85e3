"""Build the lists of callbacks and loggers from config, and show the config."""

import os
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import rich
import rich.syntax
import rich.tree
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from common.errors import UserError
from common.integrity import IntegrityCheckpointIO


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a dict-shaped group (`callbacks`, `logger`); null entries are off."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def instantiate_callbacks(cfg: DictConfig) -> list[Callback]:
    return instantiate_all(cfg.get("callbacks"))


def instantiate_model(node: DictConfig) -> L.LightningModule:
    """The LightningModule of a `model` config, its arguments plain Python lists and dicts.

    Modules save their constructor arguments in checkpoints (`save_hyperparameters`); an
    OmegaConf list there (class names, say) would make the checkpoint unloadable with torch's
    `weights_only=True`, so no OmegaConf container reaches a module.
    """
    return instantiate(node, _convert_="all")


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    return instantiate_all(cfg.get("logger"))


BF16 = ("bf16-mixed", "bf16-true", "bf16")
# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) values below its first bf16 instructions.
ONEDNN_NO_BF16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)
CPUINFO = Path("/proc/cpuinfo")
_said: set[str] = set()


def cpu_bf16_feature() -> str | None:
    """The CPU feature that computes bf16 natively, as Linux names it (x86 `avx512_bf16` or
    `amx_bf16`, Arm `bf16`); None without one, or when it cannot be read (not Linux)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_NO_BF16:
        return None  # oneDNN was told not to use them
    try:
        words = set(CPUINFO.read_text().split())
    except OSError:
        return None
    return next((f for f in ("amx_bf16", "avx512_bf16", "bf16") if f in words), None)


def native_bf16(device: str) -> str | None:
    """What computes bf16 natively on `device` ("cpu" or "cuda": a CPU feature, or the GPU's
    compute capability); None when nothing does. Other devices: "unknown", left alone."""
    if device == "cpu":
        return cpu_bf16_feature()
    if device == "cuda":
        if not torch.cuda.is_available():
            return "unknown"  # building the Trainer will say there is no GPU
        major, minor = torch.cuda.get_device_capability()
        return f"compute capability {major}.{minor}" if major >= 8 else None
    return "unknown"


def trainer_device(accelerator: str) -> str:
    """The device type Lightning's `accelerator` choice lands on: "cuda", "mps" or "cpu"."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu" if accelerator in ("cpu", "auto") else accelerator


def _say_once(message: str) -> None:
    if message not in _said:  # train() settles the precision, then builds the Trainer
        _said.add(message)
        rank_zero_info(message)


def settle_precision(cfg: DictConfig) -> None:
    """A bf16 `trainer.precision` stays where the device computes bf16 natively and becomes
    32-true elsewhere, in `cfg` itself (so the saved config and checkpoint say what ran), with
    one line saying which.

    Without native bf16, autocast emulates it: 7.7-17x slower than fp32 on a CPU held to AVX2
    (README, "Speed"). `precision_follows_hardware=false` keeps bf16 anyway (to study its
    numerics, say). Fork-based DDP strategies are left alone: asking CUDA would initialize it
    in the parent process, which they refuse.
    """
    asked = str(cfg.trainer.get("precision"))
    strategy = str(cfg.trainer.get("strategy", ""))
    if asked not in BF16 or not cfg.get("precision_follows_hardware", True):
        return
    if "fork" in strategy or "notebook" in strategy:
        return
    device = trainer_device(str(cfg.trainer.get("accelerator", "auto")))
    native = native_bf16(device)
    if native == "unknown":
        return
    if native:
        name = "CPU" if device == "cpu" else "GPU"
        _say_once(f"precision: {asked} (this {name} computes bf16 natively: {native})")
        return
    what = (
        "CPU has no native bf16 (avx512_bf16, amx_bf16 or Arm bf16), where bf16 runs several "
        "times slower than fp32"
        if device == "cpu"
        else "GPU has no native bf16 (compute capability 8.0 and newer has it); "
        "trainer.precision=16-mixed uses its fp16 units"
    )
    _say_once(
        f"precision: 32-true, not {asked}: this {what} (precision_follows_hardware=false "
        "keeps bf16)"
    )
    cfg.trainer.precision = "32-true"


def instantiate_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    """The Trainer, its checkpoints carrying a sha256 of their contents that every load checks
    (`common.integrity`), in bf16 only where the device computes it natively
    (`settle_precision`); asking for hardware this machine lacks is a user error."""
    settle_precision(cfg)
    given = cfg.trainer.get("plugins")
    given = [] if given is None else given if isinstance(given, ListConfig) else [given]
    plugins = [instantiate(p) for p in given]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(IntegrityCheckpointIO())
    try:
        # _convert_: Lightning wants a list of plugins, not an OmegaConf ListConfig.
        trainer = instantiate(cfg.trainer, plugins=plugins, _convert_="all", **kwargs)
    except InstantiationException as err:
        if not isinstance(err.__cause__, MisconfigurationException | RuntimeError | ValueError):
            raise
        have = f"{torch.cuda.device_count()} CUDA GPU(s) and {os.cpu_count()} CPU cores"
        reason = " ".join(str(err.__cause__).split()).rstrip(".!")  # Lightning's spans lines
        raise UserError(
            f"cannot build the Trainer with trainer.accelerator={cfg.trainer.get('accelerator')} "
            f"trainer.devices={cfg.trainer.get('devices')}: {reason}. This machine has "
            f"{have}; trainer=cpu runs anywhere."
        ) from err
    if cfg.trainer.get("sync_batchnorm") and trainer.strategy.root_device.type == "cpu":
        # Lightning would convert the BatchNorms and fail at the first forward, mid-run.
        raise UserError("trainer.sync_batchnorm=true needs GPUs: gloo on CPU has no SyncBatchNorm")
    return trainer


@rank_zero_only
def print_config_tree(cfg: DictConfig, order: Iterable[str] = ("data", "model", "trainer")) -> None:
    """Print the composed config as a tree: one branch per group, main groups first, then scalars."""
    tree = rich.tree.Tree("config", style="dim", guide_style="dim")
    groups = [k for k in order if k in cfg] + [
        k for k in cfg if k not in order and isinstance(cfg[k], DictConfig)
    ]
    scalars = {k: cfg[k] for k in cfg if not isinstance(cfg[k], DictConfig)}
    for key in groups:
        yaml_text = OmegaConf.to_yaml(cfg[key], resolve=True)
        tree.add(str(key), style="bold").add(
            rich.syntax.Syntax(yaml_text, "yaml", theme="ansi_dark")
        )
    yaml_text = OmegaConf.to_yaml(OmegaConf.create(scalars), resolve=True)
    tree.add("run", style="bold").add(rich.syntax.Syntax(yaml_text, "yaml", theme="ansi_dark"))
    rich.print(tree)
