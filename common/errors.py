"""One readable message and a non-zero exit for mistakes a user can fix.

Bugs still raise with a full traceback; `HYDRA_FULL_ERROR=1` shows one for user errors too.
"""

import functools
import os
import sys

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException


class UserError(Exception):
    """A mistake the user can fix (config, data, checkpoint): printed without a traceback."""


def _message(err: BaseException) -> str:
    # Hydra wraps errors raised in a `_target_`'s constructor; show the inner one when it is ours.
    cause = err.__cause__
    if isinstance(err, InstantiationException) and isinstance(
        cause, (UserError, MisconfigurationException)
    ):
        return str(cause)
    return str(err)


def exit_on_user_error(fn):
    """Wrap a Hydra task function: user errors become `error: ...` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, InstantiationException, MisconfigurationException) as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {_message(err)}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper
