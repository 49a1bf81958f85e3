"""OmegaConf resolvers used by the config tree. Registered by the entry points, not on import."""

import secrets
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


def class_count(root: str | None, default: int) -> int:
    """Class sub-folders of a folder of images or clips (of `root/train` when that holds them), for
    `num_classes: ${class_count:${data.root},10}`; `default` when root is unset, not a folder or
    has none (the datamodule then says what is wrong). The folders are `class_dirs`, the rule
    the image- and audio-folder datamodules label by."""
    from common.data.files import class_dirs

    if root is None:
        return default
    folder = Path(str(root)).expanduser()
    for path in (folder / "train", folder):
        if path.is_dir() and class_dirs(path):
            return len(class_dirs(path))
    return default


def ddp_strategy(name: str, find_unused_parameters: bool) -> str:
    """Lightning's strategy name for `name` ("ddp", "ddp_spawn"), in its variant that expects
    parameters without gradients in a step when `find_unused_parameters`, for
    `strategy: ${ddp_strategy:ddp,${find_unused_parameters}}` in the trainer configs."""
    return f"{name}_find_unused_parameters_true" if find_unused_parameters else name


def register_resolvers() -> None:
    """Idempotent: safe to call from every entry point and test."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("run_id"):
        # Run directories are `<timestamp>_<run_id>`, so two launches in the same second never
        # share one. Cached per config, like Hydra's `now`, so one launch resolves one value.
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("class_count"):
        OmegaConf.register_new_resolver("class_count", class_count)
    if not OmegaConf.has_resolver("ddp_strategy"):
        OmegaConf.register_new_resolver("ddp_strategy", ddp_strategy)
