"""Run directories: what a launch leaves behind, and how a later launch finds it again."""

import inspect
import os
import platform
import shutil
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from common.data.files import atomic_write
from common.errors import UserError, first_line, weights_mismatch
from common.integrity import unsafe_message, verify
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


# --- who is using a run directory ---------------------------------------------------------------

LOCK = "run.lock"  # in a run directory while its training process lives: pid, host, start time


class _Run:
    """This launch's run directory, as the `RunDirGuard` found it."""

    dir: Path | None = None
    lock: Path | None = None  # this process's run.lock while it runs
    created = False  # made by this launch (so a launch that fails early removes it again)
    started = False  # training or testing began: what the directory holds is worth keeping


RUN = _Run()


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell it from a later
    process that reused its pid; None when there is no such process or no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_run(run_dir: Path) -> dict | None:
    """The lock of the process training in `run_dir` when it still runs, else None.

    A lock left by a process that died without cleaning up (SIGKILL, power loss) is stale: its
    pid is gone, or now belongs to a process that started later. A lock from another host cannot
    be checked from here and counts as live.
    """
    try:
        lock = yaml.safe_load((Path(run_dir) / LOCK).read_text())
    except (OSError, yaml.YAMLError):
        return None
    pid = lock.get("pid") if isinstance(lock, dict) else None
    if not isinstance(pid, int):
        return None
    job = os.environ.get("SLURM_JOB_ID")
    if job and lock.get("job") == job:
        return None  # this job's run before SLURM requeued it: that process is gone
    if lock.get("host") != platform.node():
        return lock
    if not _alive(pid):
        return None
    started = _process_start(pid)
    return lock if started is None or started == str(lock.get("start")) else None


def describe(lock: dict) -> str:
    return f"pid {lock.get('pid')} on {lock.get('host')}, since {lock.get('since')}"


def take_lock(run_dir: Path) -> Path:
    """Mark `run_dir` as used by this process until `release_lock`; a lock there is stale (the
    guard refused a live one), and is replaced."""
    path = run_dir / LOCK
    pid = os.getpid()
    info = {
        "pid": pid,
        "host": platform.node(),
        "start": _process_start(pid),
        "job": os.environ.get("SLURM_JOB_ID"),
        "since": datetime.now().isoformat(timespec="seconds"),
    }
    # Whole or absent for a reader (`find_last_checkpoint` in another launch).
    return atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(info)))


def release_lock() -> None:
    """Remove this process's lock (a no-op where it holds none)."""
    if RUN.lock is not None:
        RUN.lock.unlink(missing_ok=True)
        RUN.lock = None


def is_rank_zero_process() -> bool:
    """False in the extra processes of a DDP job: Lightning's, torchrun's or srun's ranks > 0."""
    keys = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(k, "0") == "0" for k in keys)


# Files Hydra writes into a run directory before any of our code runs, and our lock.
HYDRA_FILES = (".hydra", LOCK)


class RunDirRefused(BaseException):
    """A `UserError` of the `RunDirGuard`: Hydra turns a callback's Exceptions into warnings."""


