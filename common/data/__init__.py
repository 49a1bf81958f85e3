"""The shared datamodule layer: one base class, in-memory loaders, datasets, synthetic data."""

from common.data.base import DataModule
from common.data.loaders import TensorLoader

__all__ = ["DataModule", "TensorLoader"]
