"""Callbacks shared by every project."""

from common.callbacks.checkpoint_config import ConfigInCheckpoint
from common.callbacks.fid import FID
from common.callbacks.model_checkpoint import ModelCheckpoint
from common.callbacks.progress import ProgressBar
from common.callbacks.pruning import MagnitudePruning
from common.callbacks.run_notes import RunNotes
from common.callbacks.stop_on_signal import StopOnSignal
from common.callbacks.throughput import Throughput

__all__ = [
    "FID",
    "ConfigInCheckpoint",
    "MagnitudePruning",
    "ModelCheckpoint",
    "ProgressBar",
    "RunNotes",
    "StopOnSignal",
    "Throughput",
]
