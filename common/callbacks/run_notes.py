"""One console line for each thing about a run that would otherwise pass unnoticed."""

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import rank_zero_info

from common.runs import RUN


class RunNotes(Callback):
    """- Marks the run as begun (a launch that fails later keeps its run directory).
    - Lowers `log_every_n_steps` to the optimizer steps of one epoch, so a short epoch logs its
      training loss every epoch (Lightning only warns, and logs every few epochs, or never).
    - Says when and why early stopping ended the run before `max_epochs`.
    """

    def on_test_start(self, trainer, pl_module) -> None:
        RUN.started = True

    def on_train_start(self, trainer, pl_module) -> None:
        RUN.started = True
        batches = trainer.num_training_batches
        if not isinstance(batches, int) or batches < 1 or trainer.fast_dev_run:
            return  # an iterable without a length
        steps = max(1, batches // trainer.accumulate_grad_batches)
        if trainer.log_every_n_steps > steps:
            rank_zero_info(
                f"logging the training loss every {steps} steps, once an epoch "
                f"(trainer.log_every_n_steps={trainer.log_every_n_steps} is longer than an epoch)"
            )
            trainer.log_every_n_steps = steps

    def on_train_end(self, trainer, pl_module) -> None:
        for callback in trainer.callbacks:
            if (
                isinstance(callback, EarlyStopping)
                and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED
            ):
                rank_zero_info(
                    f"early stopping ended the run after epoch {callback.stopped_epoch + 1} of "
                    f"{trainer.max_epochs}: {callback.stopping_reason_message}"
                )
