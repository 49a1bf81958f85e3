"""The shared data layer: the datamodule contract (`DataModule`: a source, a loader kind, a batch
transform), what a model may know of its data (`DataSpec`), and the parts two or more projects
use: splits, loaders, image datasets and folders, text files."""

from common.data.base import DataModule, Splits, split
from common.data.loaders import TensorLoader
from common.data.spec import DataSpec

__all__ = ["DataModule", "DataSpec", "Splits", "TensorLoader", "split"]
