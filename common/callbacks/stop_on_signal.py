"""Save a resumable checkpoint when a signal stops training, and say how to resume."""

import shlex
import signal
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from common import signals


def resume_command(run_dir: str) -> str:
    """The `make train` line that continues this run in its own directory."""
    from hydra.core.hydra_config import HydraConfig

    project, words = "", []
    if HydraConfig.initialized():
        for word in HydraConfig.get().overrides.task:
            key = word.split("=", 1)[0]
            if key == "project":
                project = word.split("=", 1)[1]
            elif key not in ("ckpt_path", "hydra.run.dir"):
                words.append(word)
    head = ["make", "train", *([f"PROJECT={project}"] if project else [])]
    return shlex.join([*head, *words, f"hydra.run.dir={run_dir}", "ckpt_path=last"])


class StopOnSignal(Callback):
    """When SIGTERM, SIGINT or SIGUSR1 ended `fit` (`common.signals`), rank 0 writes the state of
    the moment to `checkpoints/last.ckpt` when training was mid-epoch (Lightning restores the
    loops' progress and runs the rest of the epoch); stopped during validation, the last completed
    state (last.ckpt of the epoch before) is kept, as Lightning resumes mid-validation unreliably.
    Either way it says what to run to resume.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        signum = signals.received()
        # Only Lightning's own stop at a batch boundary leaves a consistent state: a second
        # signal (`Stopped`) can land mid-step, and any other exception is not a stop.
        if not isinstance(exception, SIGTERMException) or signum is None:
            return
        if trainer.state.fn != TrainerFn.FITTING or trainer.fast_dev_run:
            return
        if not trainer.is_global_zero:
            return  # DDP's state is the same on every rank; rank 0 writes it
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        path = Path(folder or Path(self.run_dir) / "checkpoints") / "last.ckpt"
        name = signal.Signals(signum).name
        signals.STATE.reported = True
        where = f"stopped by {name} at epoch {trainer.current_epoch}, step {trainer.global_step}"
        if trainer.training:
            for callback in trainer.checkpoint_callbacks:  # last.ckpt is theirs: no last-v1.ckpt
                if getattr(callback, "save_last", False) and Path(callback.dirpath) == path.parent:
                    callback.last_model_path = str(path)
            # Not trainer.save_checkpoint: its barrier would wait for ranks that may be gone.
            try:
                checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                trainer.strategy.save_checkpoint(checkpoint, path)
            except Exception as err:  # a full disk, say: say so, and keep the stop
                rank_zero_info(f"{where}: could not save {path} ({type(err).__name__}: {err})")
                return
            saved = f"saved {path}"
        elif path.is_file():
            saved = f"during validation: {path} holds the last completed epoch"
        else:
            rank_zero_info(f"{where}, during validation: no checkpoint yet to resume from")
            return
        rank_zero_info(f"{where}: {saved}\nresume with: {resume_command(self.run_dir)}")
