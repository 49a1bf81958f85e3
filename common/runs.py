"""Run directories: what a launch leaves behind, and how a later launch finds it again."""

import inspect
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from common.resolvers import REPO_ROOT


def git_state() -> dict:
    """Commit and dirty flag of the checkout the code runs from ({} outside git)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise OSError(out.stderr)
        return out.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except OSError:
        return {}


@rank_zero_only
def save_run_files(cfg: DictConfig, output_dir: str) -> None:
    """Write the resolved config and how the run was launched into the run directory.

    Hydra already keeps the unresolved config and the overrides in `.hydra/`; `config.yaml` here
    is the resolved one a reader can trust, and `run.yaml` says what code and command made it.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    info = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "overrides": overrides,
        "git": git_state(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "lightning": L.__version__,
        },
    }
    with open(out / "run.yaml", "w") as f:
        yaml.safe_dump(info, f, sort_keys=False)


def find_last_checkpoint(log_dir: str, name: str, exclude: str | None = None) -> str:
    """The newest `last.ckpt` among this project's earlier runs (`ckpt_path=last`)."""
    root = Path(log_dir) / name
    found = [
        p
        for p in root.glob("**/checkpoints/last.ckpt")
        if exclude is None or Path(exclude).resolve() not in p.resolve().parents
    ]
    if not found:
        raise UserError(
            f"ckpt_path=last: no earlier run of '{name}' has a checkpoints/last.ckpt under {root}. "
            "Train first, or pass ckpt_path=<file>."
        )
    return str(max(found, key=lambda p: p.stat().st_mtime))


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with torch's safe loader; a missing or corrupt file is a user error."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # mmap: the check costs next to nothing even for a large checkpoint.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load checkpoint {path}: {first_line}. Is it a Lightning .ckpt written by "
            "this repo's `make train`?"
        ) from err


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path` from the config, with `last` meaning this project's newest last.ckpt.

    Only names the file: callers read it with `load_checkpoint`, once.
    """
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("this needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    path = cfg.get("ckpt_path")
    if not path:
        return None
    if path == "last":
        path = find_last_checkpoint(cfg.paths.log_dir, cfg.name, exclude=cfg.paths.output_dir)
        rank_zero_info(f"ckpt_path=last: {path}")
    return str(path)


def drop_retired_keys(node: DictConfig) -> DictConfig:
    """A saved model or data config without the keys its class no longer takes, so that a
    checkpoint written by an older version of the code still loads (a warning names them)."""
    from hydra.utils import get_class

    cls = get_class(node._target_)
    taken, kinds = set(), (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__:  # the constructors that **kwargs pass the keys on to
        if "__init__" not in klass.__dict__:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        taken |= {p.name for p in params if p.kind in kinds}
        if all(p.kind != inspect.Parameter.VAR_KEYWORD for p in params):
            break
    else:
        return node  # takes anything
    retired = [key for key in node if key not in taken and not str(key).startswith("_")]
    if retired:
        rank_zero_warn(
            f"ignoring {', '.join(map(str, retired))} of {cls.__name__}: the checkpoint "
            "was saved by an older version of the code"
        )
        node = OmegaConf.masked_copy(node, [k for k in node if k not in retired])
    return node


def saved_config(cfg: DictConfig, checkpoint: dict, ckpt_path: str) -> DictConfig:
    """The resolved config a checkpoint was trained with (`ConfigInCheckpoint`), after checking
    that it belongs to this command's project; this command's config for older checkpoints."""
    saved = checkpoint.get("config") or {}
    if saved.get("name", cfg.name) != cfg.name:
        raise UserError(
            f"{ckpt_path} was trained by project '{saved['name']}', not '{cfg.name}': "
            f"run it with PROJECT={saved['name']}"
        )
    if not saved:
        return cfg
    saved = OmegaConf.create(saved)
    for key in ("model", "data"):
        if "_target_" in saved.get(key, {}):
            saved[key] = drop_retired_keys(saved[key])
    return saved


def checkpoint_data(cfg: DictConfig, saved: DictConfig) -> DictConfig:
    """The data to test a checkpoint on: the data config it was trained with (so its seed, its
    splits, its tokenizer), with this command's data folder and its `data.<key>=` overrides on
    top. `data=<name>` on the command line chooses other data: then this command's config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(typed)]
    if saved is cfg or any(k == "data" or k.startswith("data/") for k in keys):
        return cfg.data
    data = OmegaConf.create(OmegaConf.to_container(saved.data))
    for key in ["data.data_dir", *keys]:
        if key.startswith("data.") and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(data, key[len("data.") :], OmegaConf.select(cfg, key), force_add=True)
    return data
