"""A rich progress bar that stays out of the hot loop."""

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """RichProgressBar that reads logged metrics every `metrics_every` training steps.

    The stock bar converts every `prog_bar=True` value to a Python number after each step: on a
    GPU that is a device sync per step, which costs more than the step for small models.
    """

    def __init__(self, metrics_every: int = 25, **kwargs):
        super().__init__(**kwargs)
        self.metrics_every = max(1, metrics_every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a mid-epoch resume
        last = batch_idx + 1 == self.total_train_batches
        if (batch_idx + 1) % self.metrics_every == 0 or last:
            self._update(self.train_progress_bar_id, batch_idx + 1)
            self._update_metrics(trainer, pl_module)
            self.refresh()