class RunDirGuard(Callback):
    """Hydra callback, before Hydra creates or writes the run directory: a directory that cannot
    be created, or that holds another run's (or a user's) files, is refused instead of written
    into, unless this launch resumes the run in it (`ckpt_path=last` or a file inside it)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            self.check(config)
        except UserError as err:
            raise RunDirRefused(str(err)) from None
        except Exception as err:  # Hydra would turn it into a warning, and the guard off
            message = f"cannot check the run directory: {type(err).__name__}: {err}"
            raise RunDirRefused(message) from err

    def check(self, config: DictConfig) -> None:
        release_lock()  # an earlier launch in this process (tests run several)
        RUN.dir, RUN.created, RUN.started = None, False, False
        if config.hydra.output_subdir is None or not is_rank_zero_process():
            return  # predict/sample write no run directory; ranks > 0 join rank 0's
        run_dir = Path(str(config.hydra.run.dir))  # as Hydra will make it (no ~ expansion)
        existed = run_dir.exists()
        if existed:
            check_reusable(run_dir, config)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = take_lock(run_dir)  # also proves the folder writable
        except OSError as err:
            raise UserError(
                f"cannot write the run directory {run_dir}: {err.strerror or err}. LOG_DIR "
                "(or hydra.run.dir) must name a folder you can write to"
            ) from None
        RUN.dir, RUN.lock, RUN.created = run_dir.resolve(), lock, not existed


def check_reusable(run_dir: Path, config: DictConfig) -> None:
    """Refuse `run_dir` when a live run uses it, or it holds files this launch would overwrite
    without resuming the run they belong to."""
    if not run_dir.is_dir():
        raise UserError(f"the run directory {run_dir} is a file, not a folder")
    lock = live_run(run_dir)
    if lock is not None:
        raise UserError(
            f"{run_dir} is in use by a run that is still training ({describe(lock)}); wait for "
            f"it or stop it (if no such process exists, delete {run_dir / LOCK})"
        )
    held = sorted(
        p.name for p in run_dir.iterdir() if p.name not in HYDRA_FILES and p.suffix != ".log"
    )
    if not held:
        return
    ckpt = str(config.get("ckpt_path") or "")
    resumes = config.get("train") and (
        (ckpt == "last" and (run_dir / "checkpoints" / "last.ckpt").is_file())
        or (ckpt not in ("", "last") and run_dir.resolve() in Path(ckpt).resolve().parents)
    )
    if not resumes:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        resume = ", or resume the run in it with ckpt_path=last" if "train" in config else ""
        raise UserError(
            f"hydra.run.dir={run_dir} already holds files ({shown}): a new run would overwrite "
            f"its config.yaml and run.yaml. Choose a new folder{resume}"
        )


def remove_if_unused(run_dir: Path | None) -> bool:
    """Remove the run directory of a launch that failed before training or testing began;
    True when it did."""
    if run_dir is None or not RUN.created or RUN.started or not run_dir.is_dir():
        return False
    release_lock()
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def find_last_checkpoint(log_dir: str, name: str, exclude: str | None = None) -> str:
    """The newest `last.ckpt` of this project's finished or stopped runs (`ckpt_path=last`):
    runs still training are skipped, and said so."""
    root = Path(log_dir) / name
    found, live = [], []
    for path in root.glob("**/checkpoints/last.ckpt"):
        run_dir = path.parent.parent
        if exclude is not None and Path(exclude).resolve() in path.resolve().parents:
            continue
        lock = live_run(run_dir)
        (live if lock else found).append((path, lock))
    for path, lock in live:
        rank_zero_info(
            f"ckpt_path=last: skipping {run_dir_of(path)}, still training ({describe(lock)})"
        )
    if not found:
        still = " (only runs still training have one)" if live else ""
        raise UserError(
            f"ckpt_path=last: no finished or stopped run of '{name}' has a checkpoints/last.ckpt "
            f"under {root}{still}. Train first, or pass ckpt_path=<file>."
        )
    return str(max((p for p, _ in found), key=lambda p: p.stat().st_mtime))


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with torch's safe loader and check it against the sha256 saved in it
    (`common.integrity`); a missing, damaged, unsafe or foreign file is a user error."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # A compressed checkpoint's int8 tensors: torch warns that their kind is deprecated
            # each time one is read (`common.compress` says so once).
            warnings.filterwarnings(
                "ignore", message=".*(quantized tensor creation|TypedStorage).*"
            )
            # mmap: pages are read once, by the digest.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        unsafe = unsafe_message(err, path)
        if unsafe:
            raise UserError(unsafe) from None
        raise UserError(
            f"cannot load checkpoint {path}: {first_line(err)}. Is it a Lightning .ckpt written by "
            "this repo's `make train`?"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict in it)")
    verify(checkpoint, path)
    return checkpoint


LAST_CKPT_ENV = "TEMPLATES_LAST_CKPT"


def resolve_ckpt_path(cfg: DictConfig, own_dir: str | None = None) -> str | None:
    """`ckpt_path` from the config. `last` means the run directory `own_dir`'s last.ckpt when
    it has one (a named run directory resumes itself), else `find_last_checkpoint`.

    Only names the file: callers read it with `load_checkpoint`, once.
    """
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("this needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    path = cfg.get("ckpt_path")
    if not path:
        return None
    if path == "last":
        inherited = os.environ.get(LAST_CKPT_ENV)
        if inherited and not is_rank_zero_process():
            return inherited  # the file rank 0 chose: runs may have ended since
        own = Path(own_dir) / "checkpoints" / "last.ckpt" if own_dir else None
        if own is not None and own.is_file():
            path, why = own, "this run directory's"
        else:
            path = find_last_checkpoint(cfg.paths.log_dir, cfg.name, exclude=own_dir)
            why = f"the newest finished or stopped run of '{cfg.name}'"
        rank_zero_info(f"ckpt_path=last: {path} ({why})")
        os.environ[LAST_CKPT_ENV] = str(path)  # for the DDP ranks Lightning starts later
    return str(path)


def drop_retired_keys(node: DictConfig) -> DictConfig:
    """A saved model or data config without the keys its class no longer takes, so that a
    checkpoint written by an older version of the code still loads (a warning names them)."""
    from hydra.utils import get_class

    from common.checks import accepted

    cls = get_class(node._target_)
    params, _ = accepted(cls)  # the constructors that **kwargs pass the keys on to
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return node  # takes anything
    taken = {name for name, p in params.items() if p.kind != inspect.Parameter.VAR_POSITIONAL}
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


def typed_keys() -> list[str]:
    """The keys (or config groups) of this command line's overrides, as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(typed)]


