"""State folders and files only their owner can write: created 0700 (files 0600), and refused with
a clear error when another user owns them or group/others may write them (a planted state store
or cache would otherwise be trusted by the owner's next run)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from connectors.errors import PipelineSyncError


class StateFolderError(PipelineSyncError):
    """A state folder or file is not private to the user running the tool: nothing is read from it."""


def _problem(path: Path, st: os.stat_result, what: str) -> str | None:
    if st.st_uid != os.geteuid():
        return (f"{what} {path} is not owned by you (uid {st.st_uid}, you are {os.geteuid()}): another user may "
                f"have planted it; remove it (or run as its owner)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): anyone could plant "
                f"files the next run trusts; check its contents, then chmod {'700' if stat.S_ISDIR(st.st_mode) else '600'} it")
    return None


def private_dir(path: Path, *, tighten: bool = True, what: str = "state folder") -> Path:
    """`path` as a folder only this user can write: created 0700 if missing (its parents normally),
    else checked; `tighten` also drops group/other read bits of an existing folder we own.
    `what` names the folder in the error (e.g. "token cache folder")."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # someone else was faster: checked below
            os.mkdir(path, 0o700)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StateFolderError(f"{what} {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StateFolderError(f"{what} {path} is not a folder; move it away")
    if (problem := _problem(path, st, what)) is not None:
        raise StateFolderError(problem)
    if tighten and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def check_private_file(path: Path, what: str = "state file") -> bool:
    """True when `path` exists and is ours and writable only by us; False when it is missing.

    Raises StateFolderError for a file someone else owns or may write."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateFolderError(f"{what} {path}: {exc.strerror}") from exc
    if (problem := _problem(Path(path), st, what)) is not None:
        raise StateFolderError(problem)
    return True


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` by what `write` writes into a new 0600 temp file beside it (then renamed):
    a reader sees the old file or the new one, never half of one. The temp file goes on failure."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "w+b") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
