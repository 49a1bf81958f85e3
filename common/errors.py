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


def first_line(err: BaseException) -> str:
    """An exception's first non-empty line (its type's name when it has no message): what a
    UserError wrapping a library's failure quotes, rather than 200 lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def weights_mismatch(err: BaseException) -> str:
    """The first mismatch of torch's load_state_dict error (one per line, after a header)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else first_line(err)).rstrip(".")
