"""A source's validated rows kept on local disk between runs, keyed by the source's content version.

When a connector reports its source unchanged since a version (connectors.state.source_state), the
flow takes the rows validated at that version from here instead of rebuilding and validating
them again. One entry per source: `<key>.json` (format, version, validation digest and the
SHA-256 and size of the data, read first and cheaply), `<key>.npz` (the frames as plain numpy
arrays, connectors.state.frames: a format that cannot run code) and, after runs that merged their
changes into the rows they held, `<key>.patch.npz`: the rows added since that full copy and where
each row comes from (connectors.state.validated_patch), so such a run writes what changed. All are
written atomically (temp file, rename), 0600, in a 0700 folder.

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

import numpy as np
import pandas as pd

from connectors.state import frames
from connectors.state.private import atomic_write, check_private_file, private_dir
from connectors.state.validated_patch import PATCHED, Held, Merged, compose

log = logging.getLogger(__name__)

FORMAT = 4  # of the entries; bump when SourceRows or connectors.state.frames changes shape (1 was a pickle:
# never read again; 2 had no field history; 3 stored every text cell's text)
PATCHED_FORMAT = 5  # a header naming a full copy and a patch (the full copy is of FORMAT)
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
    held: Held | None = None  # read from the cache: what it was read from (set by ValidatedCache.load)
    merged: Merged | None = None  # merged into held rows (flows.pipeline._validate_delta): save writes a patch

    def frame(self, name: str) -> pd.DataFrame | None:
        return getattr(self, name)


class ValidatedCache:
    """Entries under `folder`, one per source name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _paths(self, source: str) -> tuple[Path, Path, Path]:
        key = hashlib.sha256(source.encode()).hexdigest()[:24]
        return self.folder / f"{key}.json", self.folder / f"{key}.npz", self.folder / f"{key}.patch.npz"

    def _header(self, source: str, digest: str) -> dict | None:
        """The entry's header when it is ours, of this format and this digest; else None."""
        if not self.folder.exists():
            return None
        private_dir(self.folder)
        head, data, patch = self._paths(source)
        if not check_private_file(head, "validated-rows file") or not check_private_file(data, "validated-rows file"):
            return None
        try:
            meta = json.loads(head.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, PATCHED_FORMAT) or meta.get(
                "digest") != digest:
            return None
        ok = (isinstance(meta.get("version"), str) and _sized(meta))
        if meta["format"] == PATCHED_FORMAT:
            ok = ok and isinstance(meta.get("patch"), dict) and _sized(meta["patch"]) and isinstance(
                meta["patch"].get("base_version"), str) and check_private_file(patch, "validated-rows file")
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
        _, path, patch_path = self._paths(source)
        try:
            rows = self._read(source, digest, version, meta, path, patch_path)
        except OSError as exc:
            log.warning("validated rows of source %s unreadable (%s); rebuilding them", source, exc.strerror)
            return None
        except _Mismatch:
            log.warning("validated rows of source %s do not match their checksum; rebuilding them", source)
            return None
        except Exception as exc:  # noqa: BLE001 - a checksummed entry we cannot read is a miss, never a crash
            log.warning("validated rows of source %s unreadable (%s); rebuilding them", source, type(exc).__name__)
            return None
        return rows

    def _read(self, source: str, digest: str, version: str, meta: dict, path: Path,
              patch_path: Path) -> SourceRows | None:
        patch = meta.get("patch")
        patches: dict[int, tuple[np.ndarray, pd.DataFrame, int]] = {}
        added: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
        base_rows: dict[str, int] = {}
        rejected = None
        if patch is not None:  # read first: small, and it says how to read the full copy
            with open(patch_path, "rb") as fh:
                (rejected, *parts), extra = _checked_frames(fh, patch)
            if (extra.get("source"), extra.get("digest"), extra.get("version")) != (source, digest, version):
                return None
            for k, name in enumerate(PATCHED):
                new, where = parts[2 * k], parts[2 * k + 1]
                if (new is None) != (where is None):
                    raise ValueError("a patch frame without its positions")
                if new is not None:
                    positions = where.iloc[:, 0].to_numpy(dtype=np.int64)
                    added[name] = (positions, new)
                    patches[_FRAMES.index(name)] = (positions, new, int(extra["base_rows"][name]))
            dtypes, patched_extra = extra["dtypes"], extra
            base_rows = {n: int(extra["base_rows"][n]) for n in added}
        with open(path, "rb") as fh:
            base_frames, extra = _checked_frames(fh, meta, patches)
        loaded, base_rejected, history, raw, field_history = base_frames
        if patch is None:
            want, rejected = version, base_rejected
        else:
            want, extra = patch["base_version"], {**extra, "rows_read": patched_extra["rows_read"]}
            frames_by_name = dict(zip(_FRAMES, base_frames, strict=True))
            if any([str(d) for d in frames_by_name[n].dtypes] != dtypes[n] for n in added):
                raise ValueError("patched rows read back with other types")
        if (extra.get("source"), extra.get("digest"), extra.get("version")) != (source, digest, want) or (
                loaded is None or rejected is None):
            return None
        rows = SourceRows(loaded, rejected, history, raw, int(extra["rows_read"]), field_history)
        full_rows = {n: base_rows[n] if n in added else len(rows.frame(n)) for n in PATCHED if rows.frame(n) is not None}
        rows.held = Held(meta["sha256"], full_rows, {n: list(rows.frame(n).columns) for n in full_rows}, added)
        return rows

    def save(self, source: str, digest: str, version: str, rows: SourceRows) -> None:
        """Replace the entry of `source` (the data first, then the header naming it). Rows merged
        into the rows read from this entry are written as a patch over its full copy (see
        validated_patch); otherwise, or when a full copy is due, every row. Rows this format cannot
        hold exactly are not kept (the next run validates them again)."""
        head, path, patch_path = self._paths(source)
        private_dir(self.folder)
        if rows.merged is not None and self._save_patch(source, digest, version, rows):
            return
        try:
            size, sha = _write_frames(path, [rows.frame(n) for n in _FRAMES],
                                      {"source": source, "digest": digest, "version": version,
                                       "rows_read": rows.rows_read})
        except frames.Unsupported as exc:
            log.info("source %s: validated rows not kept for the next run (%s)", source, exc)
            self.drop(source)
            return
        meta = json.dumps({"format": FORMAT, "digest": digest, "version": version, "sha256": sha,
                           "size": size}).encode()
        atomic_write(head, lambda fh: fh.write(meta))
        patch_path.unlink(missing_ok=True)
        head.with_suffix(".pkl").unlink(missing_ok=True)  # an entry of format 1

    def _save_patch(self, source: str, digest: str, version: str, rows: SourceRows) -> bool:
        """Write `rows` as a patch over the full copy they were merged from; False when that copy is
        no longer this entry's or a full copy is due (the caller writes one)."""
        merged = rows.merged
        assert merged is not None
        meta = self._header(source, digest)
        if meta is None or meta["version"] != merged.base_version or meta["sha256"] != merged.held.base_sha:
            return False
        parts = compose(merged, {n: rows.frame(n) for n in PATCHED})
        if parts is None:
            return False
        head, _, patch_path = self._paths(source)
        stored: list[pd.DataFrame | None] = [rows.rejected]
        for name in PATCHED:
            positions, new = parts.get(name, (None, None))
            stored += [new, None if positions is None else pd.DataFrame({"position": positions})]
        dtypes = {n: [str(d) for d in rows.frame(n).dtypes] for n in parts}
        base_version = meta["version"] if meta["format"] == FORMAT else meta["patch"]["base_version"]
        try:
            size, sha = _write_frames(patch_path, stored, {
                "source": source, "digest": digest, "version": version, "rows_read": rows.rows_read,
                "dtypes": dtypes, "base_rows": {n: merged.held.base_rows[n] for n in parts}})
        except frames.Unsupported:
            return False
        header = json.dumps({"format": PATCHED_FORMAT, "digest": digest, "version": version,
                             "sha256": meta["sha256"], "size": meta["size"],
                             "patch": {"sha256": sha, "size": size, "base_version": base_version}}).encode()
        atomic_write(head, lambda fh: fh.write(header))
        return True

    def drop(self, source: str) -> None:
        for path in self._paths(source):
            path.unlink(missing_ok=True)


