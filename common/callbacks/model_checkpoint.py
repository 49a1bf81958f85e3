"""Lightning's ModelCheckpoint, with `last.ckpt` the state of the last epoch."""

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, except that `last.ckpt` (`save_last=True`) is written at the
    end of every validation (or training epoch, without validation).

    Lightning 2.6 writes last.ckpt only at a step where it also saved a top-k checkpoint: with a
    monitored metric, last.ckpt held the best epoch, not the last, so `ckpt_path=last` resumed
    there and trained every epoch after it again (a run that stopped early at epoch 182 left
    last.ckpt at epoch 81). Here last.ckpt follows whenever Lightning left it behind.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved_at_step: int | None = None  # the global step of the newest checkpoint written

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        self.saved_at_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self.keep_last_current(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not trainer.enable_validation:
            self.keep_last_current(trainer)

    def keep_last_current(self, trainer) -> None:
        """Write last.ckpt unless a checkpoint was written at this step already (Lightning's
        top-k save, which writes last.ckpt with it)."""
        if self.save_last is not True or self.dirpath is None:
            return
        if self.saved_at_step == trainer.global_step:
            return
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or trainer.fast_dev_run:
            return
        path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # before saving: it is part of this callback's saved state
        trainer.save_checkpoint(path)  # every rank calls it; rank 0 writes
