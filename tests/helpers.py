"""Callbacks that only tests use, importable by the processes tests launch (run from the repo root)."""

from lightning.pytorch.callbacks import Callback


class CrashOnRank(Callback):
    """Raise in one process at one training step: a stand-in for a rank that dies mid-run."""

    def __init__(self, rank: int = 1, step: int = 3):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")


class SignalAt(Callback):
    """Send this process a signal after one training step: a stand-in for `kill`, a scheduler's
    SIGTERM or Ctrl+C, arriving mid-epoch at a known step."""

    def __init__(self, signum: int = 15, step: int = 3, rank: int = 0, group: bool = False):
        self.signum, self.step, self.rank, self.group = signum, step, rank, group

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            import os

            if self.group:  # as a terminal's Ctrl+C: every process of the job at once
                os.killpg(os.getpgid(0), self.signum)
            else:
                os.kill(os.getpid(), self.signum)


class RecordLosses(Callback):
    """Keeps each training step's returned loss, by step, in `RecordLosses.losses`."""

    losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RecordLosses.losses[trainer.global_step - 1] = float(outputs["loss"])
