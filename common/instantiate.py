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
# oneDNN's own ISA cap (ONEDNN_MAX_CPU_ISA): the values at or above its first bf16 instructions.
ONEDNN_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX")


def cpu_bf16_feature() -> str | None:
    """The CPU feature that computes bf16 natively, as Linux names it (x86 `avx512_bf16` or
    `amx_bf16`, Arm `bf16`); None without one, or when it cannot be read (not Linux)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not limit.startswith(ONEDNN_BF16_ISAS):  # oneDNN was told not to use them
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    words = set(text.split())
    return next((f for f in ("amx_bf16", "avx512_bf16", "bf16") if f in words), None)


def trainer_device(accelerator: str) -> str:
    """The device type Lightning's `accelerator` choice lands on: "cuda", "mps" or "cpu"."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu" if accelerator in ("cpu", "auto") else accelerator


def hardware_precision(cfg: DictConfig) -> str | None:
    """The precision to train in when `trainer.precision` asks for bf16: bf16 where the device
    computes it natively, else 32-true, with one line saying which (None: leave it as it is).

    Without native bf16, autocast emulates it: a CPU limited to AVX2 ran the speed recipe's
    step 15x slower in bf16 than in fp32 (README, "Speed"). `precision_follows_hardware=false`
    keeps bf16 anyway (to study its numerics, say).
    """
    asked = str(cfg.trainer.get("precision"))
    if asked not in BF16 or not cfg.get("precision_follows_hardware", True):
        return None
    device = trainer_device(str(cfg.trainer.get("accelerator", "auto")))
    keep = "(precision_follows_hardware=false keeps bf16)"
    if device == "cpu":
        feature = cpu_bf16_feature()
        if feature:
            rank_zero_info(f"precision: {asked} (this CPU computes bf16 natively: {feature})")
            return None
        rank_zero_info(
            f"precision: 32-true, not {asked}: this CPU has no native bf16 (avx512_bf16, "
            f"amx_bf16 or Arm bf16), where bf16 runs several times slower than fp32 {keep}"
        )
        return "32-true"
    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(False):
        rank_zero_info(
            f"precision: 32-true, not {asked}: this GPU has no native bf16 (compute capability "
            f"8.0 and newer has it); trainer.precision=16-mixed uses its fp16 units {keep}"
        )
        return "32-true"
    return None


def instantiate_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    """The Trainer, its checkpoints carrying a sha256 of their contents that every load checks
    (`common.integrity`), in bf16 only where the device computes it natively
    (`hardware_precision`); asking for hardware this machine lacks is a user error."""
    precision = hardware_precision(cfg)
    if precision is not None:
        kwargs["precision"] = precision
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
