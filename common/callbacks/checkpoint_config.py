"""Make checkpoints self-describing."""

from lightning.pytorch.callbacks import Callback


class ConfigInCheckpoint(Callback):
    """Store the resolved run config (plain dicts and lists) in every checkpoint.

    `common.eval` rebuilds the model from it, so a checkpoint trained with `model.x=...`
    overrides evaluates without repeating them. Plain containers keep `weights_only=True`
    loading possible.
    """

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["config"] = self.config
