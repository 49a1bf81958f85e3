"""What every entry point (`python -m common.<verb>`, `make <verb>`) runs around its task.

    @entry("train")
    def main(cfg): ...

- A config mistake (a misspelled key, an unknown config option, a bad value type) is one
  `error:` line with the nearest valid name, before any work.
- A `UserError` in the task is one `error:` line; a launch that fails before training or testing
  began leaves no run directory behind.
- SIGTERM, SIGINT and SIGUSR1 end the process with 128 + the signal's number (`common.signals`).
- The run directory's log file holds what the console shows (rank 0), minus upstream noise.
- Bugs keep their full traceback. `HYDRA_FULL_ERROR=1` shows one for user errors too.
"""

import difflib
import functools
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.errors import HydraException, InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from common import console, signals
from common.checks import check_config
from common.errors import UserError, user_message
from common.resolvers import register_resolvers
from common.runs import RUN, RunDirRefused, is_rank_zero_process, release_lock, remove_if_unused

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
USER_ERRORS = (UserError, InstantiationException, MisconfigurationException)
STOPS = (signals.Stopped, SIGTERMException, KeyboardInterrupt)


# The user's HYDRA_FULL_ERROR. `main` sets that variable to 1 so that Hydra raises its errors to
# us, and puts the user's value back while the task runs (the DDP ranks Lightning starts inherit
# the environment of that moment).
_user_full_error: str | None = os.environ.get("HYDRA_FULL_ERROR")


def full_errors_wanted() -> bool:
    return _user_full_error == "1"


def _hydra_full_error(value: str | None) -> None:
    if value is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = value


def fail(message: str, code: int = 1):
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def config_message(err: Exception) -> str:
    """Hydra's or OmegaConf's multi-line message as one line, with the nearest valid key."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if (
        isinstance(cause, ConfigKeyError | ConfigAttributeError)
        and getattr(cause, "parent_node", None) is not None
    ):
        full_key, key = str(cause.full_key), str(cause.key)
        prefix = full_key[: -len(key)] if full_key.endswith(key) else ""
        names = [str(k) for k in cause.parent_node.keys()]
        if not prefix:  # the top level: config groups are chosen there too (project=, data=)
            names += [p.name for p in CONFIGS.iterdir() if p.is_dir()]
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"; did you mean {prefix}{near[0]}?" if near else ""
        if "_target_" in cause.parent_node:  # a class's arguments: `+` cannot add one it lacks
            return f"{full_key} is not a config key{hint}"
        return f"{full_key} is not a config key{hint} (+{full_key}=... adds a new one)"
    lines = [line.strip() for line in str(err).splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(("full_key:", "object_type=", "See "))]
    return " ".join(keep) or type(err).__name__


def stopped(err: BaseException) -> None:
    """End a process that a signal stopped: 128 + the signal's number, one line from rank 0."""
    if is_rank_zero_process():
        if not signals.STATE.reported:
            name = signal.Signals(signals.received() or signal.SIGTERM).name
            print(f"stopped by {name}", file=sys.stderr)
        if not isinstance(err, STOPS):
            print(f"(while stopping: {type(err).__name__}: {err})", file=sys.stderr)
        raise SystemExit(signals.exit_code())
    sys.stdout.flush()
    sys.stderr.flush()
    signals.wait_for_rank_zero()  # rank 0 reports the stop and ends the job (and this rank)
    os._exit(signals.exit_code())  # a rank > 0 waits on no teardown of a group rank 0 has left


def discard_unused_run() -> None:
    """Remove the run directory of a launch that failed before training or testing began."""
    if remove_if_unused(RUN.dir):
        console.close()


def entry(config_name: str):
    """Turn `task(cfg)` into a `main()` that runs it under Hydra with the care described above."""

    def decorate(task):
        @functools.wraps(task)
        def run_task(cfg: DictConfig):
            _hydra_full_error(_user_full_error)
            if not is_rank_zero_process():
                signals.die_with_parent()
            console.setup()
            try:
                check_config(cfg)
                return task(cfg)
            except STOPS:
                discard_unused_run()
                raise
            except USER_ERRORS as err:
                if full_errors_wanted():
                    raise
                console.log_error(user_message(err))
                discard_unused_run()
                fail(user_message(err))
            except BaseException:
                if signals.received() is not None:
                    raise  # a rank whose peers stopped: its collective failed, say nothing
                discard_unused_run()
                raise
            finally:
                release_lock()
                _hydra_full_error("1")  # Hydra re-raises what the task raised

        hydra_main = hydra.main(
            version_base="1.3", config_path="../configs", config_name=config_name
        )(run_task)

        def main() -> None:
            register_resolvers()
            signals.install()
            console.quiet_upstream()
            _hydra_full_error("1")
            try:
                hydra_main()
            except STOPS as err:
                stopped(err)
            except (HydraException, OmegaConfBaseException) as err:
                if full_errors_wanted():
                    raise
                fail(config_message(err))
            except RunDirRefused as err:
                fail(str(err))
            except BaseException as err:
                if signals.received() is None:
                    raise
                stopped(err)  # a collective that failed as its peers stopped

        return main

    return decorate
