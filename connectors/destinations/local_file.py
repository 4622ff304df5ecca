"""The local folder destination: an atomic copy of the rendered workbook."""

from __future__ import annotations

import contextlib
import os
import shutil
import string
import tempfile
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


def publish(staged: Path, target: Path) -> Path:
    """Copy `staged` to `target` atomically: a temp file in the same folder, fsync, rename.

    A crash or a full disk leaves the previous workbook untouched (and no temp file behind).
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
