"""A source's validated rows kept on local disk between runs, keyed by the source's content version.

When a connector reports its source unchanged since a version (connectors.state.source_state), the
flow takes the rows validated at that version from here instead of rebuilding and validating
them again. One entry per source: `<key>.json` (version and validation digest, read first and
cheaply) and `<key>.pkl` (the frames). Both are written atomically (temp file, rename), owner-only.

The pickle is read only from this folder, which only this tool writes (next to the state
database); an entry whose version or digest does not match, or that cannot be read, is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

log = logging.getLogger(__name__)

FORMAT = 2  # of the entries; bump when SourceRows changes shape


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
        return self.folder / f"{key}.json", self.folder / f"{key}.pkl"

    def version(self, source: str, digest: str) -> str | None:
        """The version held for `source` when it was validated the way `digest` names; else None."""
        head, data = self._paths(source)
        try:
            meta = json.loads(head.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("digest") != digest:
            return None
        version = meta.get("version")
        return version if isinstance(version, str) and data.exists() else None

    def load(self, source: str, digest: str, version: str) -> SourceRows | None:
        """The rows held for `source` at exactly (`digest`, `version`), or None."""
        _, data = self._paths(source)
        try:
            with open(data, "rb") as fh:
                entry = pickle.load(fh)  # noqa: S301 - our own file, see the module docstring
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
            log.warning("validated rows of source %s unreadable (%s); rebuilding them", source, type(exc).__name__)
            return None
        if not isinstance(entry, dict) or (entry.get("format"), entry.get("digest"), entry.get("version")) != (
                FORMAT, digest, version) or not isinstance(entry.get("rows"), SourceRows):
            return None
        return entry["rows"]

    def save(self, source: str, digest: str, version: str, rows: SourceRows) -> None:
        """Replace the entry of `source` (the data first, then the header naming it)."""
        head, data = self._paths(source)
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = {"format": FORMAT, "digest": digest, "version": version, "rows": rows}
        _atomic_write(data, lambda fh: pickle.dump(entry, fh, protocol=pickle.HIGHEST_PROTOCOL))
        meta = json.dumps({"format": FORMAT, "digest": digest, "version": version}).encode()
        _atomic_write(head, lambda fh: fh.write(meta))

    def drop(self, source: str) -> None:
        for path in self._paths(source):
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
