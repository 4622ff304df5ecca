"""The OS file lock the state folder's lock files share (report runs, Tableau token sessions)."""

from __future__ import annotations

import fcntl


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on the open file `fd` without waiting; False when another process holds it.

    The lock is the kernel's (flock): it goes with the process, so a crashed run never leaves it held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
