"""One error hierarchy. Every message is one line that says what is wrong and how to fix it.

The CLI prints ``error: <message>`` for any EdgeoptError and exits with status 2; anything else
is a bug in edgeopt and keeps its traceback.
"""

from __future__ import annotations

import errno


class EdgeoptError(Exception):
    """A problem the user can fix; the message says how."""


class DataError(EdgeoptError):
    """The image folder, a split file or an image is missing or unusable."""


class ModelError(EdgeoptError):
    """A model file is missing, of the wrong kind, or does not fit the data."""


class OutputExistsError(EdgeoptError):
    """The output folder exists and --force was not given."""


class ConfigError(EdgeoptError):
    """An option or a config value is out of range or unknown."""


class BackendUnavailableError(EdgeoptError):
    """An optional runtime or converter is not installed."""


class DiskFullError(EdgeoptError):
    """The disk (or the user's quota) filled while a command wrote its output."""


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError of a write that found no space left (ENOSPC) or no quota (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