def with_overrides(cfg: DictConfig, saved: DictConfig, group: str, also=()) -> DictConfig:
    """The checkpoint's `group` config (`saved.<group>`) with this command line's
    `<group>.<key>=` overrides, and the keys `also`, taken from `cfg` on top."""
    node = OmegaConf.create(OmegaConf.to_container(saved[group]))
    absent = object()
    for key in [*also, *typed_keys()]:
        value = (
            OmegaConf.select(cfg, key, default=absent) if key.startswith(f"{group}.") else absent
        )
        if value is not absent and not (key in also and value is None):
            OmegaConf.update(node, key[len(group) + 1 :], value, force_add=True)
    return node


def checkpoint_data(cfg: DictConfig, saved: DictConfig) -> DictConfig:
    """The data to test a checkpoint on: the data config it was trained with (so its seed, its
    splits, its tokenizer), with this command's data folder and its `data.<key>=` overrides on
    top. `data=<name>` on the command line chooses other data: then this command's config."""
    keys = typed_keys()
    if saved is cfg or any(k == "data" or k.startswith("data/") for k in keys):
        return cfg.data
    return with_overrides(cfg, saved, "data", also=["data.data_dir"])


def checkpoint_datamodule(data: DictConfig, checkpoint: dict):
    """The datamodule `data` describes, told what the checkpoint's model learned of its data
    (its tokenizer, its normalization), so that a token id or a pixel means what it meant."""
    from hydra.utils import instantiate

    from common.data import DataSpec

    datamodule = instantiate(data)
    if "data_spec" in checkpoint:
        datamodule.adopt(DataSpec.from_dict(checkpoint["data_spec"]))
    return datamodule


def checkpoint_model(cfg: DictConfig, saved: DictConfig) -> tuple[DictConfig, list[str]]:
    """The model config a checkpoint was trained with and the `model.<key>=` overrides of this
    command line applied on top (inference-time options such as test-time augmentation), with
    those overrides as typed; `model=`/`model/<group>=` cannot change a trained model."""
    keys = typed_keys()
    groups = [k for k in keys if k == "model" or k.startswith("model/")]
    if groups and saved is not cfg:
        raise UserError(
            f"{', '.join(groups)}: a checkpoint's model is the one it was trained as; change its "
            "options with model.<key>=<value>, or train another model"
        )
    if saved is cfg:
        return cfg.model, []
    changed = [
        f"{k}={OmegaConf.select(cfg, k, default=None)}" for k in keys if k.startswith("model.")
    ]
    return with_overrides(cfg, saved, "model"), changed


def load_weights(model, checkpoint: dict, changed: list[str]) -> None:
    """Load the checkpoint's weights into `model`; weights that do not fit are a user error that
    names the overrides that changed the architecture (when there are)."""
    if "compression" in checkpoint:  # written by make compress: int8 or pruned layers to rebuild
        from common.compress import rebuild

        rebuild(model, checkpoint)
        return
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:
        why = weights_mismatch(err)  # the first mismatch says enough
        if changed:
            raise UserError(
                f"{', '.join(changed)} changes the model the checkpoint was trained as: its "
                f"weights no longer fit ({why}). Only options that leave the weights alone can "
                "be changed here"
            ) from None
        raise UserError(f"the checkpoint's weights do not fit its model ({why})") from None
