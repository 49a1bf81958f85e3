"""Build the lists of callbacks and loggers from config, and show the config."""

import os
from collections.abc import Iterable

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
from lightning.pytorch.utilities import rank_zero_only
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


def instantiate_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    """The Trainer, its checkpoints carrying a sha256 of their contents that every load checks
    (`common.integrity`); asking for hardware this machine lacks is a user error."""
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
