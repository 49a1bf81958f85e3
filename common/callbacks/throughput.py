"""Training throughput per epoch, read once per epoch so the hot loop never waits on the GPU."""

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class Throughput(L.Callback):
    """Logs `train/samples_per_sec` (all processes together) and `train/epoch_seconds` at the end
    of every training epoch, and prints them when `verbose`, every `print_every_n_epochs` epochs
    (projects of many short epochs, such as full-batch training, print fewer).

    Counts the samples of each training batch as it starts (a shape, no device sync) and syncs
    the device once, at the epoch's end. The time is the training loop's alone: a validation run
    inside the epoch is taken out.
    """

    def __init__(self, verbose: bool = True, print_every_n_epochs: int = 1):
        self.verbose = verbose
        self.print_every_n_epochs = max(1, print_every_n_epochs)
        self.samples, self.start, self.paused = 0, 0.0, 0.0

    @staticmethod
    def _now(trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.samples, self.paused = 0, 0.0
        self.start = self._now(trainer)

    # A run resumed mid-epoch starts counting here (no `on_train_epoch_start` for that epoch).
    on_train_start = on_train_epoch_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # (inputs, targets): one target per sample. A batch of another shape says its size:
        # `num_samples` (an RL rollout: environment steps), or `num_graphs` (torch-geometric).
        for name in ("num_samples", "num_graphs"):
            size = getattr(batch, name, None)
            if size is not None:
                self.samples += size
                return
        self.samples += len(batch[-1])

    # Lightning runs the epoch's validation before `on_train_epoch_end`.
    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_start = self._now(trainer)

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.paused += self._now(trainer) - self._val_start

    def on_train_epoch_end(self, trainer, pl_module):
        if self.samples == 0:
            return  # resumed after the epoch's training part: nothing was timed
        seconds = self._now(trainer) - self.start - self.paused
        rate = self.samples * trainer.world_size / max(seconds, 1e-9)
        pl_module.log_dict(
            {"train/samples_per_sec": rate, "train/epoch_seconds": seconds}, rank_zero_only=True
        )
        if self.verbose and trainer.current_epoch % self.print_every_n_epochs == 0:
            rank_zero_info(
                f"epoch {trainer.current_epoch}: {rate:,.0f} samples/s, {seconds:.2f} s of training"
            )
