"""Callbacks shared by every project."""

from common.callbacks.checkpoint_config import ConfigInCheckpoint
from common.callbacks.fid import FID
from common.callbacks.progress import ProgressBar
from common.callbacks.throughput import Throughput

__all__ = ["FID", "ConfigInCheckpoint", "ProgressBar", "Throughput"]