_FRAMES = ("loaded", "rejected", "history", "raw", "field_history")  # the order of a full copy's frames


class _Mismatch(Exception):
    """A data file whose size or SHA-256 is not the header's."""


def _sized(meta: dict) -> bool:
    return (isinstance(meta.get("sha256"), str) and isinstance(meta.get("size"), int)
            and 0 <= meta["size"] <= MAX_ENTRY_BYTES)


def _write_frames(path: Path, stored: list[pd.DataFrame | None], extra: dict) -> tuple[int, str]:
    """Write the frames into `path` atomically, streamed a column at a time, and return the file's
    size and SHA-256 (read back from the file); raises frames.Unsupported (then nothing is written)."""
    written: list[tuple[int, str]] = []

    def write(fh: BinaryIO) -> None:
        frames.dump_to(fh, stored, extra)
        fh.flush()
        fh.seek(0)
        written.append(_digest(fh))

    atomic_write(path, write)
    return written[0]


def _checked_frames(fh: BinaryIO, meta: dict, patches: dict | None = None) -> tuple[list, dict]:
    """The frames of the open data file `fh`, once its size and SHA-256 are the header's (`meta`);
    the same open file is read again, so what was checked is what is read (the folder is ours alone)."""
    size, sha = _digest(fh, meta["size"] + 1)
    if size != meta["size"] or sha != meta["sha256"]:
        raise _Mismatch
    fh.seek(0)
    return frames.load(fh, patches)


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
