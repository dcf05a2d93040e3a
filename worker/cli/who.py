"""Who ran a command, for the notes and columns that record it (resolved_by, approved_by,
a reactivation's note)."""

from __future__ import annotations

import getpass
import os

MAX_NAME = 40


def who() -> str:
    """The login name; in a container running under a UID with no passwd entry (and no
    USER or LOGNAME set) there is none, and the UID stands for it."""
    try:
        return getpass.getuser()[:MAX_NAME]
    except (OSError, KeyError):
        return f"uid {os.getuid()}"
