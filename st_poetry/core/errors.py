"""The errors a user can fix, and how each one ends a command: one line, never a traceback. Stdlib only."""

from __future__ import annotations

import errno

from st_poetry.core.log import get_logger


class UserError(Exception):
    """A mistake the user can fix (bad path, bad input, bad value): reported in one line, no traceback."""


# OSErrors that say something about the machine (full disk, permissions), not about the code: one line, no traceback.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})
INTERRUPTED_EXIT = 130  # what a shell reports for a command ended by Ctrl-C (128 + SIGINT)


def describe_os_error(error: OSError) -> str:
    """'No space left on device: path', the one line a machine error is reported in."""
    if not error.strerror:
        return str(error)
    return error.strerror + (f": {error.filename}" if error.filename else "")


def warn(message: str) -> None:
    """A problem that does not stop the stage but will bite later: one `warning: ...` line (the logger's)."""
    get_logger(__name__).warning(message)
