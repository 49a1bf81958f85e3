"""Check a composed config before any work: every value a `_target_` takes has a type its class
accepts, and the hardware asked for exists. A mistake is a `UserError` that names the key.

Types come from the constructors' annotations (`Trainer.__init__`, a model's, an optimizer's):
the config tree needs no second, hand-written schema. Where an annotation cannot be checked
(a class instance, a callable), the value passes here and the constructor judges it.
"""

import inspect
import types
import typing
from collections.abc import Mapping, Sequence

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from common.errors import UserError

UNKNOWN = None  # "cannot tell": neither accepted nor refused here


def _fits(value, hint) -> bool | None:
    """True or False when `value` (plain Python, from YAML) does or does not fit `hint`."""
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, arg) for arg in args]
        return True if True in verdicts else (UNKNOWN if UNKNOWN in verdicts else False)
    if origin is typing.Literal:
        return value in args and type(value) in {type(a) for a in args}
    if hint is type(None):
        return value is None
    if isinstance(value, dict) and "_target_" in value:
        return UNKNOWN  # instantiated into whatever it names
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (list, tuple, Sequence) or (inspect.isclass(base) and issubclass(base, Sequence)):
        if base is str:
            return isinstance(value, str)
        return isinstance(value, list | tuple) or (UNKNOWN if value is not None else False)
    if base in (dict, Mapping):
        return isinstance(value, dict)
    if base is torch.Tensor:
        return False  # a config value is never a tensor
    return UNKNOWN


def _describe(hint) -> str:
    """An annotation in a user's words: `Optional[int]` -> `int or null`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if hint is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def _signature(fn) -> tuple[dict, dict]:
    try:
        params = dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}, {}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations naming optional packages: check the names only
        hints = {}
    return params, hints


def accepted(target) -> tuple[dict, dict]:
    """The parameters and annotations `target` takes, following a class's `**kwargs` up to the
    base constructors they are passed to (a datamodule's `batch_size`, say). A `**kwargs` entry
    is left in only when the chain takes any key."""
    if not inspect.isclass(target):
        return _signature(target)
    params, hints = {}, {}
    for klass in target.__mro__:
        if "__init__" not in klass.__dict__ or klass is object:
            continue
        own, own_hints = _signature(klass.__init__)
        params = {**own, **params}
        hints = {**own_hints, **hints}
        if all(p.kind != inspect.Parameter.VAR_KEYWORD for p in own.values()):
            params = {k: p for k, p in params.items() if p.kind != inspect.Parameter.VAR_KEYWORD}
            break
    return params, hints


def check_node(node: dict, path: str) -> None:
    """Check one `_target_` node (plain dict, resolved) and the nodes inside it."""
    try:
        target = get_method(node["_target_"])
    except Exception:
        return  # instantiate says what is wrong with the name itself
    params, hints = accepted(target)
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in node.items():
        key = str(key)
        if key.startswith("_"):
            continue
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict) and "_target_" in value:
            check_node(value, where)
        if key not in params:
            if params and not takes_any:
                import difflib

                near = difflib.get_close_matches(key, list(params), n=1)
                hint = f"; did you mean {path}.{near[0]}?" if near else ""
                raise UserError(f"{where}: {node['_target_']} takes no argument '{key}'{hint}")
            continue
        hint = hints.get(key, inspect.Parameter.empty)
        if _fits(value, hint) is False:
            raise UserError(
                f"{where}={value!r} is not valid: {node['_target_']} takes {_describe(hint)} there"
            )


def _walk(node, path: str):
    """Every `_target_` node of a resolved config, outermost first, with its dotted path."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield node, path
            return
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))


def requested_devices(trainer: DictConfig) -> int | None:
    """How many devices `trainer.devices` asks for (a count or a list); None for "auto", -1 and
    strings, which the datamodule's check meets once the trainer has counted its processes."""
    devices = trainer.get("devices", "auto")
    count = len(devices) if isinstance(devices, list | ListConfig) else devices
    return count if isinstance(count, int) and count >= 0 else None


def check_hardware(cfg: DictConfig) -> None:
    """`trainer.devices=4` with accelerator auto on a machine with fewer GPUs would start 4 CPU
    processes instead: refuse, and say how to ask for CPU processes on purpose."""
    trainer = cfg.get("trainer")
    if not trainer or trainer.get("fast_dev_run"):
        return
    accelerator, count = trainer.get("accelerator", "auto"), requested_devices(trainer)
    if accelerator not in ("auto", "gpu", "cuda") or count is None or count <= 1:
        return
    gpus = torch.cuda.device_count()
    if gpus < count:
        raise UserError(
            f"trainer.devices={count} asks for {count} GPUs and this machine has {gpus}. To run "
            f"{count} processes on the CPU on purpose, add trainer.accelerator=cpu (with "
            "trainer=ddp); or use fewer devices"
        )


def check_processes(cfg: DictConfig) -> None:
    """A full-batch loader (data.loader=full) in more than one process: refused before they
    start (each would say so). The datamodule checks again for counts known only later."""
    data, trainer = cfg.get("data"), cfg.get("trainer")
    if not data or not trainer or data.get("loader") != "full":
        return
    processes = (requested_devices(trainer) or 1) * int(trainer.get("num_nodes", 1))
    if processes > 1:
        from common.data.base import full_batch_refusal

        raise full_batch_refusal(data.get("name", "the data"), processes)


def check_types(cfg: DictConfig) -> None:
    """Check every `_target_` node of `cfg`: its keys and the types of their values."""
    for key in cfg:
        if key == "hydra" or OmegaConf.is_missing(cfg, key):  # Hydra's own; `???` (said later)
            continue
        try:
            value = cfg[key]
            plain = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else None
            )
        except Exception as err:  # an interpolation that cannot resolve
            raise UserError(" ".join(str(err).split())) from None
        for target, path in _walk(plain, str(key)):
            check_node(target, path)


def check_validation(cfg: DictConfig) -> None:
    """Early stopping watches a validation metric: with no validation batches at all, Lightning
    would end the first epoch in a traceback."""
    trainer, callbacks = cfg.get("trainer") or {}, cfg.get("callbacks") or {}
    stopper = callbacks.get("early_stopping")
    if trainer.get("limit_val_batches") == 0 and stopper is not None and cfg.get("train", True):
        raise UserError(
            f"trainer.limit_val_batches=0 runs no validation, and early stopping watches "
            f"{stopper.get('monitor')}: add callbacks.early_stopping=null"
        )


def check_config(cfg: DictConfig) -> None:
    """Check `cfg` and the hardware it asks for, before any work."""
    check_types(cfg)
    check_validation(cfg)
    check_processes(cfg)  # first: its fix (one device) also fixes a lack of GPUs
    check_hardware(cfg)
