"""Callbacks shared by every project."""

from common.callbacks.checkpoint_config import ConfigInCheckpoint
from common.callbacks.progress import ProgressBar
from common.callbacks.throughput import Throughput

__all__ = ["ConfigInCheckpoint", "ProgressBar", "Throughput"]
