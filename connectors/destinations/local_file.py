"""The local folder destination: an atomic copy of the rendered workbook."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import string
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.errors import DestinationError

if TYPE_CHECKING:
    from config.models.destinations import FileDestinationConfig
    from connectors.registry import PublishContext


def fill_placeholders(template: str, *, as_of: date, period: str) -> str:
    """Fill `{as_of}` and `{period}`; any other `{...}` (or a format spec on them) is an error naming it."""
    values = {"as_of": as_of.isoformat(), "period": period}
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DestinationError(
            f"destination path {template!r}: {exc}; write placeholders as {{as_of}} or {{period}} "
            "and a literal brace twice ({{ or }})"
        ) from None
    out = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in values or spec or conversion:
            whole = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise DestinationError(
                f"destination path {template!r}: unknown placeholder {whole}; use {{as_of}} or {{period}}"
            )
        out.append(values[name])
    return "".join(out)


def expand_path(template: str, *, as_of: date, period: str) -> Path:
    return Path(fill_placeholders(template, as_of=as_of, period=period))


def _file_mode(target: Path) -> int:
    """The replaced file's mode, or what a new file gets under the umask (mkstemp makes 0600)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


LEGACY_TEMP_AGE = 24 * 3600  # a temp file without a process tag is left to a live run for a day


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _tag() -> str:
    """`<host>.pid<pid>`: which process made a temp file or staging folder (so a later run can tell
    one left by a killed run from one a running process still uses)."""
    return f"{_host()}.pid{os.getpid()}"


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def clean_leftovers(folder: Path, name: str) -> list[str]:
    """Remove the `.{name}.*.tmp` files a killed run left in `folder` (its process gone, or untagged
    and older than a day); returns their names. Files of running processes stay."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:(?P<host>[A-Za-z0-9-]+)\.pid(?P<pid>\d+)\.)?[^./]+\.tmp$")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_uid != os.geteuid():
                continue
            stale = (_dead(int(m["pid"])) if m["host"] == _host() else False) if m["pid"] else (
                time.time() - st.st_mtime > LEGACY_TEMP_AGE)
            if stale:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


STAGING_PREFIX = "pipeline-sync-"


def staging_dir(prefix: str = STAGING_PREFIX) -> Path:
    """A new private staging folder in the temp dir, tagged with this process; first removes the
    staging folders of processes that died (a killed run) from the temp dir."""
    clean_staging()
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_tag()}."))


def clean_staging(root: str | None = None) -> list[str]:
    """Remove `pipeline-sync-*` staging folders in the temp dir left by dead processes of this host."""
    removed = []
    root = root or tempfile.gettempdir()
    tag = re.compile(rf"^{re.escape(STAGING_PREFIX)}.*?(?P<host>[A-Za-z0-9-]+)\.pid(?P<pid>\d+)\.[^./]+$")
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = tag.match(entry.name)
        if m is None or m["host"] != _host() or not _dead(int(m["pid"])):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def publish(staged: Path, target: Path) -> Path:
    """Copy `staged` to `target` atomically: a temp file in the same folder, fsync, rename.

    A crash or a full disk leaves the previous workbook untouched (and no temp file behind); the
    temp files of a run that was killed are removed by the next publish to the same folder.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(target.parent, target.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_tag()}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DestinationError(f"cannot write {target}: {exc.strerror or exc}; the previous file is unchanged") from exc
    try:
        with os.fdopen(fd, "wb") as out, open(staged, "rb") as src:
            shutil.copyfileobj(src, out, length=1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DestinationError(f"cannot write {target}: {exc.strerror or exc}; the previous file is unchanged") from exc
    return target


def publish_to(dest: FileDestinationConfig, staged: Path, ctx: PublishContext) -> str:
    """The `file` destination's publisher (connectors.registry): `dest.path` with its placeholders filled."""
    target = expand_path(dest.path, as_of=ctx.as_of, period=ctx.period)
    publish(staged, target)
    return str(target)
