"""Callbacks shared by every project."""

from common.callbacks.checkpoint_config import ConfigInCheckpoint
from common.callbacks.progress import ProgressBar

__all__ = ["ConfigInCheckpoint", "ProgressBar"]
