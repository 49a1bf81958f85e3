"""The shared layer: entry points, datamodules, callbacks and helpers used by every project."""
