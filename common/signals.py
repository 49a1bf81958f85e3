"""Stopping on a signal: SIGTERM (a scheduler, `kill`), SIGINT (Ctrl+C), SIGUSR1 (SLURM's
warning before a preemption, `sbatch --signal=USR1@120`).

The first signal during training asks Lightning's loops to stop at the next batch boundary
(its own SIGTERM flag); the `StopOnSignal` callback then saves a resumable checkpoint and says how
to resume, and the entry point exits with 128 + the signal's number, as a shell reports a process
killed by it: never 0, so `make train && make eval` and schedulers see the run did not finish. A
second signal, or one outside training, stops at once. Under DDP the signal is forwarded to the
ranks Lightning started; each exits non-zero.
"""

import os
import signal
import sys

from lightning.pytorch.utilities.rank_zero import rank_zero_info

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Stopped(BaseException):
    """Raised where the program was when a signal asked it to stop at once (outside training)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _State:
    signum: int | None = None  # the first stop signal received
    trainer = None  # the Trainer whose loops a signal stops (set by `watch`)


STATE = _State()


def received() -> int | None:
    """The stop signal this process received, or None."""
    return STATE.signum


def exit_code(default: int = signal.SIGTERM) -> int:
    """128 + the signal's number, as a shell reports a process killed by it."""
    return 128 + (STATE.signum or default)


def watch(trainer) -> None:
    """Make a signal stop `trainer` at its next batch boundary instead of raising mid-step."""
    STATE.trainer = trainer


def _training(trainer) -> bool:
    from lightning.pytorch.trainer.states import TrainerStatus

    return trainer is not None and trainer.state.status == TrainerStatus.RUNNING


def _handle(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    trainer = STATE.trainer
    if STATE.signum is not None or not _training(trainer):
        STATE.signum = STATE.signum or signum
        raise Stopped(signum)
    STATE.signum = signum
    # Lightning checks this flag after each batch (and broadcasts rank 0's under DDP).
    trainer._signal_connector.received_sigterm = True
    launcher = trainer.strategy.launcher
    if signum != signal.SIGTERM and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGTERM)  # Lightning forwards SIGTERM itself; the others we do
    rank_zero_info(f"received {name}: stopping after this batch (again: stop at once)")


def install() -> None:
    """Handle the stop signals in this process (the main thread's job; a no-op elsewhere).

    Installed before the Trainer exists, so Lightning's SLURM auto-requeue leaves SIGUSR1 to us
    (the README's SLURM script requeues on exit code 138) and chains its SIGTERM handler to ours.
    """
    for signum in SIGNALS:
        try:
            signal.signal(signum, _handle)
        except ValueError:  # not the main thread
            return


def die_with_parent() -> None:
    """End this process when the process that started it ends (Linux): a DDP rank that Lightning
    started must not outlive rank 0, wait on it for minutes and print tracebacks after the shell
    prompt is back."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone before prctl took effect
        os._exit(exit_code(signal.SIGKILL))
