"""The workbook contract: which sheets exist, in which order, and how a sheet is described.

Transforms build `SheetData` (a frame plus column formats); the xlsx writer renders them.
This is the one module that owns the sheet list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

ColumnFormat = Literal["text", "int", "number", "currency", "ratio", "pct", "date", "datetime", "bool", "days"]

SHEET_ORDER: tuple[str, ...] = (
    "Summary",
    "Flags",
    "Metrics",
    "Funnel",
    "Owners",
    "Products",
    "Trends",
    "Changes",
    "Movement",
    "Targets",
    "Opportunities",
    "Rejected",
    # raw export sheets (`raw_sheet:` on a source) come here, in source order
    "About",
)


@dataclass
class SheetData:
    """One data sheet: written as an Excel table named `tbl<Name>` with a frozen, filtered header.

    `formats` maps a column to its number format; unlisted columns get one from their dtype.
    `notes` are lines shown above nothing: they go into the About sheet, keyed by sheet.
    `highlight` names a column whose values colour the row (e.g. Flags' severity).
    """

    name: str
    frame: pd.DataFrame
    formats: dict[str, ColumnFormat] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    highlight: str | None = None
    form: SheetForm | None = None  # cells above the table (a frame without columns: the form alone)


FormStyle = Literal["text", "title", "header", "input", "note", "bold"]


@dataclass
class FormCell:
    """One cell of a form: a value, or an Excel formula stored with its computed `value` (so
    viewers that do not recalculate show it; "" = an empty result). 0-based row and column."""

    row: int
    col: int
    value: Any = None
    format: ColumnFormat | None = None
    formula: str | None = None
    style: FormStyle = "text"  # input: a cell the user is meant to edit


@dataclass
class FormTable:
    """An Excel table over form cells; `first_row` is its header row (`headers`)."""

    name: str
    first_row: int
    first_col: int
    last_row: int
    headers: list[str]


@dataclass
class SheetForm:
    """Small blocks written cell by cell (titles, inputs, formulas, little tables) at the top of a
    sheet; the sheet's data table, if it has one, starts two rows below the last cell and is named
    `table_name` (default tbl<Sheet>)."""

    cells: list[FormCell]
    tables: list[FormTable] = field(default_factory=list)
    widths: dict[int, float] = field(default_factory=dict)
    table_name: str | None = None

    @property
    def height(self) -> int:
        """Rows above the data table."""
        return max((c.row for c in self.cells), default=-1) + 2


@dataclass
class ChartSpec:
    """A native Excel chart on the Summary sheet, drawn from a range of another sheet."""

    title: str
    kind: Literal["column", "bar", "line", "pie"]
    sheet: str  # the data sheet
    category: str  # column name for categories
    values: list[str]  # column names for series
    rows: int | None = None  # first N data rows only (None = all)
    secondary: list[str] = field(default_factory=list)  # series names drawn on a second axis


@dataclass
class WaterfallSpec:
    """A waterfall chart on the Summary from cells of another sheet (0-based rows/columns): a
    stacked column whose `base` series is invisible; `rise`, `fall` and `total` bars carry labels."""

    title: str
    sheet: str
    first_row: int
    last_row: int
    category_col: int
    base_col: int
    rise_col: int
    fall_col: int
    total_col: int


@dataclass
class SummaryData:
    """The Summary sheet: a KPI block, flag counts and charts."""

    title: str
    kpis: pd.DataFrame  # metric, value, previous, change, unit
    flag_counts: pd.DataFrame  # rule, check, severity, count
    charts: list[ChartSpec | WaterfallSpec] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # short status lines under the title


def table_name(sheet: str) -> str:
    """`tbl<SheetName>` with characters Excel refuses in table names removed."""
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in sheet)
    return f"tbl{cleaned}"[:255]
