"""A source's validated rows kept on local disk between runs, keyed by the source's content version.

When a connector reports its source unchanged since a version (connectors.state.source_state), the
flow takes the rows validated at that version from here instead of rebuilding and validating
them again. One entry per source: `<key>.json` (format, version, validation digest and the
SHA-256 and size of the data, read first and cheaply) and `<key>.npz` (the frames as plain numpy
arrays, connectors.state.frames: a format that cannot run code). Both are written atomically
(temp file, rename), 0600, in a 0700 folder.

The data is read only when its SHA-256 equals the header's, and then without pickle: a corrupted
or truncated entry is a miss (the rows are rebuilt), never different data and never a crash. A
folder or file another user owns, or that group/others may write, is refused (StateFolderError).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from connectors.state import frames
from connectors.state.private import atomic_write, check_private_file, private_dir

log = logging.getLogger(__name__)

FORMAT = 4  # of the entries; bump when SourceRows or connectors.state.frames changes shape (1 was a pickle:
# never read again; 2 had no field history; 3 stored every text cell's text)
MAX_ENTRY_BYTES = 8 << 30  # a header naming a larger data file is not believed


@dataclass
class SourceRows:
    """One source's rows after validation: loaded, rejected (with reasons), stage history, raw export,
    field history."""

    loaded: pd.DataFrame
    rejected: pd.DataFrame
    history: pd.DataFrame | None
    raw: pd.DataFrame | None
    rows_read: int
    field_history: pd.DataFrame | None = None  # typed close_date / amount history (transforms.field_history)


class ValidatedCache:
    """Entries under `folder`, one per source name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _paths(self, source: str) -> tuple[Path, Path]:
        key = hashlib.sha256(source.encode()).hexdigest()[:24]
        return self.folder / f"{key}.json", self.folder / f"{key}.npz"

    def _header(self, source: str, digest: str) -> dict | None:
        """The entry's header when it is ours, of this format and this digest; else None."""
        if not self.folder.exists():
            return None
        private_dir(self.folder)
        head, data = self._paths(source)
        if not check_private_file(head, "validated-rows file") or not check_private_file(data, "validated-rows file"):
            return None
        try:
            meta = json.loads(head.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("digest") != digest:
            return None
        ok = (isinstance(meta.get("version"), str) and isinstance(meta.get("sha256"), str)
              and isinstance(meta.get("size"), int) and 0 <= meta["size"] <= MAX_ENTRY_BYTES)
        return meta if ok else None

    def version(self, source: str, digest: str) -> str | None:
        """The version held for `source` when it was validated the way `digest` names; else None."""
        meta = self._header(source, digest)
        return None if meta is None else meta["version"]

    def load(self, source: str, digest: str, version: str) -> SourceRows | None:
        """The rows held for `source` at exactly (`digest`, `version`), or None (a miss)."""
        meta = self._header(source, digest)
        if meta is None or meta["version"] != version:
            return None
        _, path = self._paths(source)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the frames are read from it
        except OSError as exc:
            log.warning("validated rows of source %s unreadable (%s); rebuilding them", source, exc.strerror)
            return None
        with fh:
            try:
                size, sha = _digest(fh, meta["size"] + 1)
            except OSError as exc:
                log.warning("validated rows of source %s unreadable (%s); rebuilding them", source, exc.strerror)
                return None
            if size != meta["size"] or sha != meta["sha256"]:
                log.warning("validated rows of source %s do not match their checksum; rebuilding them", source)
                return None
            try:  # the same open file, read again: what was checked is what is read (the folder is ours alone)
                fh.seek(0)
                (loaded, rejected, history, raw, field_history), extra = frames.load(fh)
                rows = SourceRows(loaded, rejected, history, raw, int(extra["rows_read"]), field_history)
            except Exception as exc:  # noqa: BLE001 - a checksummed entry we cannot read is a miss, never a crash
                log.warning("validated rows of source %s unreadable (%s); rebuilding them", source,
                            type(exc).__name__)
                return None
        if (extra.get("source"), extra.get("digest"), extra.get("version")) != (source, digest, version) or (
                loaded is None or rejected is None):
            return None
        return rows

    def save(self, source: str, digest: str, version: str, rows: SourceRows) -> None:
        """Replace the entry of `source` (the data first, then the header naming it). Rows this
        format cannot hold exactly are not kept (the next run validates them again)."""
        head, path = self._paths(source)
        private_dir(self.folder)
        written: list[tuple[int, str]] = []

        def write(fh: BinaryIO) -> None:  # streamed into the temp file a column at a time, then checksummed
            frames.dump_to(fh, [rows.loaded, rows.rejected, rows.history, rows.raw, rows.field_history],
                           {"source": source, "digest": digest, "version": version, "rows_read": rows.rows_read})
            fh.flush()
            fh.seek(0)
            written.append(_digest(fh))

        try:
            atomic_write(path, write)
        except frames.Unsupported as exc:
            log.info("source %s: validated rows not kept for the next run (%s)", source, exc)
            self.drop(source)
            return
        size, sha = written[0]
        meta = json.dumps({"format": FORMAT, "digest": digest, "version": version, "sha256": sha,
                           "size": size}).encode()
        atomic_write(head, lambda fh: fh.write(meta))
        head.with_suffix(".pkl").unlink(missing_ok=True)  # an entry of format 1

    def drop(self, source: str) -> None:
        for path in self._paths(source):
            path.unlink(missing_ok=True)


def _digest(fh: BinaryIO, limit: int | None = None) -> tuple[int, str]:
    """(bytes read, their SHA-256) from `fh`'s position to its end (at most `limit` bytes), 1 MiB at a time."""
    h, size = hashlib.sha256(), 0
    while limit is None or size < limit:
        chunk = fh.read(1 << 20 if limit is None else min(1 << 20, limit - size))
        if not chunk:
            break
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()
