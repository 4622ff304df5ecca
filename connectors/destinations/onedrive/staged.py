"""The rendered workbook as `mode: update_sheets` refreshes it: each sheet's rows, formats and table.

A sheet's table is the one the xlsx writer wrote on it, found through the package's own
relationships (workbook -> worksheet part -> its table parts, ECMA-376 Part 2 §9; a worksheet's
tables are its `table` relationships, Part 1 §18.5.1), never recomputed from the sheet name: the
writer names tables once (connectors/workbook/plan.py with names.TableNames: `tbl_2026` for sheet
`2026`, `tblRaw_CRM_2` for the second of `Raw-CRM` / `Raw_CRM`), and the file holds the names it
chose. The sheet's data is a table when a table of the sheet starts at A1 (a data sheet's table
spans the sheet); tables further down (those of a form sheet's blocks) leave the sheet written as
plain cells.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET  # noqa: N817 - the stdlib's own short name
import zipfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl

from connectors.destinations.onedrive.workbook_session import Formula, parse

_EXCEL_EPOCH = datetime(1899, 12, 30)
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_DOC_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
Area = tuple[int, int, int, int]


@dataclass
class StagedSheet:
    """One sheet of the rendered workbook: its rows (header first when it has a table)."""

    name: str
    rows: list[list[Any]]
    formats: list[list[str | None]]  # per cell, as `rows` (the writer's per-column and per-row formats); None = General
    table: str | None  # the name of the sheet's table, as the writer wrote it, when its data is one

    def format_at(self, i: int, j: int) -> str | None:
        """The number format of row `i`, column `j` (0-based; None: General, or outside the sheet)."""
        return self.formats[i][j] if i < len(self.formats) and j < len(self.formats[i]) else None

    @property
    def width(self) -> int:
        return max((len(r) for r in self.rows), default=1) or 1


def _cell_value(cell: Any) -> Any:
    """A value for the Graph `values` array: dates as serial numbers, formulas as Formula, text as it is."""
    v = cell.value
    if v is None:
        return ""
    if getattr(cell, "data_type", None) == "f":
        return Formula(v)  # a formula of the rendered workbook
    if isinstance(v, datetime):
        return (v.replace(tzinfo=None) - _EXCEL_EPOCH).total_seconds() / 86400
    if isinstance(v, date):
        return (datetime(v.year, v.month, v.day) - _EXCEL_EPOCH).days
    return v  # text is written into "@" cells (workbook_session.write): never a formula or a number


def _format(cell: Any) -> str | None:
    fmt = getattr(cell, "number_format", None)
    return None if not fmt or fmt == "General" else fmt


def _rels(z: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """The relationships of `part`: id -> (type, target part name)."""
    folder, base = posixpath.split(part)
    name = posixpath.join(folder, "_rels", base + ".rels")
    if name not in z.NameToInfo:
        return {}
    out = {}
    for rel in ET.fromstring(z.read(name)).iter(_PKG_REL):
        target = rel.get("Target") or ""
        if rel.get("TargetMode") == "External":
            continue
        resolved = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
        out[rel.get("Id") or ""] = (rel.get("Type") or "", resolved)
    return out


def sheet_tables(path: Path) -> dict[str, list[tuple[str, Area]]]:
    """Each sheet's tables (display name, area), by sheet name, as the package's relationships say."""
    with zipfile.ZipFile(path) as z:
        book = next((t for kind, t in _rels(z, "").values() if kind == f"{_DOC_REL}/officeDocument"), None)
        if book is None or book not in z.NameToInfo:
            return {}
        parts = _rels(z, book)
        out: dict[str, list[tuple[str, Area]]] = {}
        for sheet in ET.fromstring(z.read(book)).iter(f"{_MAIN}sheet"):
            rel = parts.get(sheet.get(f"{{{_DOC_REL}}}id") or "")
            if rel is None or rel[1] not in z.NameToInfo:
                continue
            found = out.setdefault(sheet.get("name") or "", [])
            for kind, target in _rels(z, rel[1]).values():
                if kind == f"{_DOC_REL}/table" and target in z.NameToInfo:
                    table = ET.fromstring(z.read(target))
                    found.append((table.get("displayName") or table.get("name") or "", parse(table.get("ref") or "")))
        return out


def read_staged(path: Path) -> list[StagedSheet]:
    """Read the rendered workbook's sheets (values, every cell's number format, the table each one's data is).

    Formats are read per cell: the writer formats a column by its unit and some columns row by row
    (Metrics' value: count, currency, ratio %), and forms (Summary, Targets, Movement) cell by cell."""
    tables = sheet_tables(path)
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        sheets = []
        for ws in book.worksheets:
            rows: list[list[Any]] = []
            formats: list[list[str | None]] = []
            for row in ws.iter_rows():
                values = [_cell_value(c) for c in row]
                while values and values[-1] == "":
                    values.pop()
                rows.append(values)
                formats.append([_format(c) for c in row[:len(values)]])
            while rows and not rows[-1]:
                rows.pop()
            table = next(((name, area) for name, area in tables.get(ws.title, []) if area[:2] == (1, 1)), None)
            width = max([len(r) for r in rows] + [table[1][3] if table else 0]) or 1
            if table is not None:  # the table's rows, blank ones at its end included
                rows += [[] for _ in range(table[1][2] - len(rows))]
            rows = [r + [""] * (width - len(r)) for r in rows] or [[""]]
            formats = [f + [None] * (width - len(f)) for f in formats[:len(rows)]]
            formats += [[None] * width for _ in range(len(rows) - len(formats))]
            sheets.append(StagedSheet(ws.title, rows, formats, table[0] if table else None))
        return sheets
    finally:
        book.close()
