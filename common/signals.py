"""Stopping on a signal: SIGTERM (a scheduler, `kill`), SIGINT (Ctrl+C), SIGUSR1 (SLURM's
warning before a preemption, `sbatch --signal=USR1@120`).

The first signal during training asks Lightning's loops to stop at the next batch boundary
(its own SIGTERM flag); the `StopOnSignal` callback then saves a resumable checkpoint and says how
to resume, and the entry point exits with 128 + the signal's number, as a shell reports a process
killed by it: never 0, so `make train && make eval` and schedulers see the run did not finish. A
second signal, or one outside training, stops at once. Under DDP rank 0 decides: Lightning
broadcasts its stop to every rank before each batch, and each rank exits non-zero.
"""

import os
import signal
import sys
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Stopped(BaseException):
    """Raised where the program was when a signal asked it to stop at once (outside training)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _State:
    signum: int | None = None  # the first stop signal received
    trainer = None  # the Trainer whose loops a signal stops (set by `watch`)
    reported = False  # the stop was explained on the console (`StopOnSignal`)


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


def _say(message: str) -> None:
    # A signal handler may interrupt a write to stderr: logging or print could re-enter it.
    os.write(2, f"{message}\n".encode())


def _handle(signum: int, frame) -> None:
    from common.runs import is_rank_zero_process

    trainer = STATE.trainer
    if not is_rank_zero_process():
        # Ranks > 0 follow rank 0, whose flag Lightning broadcasts before every batch: stopping
        # on their own (a terminal's Ctrl+C reaches every rank) would leave a collective half
        # done. They end with rank 0 (`die_with_parent`), or at the same batch boundary.
        STATE.signum = STATE.signum or signum
        return
    if STATE.signum is not None or not _training(trainer):
        STATE.signum = STATE.signum or signum
        raise Stopped(signum)
    STATE.signum = signum
    # Lightning checks this flag after each batch and broadcasts rank 0's to every rank before
    # the next; there is no public way to ask for a stop at a batch boundary.
    trainer._signal_connector.received_sigterm = True
    name = signal.Signals(signum).name
    _say(f"received {name}: stopping after this batch (again: stop at once)")


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
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent was already gone before prctl took effect
        os._exit(exit_code(signal.SIGKILL))


def wait_for_rank_zero(timeout: float = 30.0) -> None:
    """In a DDP rank that Lightning started, before it exits on a stop: wait (at most `timeout`
    seconds) for rank 0 to end first, which ends this process too (`die_with_parent`).

    Lightning's launcher in rank 0 checks its child ranks every 5 s, and SIGKILLs rank 0 when one
    has exited non-zero: a rank that left first could have rank 0 killed before it said why it
    stopped and released its run directory (make then says "Killed", not "Error 143"). External
    launchers (torchrun, SLURM) start every rank themselves and wait for all of them: nothing
    to wait for there.
    """
    if any(key in os.environ for key in ("TORCHELASTIC_RUN_ID", "SLURM_PROCID")):
        return
    parent = os.getppid()
    deadline = time.monotonic() + timeout
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)
