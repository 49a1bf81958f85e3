"""A rich progress bar that stays out of the hot loop."""

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """RichProgressBar that reads logged metrics every `metrics_every` training steps.

    The stock bar converts every `prog_bar=True` value to a Python number after each step: on a
    GPU that is a device sync per step, which costs more than the step for small models. It also
    redraws 100 times a second from a thread that competes with training for the CPU;
    `refresh_rate` redraws per second is plenty for a human.
    """

    def __init__(self, metrics_every: int = 25, refresh_rate: int = 4, **kwargs):
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.metrics_every = max(1, metrics_every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a mid-epoch resume
        if self.progress is not None and self.is_enabled:
            # Bookkeeping only; rich's refresh thread draws it `refresh_rate` times a second.
            self.progress.update(self.train_progress_bar_id, completed=batch_idx + 1)
        if (batch_idx + 1) % self.metrics_every == 0 or batch_idx + 1 == self.total_train_batches:
            self._update_metrics(trainer, pl_module)
