"""OmegaConf resolvers used by the config tree. Registered by the entry points, not on import."""

import secrets
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


def register_resolvers() -> None:
    """Idempotent: safe to call from every entry point and test."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("run_id"):
        # Run directories are `<timestamp>_<run_id>`, so two launches in the same second never
        # share one. Cached per config, like Hydra's `now`, so one launch resolves one value.
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
