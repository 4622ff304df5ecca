"""The last workbook a report published, kept on local disk with the key of everything it shows
(flows.kept_workbook), so a run whose inputs all have that key writes it again instead of
analysing and rendering the same rows (connectors.workbook.reuse).

One entry per report: `<key>.json` (format, the inputs' key, the workbook's SHA-256 and size, and
what the run reports besides the workbook: rows per sheet, notes, flag count, per source counts,
the About rows) and `<key>.xlsx`. Written atomically, 0600, in a 0700 folder; a folder or file
another user owns or may write is refused (StateFolderError). A workbook whose SHA-256 differs
from its header's is a miss, never copied.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from connectors.state.private import atomic_write, check_private_file, private_dir

FORMAT = 1
MAX_WORKBOOK_BYTES = 4 << 30  # connectors.workbook.reuse writes no ZIP64


@dataclass
class Kept:
    """A kept workbook whose checksum matched, and what its run reported (`meta`)."""

    path: Path
    meta: dict[str, Any]


class KeptWorkbooks:
    """Entries under `folder`, one per report name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _paths(self, report: str) -> tuple[Path, Path]:
        key = hashlib.sha256(report.encode()).hexdigest()[:24]
        return self.folder / f"{key}.json", self.folder / f"{key}.xlsx"

    def match(self, report: str, key: str) -> Kept | None:
        """The workbook kept for `report` when its inputs had `key` and its bytes are as kept; else None."""
        if not self.folder.exists():
            return None
        private_dir(self.folder)
        head, book = self._paths(report)
        if not check_private_file(head, "kept workbook file") or not check_private_file(book, "kept workbook file"):
            return None
        try:
            meta = json.loads(head.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key \
                or meta.get("report") != report or not isinstance(meta.get("size"), int):
            return None
        try:
            if book.stat().st_size != meta["size"] or _sha256(book) != meta.get("sha256"):
                return None
        except OSError:
            return None
        return Kept(book, meta)

    def save(self, report: str, key: str, workbook: Path, meta: dict[str, Any], *, move: bool = False) -> None:
        """Replace the entry of `report` with `workbook` (the workbook first, then the header naming
        it); a workbook this store would not rewrite is not kept. `move`: the caller is done with
        `workbook`, so it is renamed into the store when it is on the same file system (no copy of
        a workbook that may be hundreds of MB); otherwise, and without `move`, it is copied."""
        head, book = self._paths(report)
        private_dir(self.folder)
        size = workbook.stat().st_size
        if size >= MAX_WORKBOOK_BYTES:
            self.drop(report)
            return
        head.unlink(missing_ok=True)  # no header names a half-replaced workbook
        h = hashlib.sha256()
        if move and _moved(workbook, book):
            digest = _sha256(book)
        else:
            atomic_write(book, lambda out: _copy(workbook, out, h))  # hashed as it is copied: read once
            digest = h.hexdigest()
        body = json.dumps({**meta, "format": FORMAT, "report": report, "key": key, "size": size,
                           "sha256": digest}).encode()
        atomic_write(head, lambda out: out.write(body))

    def drop(self, report: str) -> None:
        for path in self._paths(report):
            path.unlink(missing_ok=True)


def _moved(workbook: Path, book: Path) -> bool:
    """`workbook` renamed to `book`, made 0600 (False, and nothing changed, across file systems)."""
    try:
        os.chmod(workbook, 0o600)
        os.replace(workbook, book)
    except OSError:
        return False
    return True


def _copy(workbook: Path, out: BinaryIO, h: Any) -> None:
    with open(workbook, "rb") as src:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
