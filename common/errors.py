"""Mistakes a user can fix, told in one line (`common.entry` prints them as `error: ...`)."""

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException


class UserError(Exception):
    """A mistake the user can fix (config, data, checkpoint): printed without a traceback."""


def user_message(err: BaseException) -> str:
    """The one line to show for a user error."""
    # Hydra wraps errors raised in a `_target_`'s constructor; show the inner one when it is ours.
    cause = err.__cause__
    if isinstance(err, InstantiationException) and isinstance(
        cause, (UserError, MisconfigurationException)
    ):
        err = cause
    return " ".join(str(err).split())  # Lightning's messages span lines
