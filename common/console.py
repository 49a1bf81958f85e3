"""The console and the run's log file: one line per thing that matters, the same lines in both.

Lightning logs through its own `lightning.pytorch` logger, which does not reach the root logger
that Hydra gives the run's log file (`<run dir>/train.log`): `setup` hands that file to Lightning's
loggers and to warnings, on rank 0. `quiet_upstream` drops, by message, upstream lines that say
nothing to a user of this repo.
"""

import logging
import re
import warnings

# Messages that tell our users nothing (each says why it is safe to drop).
NOISE = (
    # Advertising for Lightning's cloud products.
    r"💡 Tip:",
    r"litlogger|litmodels",
    # Lightning 2.6 on torch 2.14 calls a deprecated torch API on every fit (DESIGN.md).
    r"isinstance\(treespec, LeafSpec\)",
    # Importing torch_geometric compiles a helper with torch.jit.script, which torch 2.14
    # deprecates: torch_geometric works the same (STACK_FACTS.md).
    r"`torch\.jit\.script` is deprecated",
    # Our progress bar and model summary are chosen in configs/callbacks/.
    r"Trainer already configured with model summary callbacks",
    r"TPU available: ",
    r"Loading `train_dataloader` to estimate number of stepping batches",
    # `common.signals` says it, with what happens next.
    r"Received SIGTERM: ",
    # The run directory guard refuses a folder with another run's files; a resumed run's own
    # checkpoints are expected there.
    r"Checkpoint directory .* exists and is not empty",
    # `Throughput` computes its figures for all ranks together, on rank 0.
    r"self\.log\('train/(samples_per_sec|epoch_seconds)'",
    # `RunNotes` lowers log_every_n_steps to the steps of an epoch and says so.
    r"is smaller than the logging interval Trainer\(log_every_n_steps",
    # Lightning 2.6 says so on every checkpoint it *saves* (whole training state, as resuming
    # needs); loading is weights_only=True throughout (common/train.py, common/runs.py).
    r"`weights_only` was not set, defaulting to `False`",
)
NOISE_RE = re.compile("|".join(NOISE))
UPSTREAM = ("lightning.pytorch", "lightning.fabric")


class _Noise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE_RE.search(record.getMessage())


_FILTER = _Noise()
_file_log = logging.getLogger("common.run_log")  # the log file only
_file_log.propagate = False
_file_log.addHandler(logging.NullHandler())  # not logging's stderr fallback when there is no file


def quiet_upstream() -> None:
    """Drop the `NOISE` lines from Lightning's console output and from warnings."""
    for name in UPSTREAM:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_FILTER)
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=f".*(?:{pattern})")


def _run_file_handler() -> logging.FileHandler | None:
    return next(
        (h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None
    )


def setup() -> None:
    """Send Lightning's messages and warnings to the run's log file as well (rank 0 only)."""
    from common.runs import is_rank_zero_process

    root, handler = logging.getLogger(), _run_file_handler()
    for name in (*UPSTREAM, _file_log.name):  # a sweep's earlier job's file
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)
    if handler is None:
        return
    if not is_rank_zero_process():  # ranks > 0 share rank 0's directory: one writer
        root.removeHandler(handler)
        return
    handler.addFilter(_FILTER)
    for name in (*UPSTREAM, _file_log.name):
        logger = logging.getLogger(name)
        if handler not in logger.handlers:
            logger.addHandler(handler)

    show = warnings.showwarning

    def show_and_log(message, category, filename, lineno, file=None, line=None):
        show(message, category, filename, lineno, file, line)
        _file_log.warning(f"{category.__name__}: {message}")

    if not getattr(warnings.showwarning, "logs_to_file", False):
        show_and_log.logs_to_file = True
        warnings.showwarning = show_and_log


def close() -> None:
    """Stop writing the run's log file (its run directory is being removed)."""
    handler = _run_file_handler()
    if handler is None:
        return
    for name in ("", *UPSTREAM, _file_log.name):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def record(message: str, level: int = logging.INFO) -> None:
    """Write `message` to the run's log file only (what the console shows as a table, say)."""
    _file_log.log(level, message)


def log_error(message: str) -> None:
    record(f"error: {message}", logging.ERROR)
