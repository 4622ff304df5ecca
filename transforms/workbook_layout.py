"""Frames for the foundation sheets: Opportunities, Rejected, raw exports and About."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

import pandas as pd
from pandas.api.types import infer_dtype

from config.schema import (
    BOOL_FIELDS,
    DATE_FIELDS,
    EXCEL_MAX_CELL_CHARS,
    EXCEL_MAX_ROWS,
    FIELD_NAMES,
    FX_COLUMNS,
    ROW_ID_COLUMN,
    SOURCE_COLUMN,
)
from config.workbook import ColumnFormat, SheetData

DERIVED_FORMATS: dict[str, ColumnFormat] = {
    "days_in_stage": "int",
    "age_days": "int",
    "stage_entered_estimated": "bool",
    "probability": "ratio",
    "weighted_amount": "currency",
    "original_amount": "number",  # in its own currency (original_currency)
    "fx_rate": "rate",
    "fx_rate_date": "date",
}


def opportunities_sheet(opps: pd.DataFrame) -> SheetData:
    """Canonical fields in the spec's order, then `source`, then derived columns."""
    lead = [c for c in FIELD_NAMES if c in opps.columns]
    at = lead.index("currency") + 1 if "currency" in lead else len(lead)  # the original amount beside the converted
    lead[at:at] = [c for c in FX_COLUMNS if c in opps.columns]
    lead.append(SOURCE_COLUMN)
    derived = [c for c in opps.columns if c not in lead]
    if ROW_ID_COLUMN in derived:  # row id first among derived columns
        derived.remove(ROW_ID_COLUMN)
        derived.insert(0, ROW_ID_COLUMN)
    frame = opps.reindex(columns=lead + derived)
    formats: dict[str, ColumnFormat] = {"amount": "currency"}
    formats.update({f: "date" for f in DATE_FIELDS})
    formats.update({f: "bool" for f in BOOL_FIELDS})
    formats.update({k: v for k, v in DERIVED_FORMATS.items() if k in frame.columns})
    return SheetData("Opportunities", frame, formats)


def rejected_sheet(rejected: pd.DataFrame) -> SheetData:
    """`source`, `row`, `reason`, then the raw values as text."""
    lead = ["source", "row", "reason"]
    frame = rejected.reindex(columns=lead + [c for c in rejected.columns if c not in lead])
    formats: dict[str, ColumnFormat] = {c: "text" for c in frame.columns}
    formats["row"] = "int"
    return SheetData("Rejected", frame, formats)


def raw_sheets(parts: Iterable[tuple[str, pd.DataFrame]]) -> list[SheetData]:
    """Records exactly as a source gave them, for teams whose sheets use the raw columns."""
    out = []
    for name, frame in parts:  # by position: a source may repeat a header (the writer makes them unique)
        formats: dict[str, ColumnFormat] = {str(c): "text" for c, dtype in zip(frame.columns, frame.dtypes, strict=True)
                                            if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)}
        out.append(SheetData(name, frame, formats))
    return out


def _utf16_over(text: str) -> bool:
    """Longer than Excel's cell holds, counted as Excel does (UTF-16 code units: an emoji is 2)."""
    return len(text) > EXCEL_MAX_CELL_CHARS // 2 and len(text.encode("utf-16-le", "surrogatepass")) > 2 * EXCEL_MAX_CELL_CHARS


def _over_long(col: pd.Series) -> int:
    """Cells of a text column longer than Excel holds, in C-speed passes (0 s of Python per cell)."""
    values = col.to_numpy(dtype=object)
    if infer_dtype(values, skipna=True) in ("string", "empty"):
        if max(map(operator.length_hint, values), default=0) <= EXCEL_MAX_CELL_CHARS // 2:  # a missing value: 0
            return 0
        return sum(1 for v in values if isinstance(v, str) and _utf16_over(v))
    present = pd.Series(values[~pd.isna(values)], dtype=object)  # numbers, dicts...: as their text
    return sum(map(_utf16_over, present.astype(str).tolist()))


def excel_limits(sheets: Sequence[SheetData], *, count_cut: bool = True) -> tuple[int, list[str]]:
    """(text cells longer than Excel holds, notes on sheets that will be split) — known before writing.

    `count_cut=False` leaves the count at 0 and skips its pass over every text cell (for a caller
    that takes the count from the writer, which counts the cells it cuts)."""
    cut = 0
    notes: list[str] = []
    for sheet in sheets:
        for j in range(sheet.frame.shape[1]) if count_cut else ():
            col = sheet.frame.iloc[:, j]  # by position: headers may repeat
            if col.dtype == object or pd.api.types.is_string_dtype(col):
                cut += _over_long(col)
        rows = len(sheet.frame)
        if rows > EXCEL_MAX_ROWS - 1:
            parts = math.ceil(rows / (EXCEL_MAX_ROWS - 1))
            notes.append(f"{sheet.name}: {rows:,} rows split over {parts} sheets ({sheet.name}, {sheet.name} (2), ...)")
    return cut, notes


def about_sheet(
    *,
    run_id: str,
    as_of: date,
    period: Any,
    generated_at: datetime,
    timezone: str,
    version: str,
    config_sha256: str,
    sources: Sequence[Any],
    extra: Sequence[tuple[str, Any]] = (),
    notes: Sequence[str] = (),
) -> SheetData:
    """Key/value facts about the run; per source rows read = loaded + rejected, then what its
    connector noted (each note once, e.g. HubSpot stages counted as open for want of isClosed)."""
    rows: list[tuple[str, str]] = [
        ("run id", run_id),
        ("as_of", as_of.isoformat()),
        ("period", period.label),
        ("period start", period.start.isoformat()),
        ("period end", period.end.isoformat()),
        ("generated at (UTC)", generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("time zone", timezone),
        ("pipeline-sync version", version),
        ("config sha256", config_sha256),
    ]
    for s in sources:
        p = f"source {s.name}"
        rows += [
            (f"{p}: type", s.type),
            (f"{p}: rows read", str(s.rows_read)),
            (f"{p}: rows loaded", str(s.rows_loaded)),
            (f"{p}: rows rejected", str(s.rows_rejected)),
            (f"{p}: read = loaded + rejected", "yes" if s.reconciles else "NO"),
            (f"{p}: extraction seconds", f"{s.seconds:.2f}"),
        ]
        if s.requests:
            rows.append((f"{p}: requests / retries / waited s", f"{s.requests} / {s.retries} / {s.waited_seconds:.1f}"))
        if s.stale:
            rows.append((f"{p}: stale", s.error or "returned no rows this run"))
        if getattr(s, "reused", False):
            rows.append((f"{p}: unchanged", "nothing changed since the last run; its validated rows were reused"))
        rows += [(f"{p}: note", n) for n in dict.fromkeys(getattr(s, "notes", ()))]
    rows += [(k, str(v)) for k, v in extra]
    rows += [("note", n) for n in notes]
    frame = pd.DataFrame(rows, columns=["key", "value"])
    return SheetData("About", frame, {"key": "text", "value": "text"})
