"""The workbook contract: which sheets exist, in which order, and how a sheet is described.

Transforms build `SheetData` (a frame plus column formats) and `SummaryData`; the xlsx writer
renders them. This is the one module that owns the sheet list: the writer puts the sheets in
`SHEET_ORDER` (`order_sheets`) whatever order they are handed over in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

ColumnFormat = Literal["text", "int", "number", "currency", "currency_whole", "ratio", "pct", "points", "date",
                       "datetime", "bool", "days", "url", "rate"]
"""`currency` keeps cents, `currency_whole` shows whole units; `points` is a difference of two
ratios in percentage points (the value is x100); `url` is a link to its own text (http/https
only; anything else stays plain text); `rate` is an exchange rate (up to 6 decimals)."""

RAW_SHEETS = "<raw export sheets>"  # where the raw export sheets (`raw_sheet:` on a source) go, in source order
SHEET_ORDER: tuple[str, ...] = (
    "Summary",
    "Actions",
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
    RAW_SHEETS,
    "Definitions",
    # the data behind the Summary's charts
    "Won by month",
    "Flags by mistake",
    "About",
)


def sheet_rank(name: str) -> int:
    """Position of a sheet in SHEET_ORDER; a name not listed is a raw export sheet. A split
    sheet's parts (`Opportunities (2)`) share their sheet's position."""
    base = name
    if name.endswith(")") and " (" in name and name.rsplit(" (", 1)[1][:-1].isdigit():
        base = name.rsplit(" (", 1)[0]
    if base in SHEET_ORDER:
        return SHEET_ORDER.index(base)
    return SHEET_ORDER.index(RAW_SHEETS)


def order_sheets(sheets: Sequence[SheetData]) -> list[SheetData]:
    """`sheets` in SHEET_ORDER (stable: raw sheets keep their order among themselves)."""
    return sorted(sheets, key=lambda s: sheet_rank(s.name))


@dataclass
class SheetData:
    """One data sheet: written as an Excel table named `tbl<Name>` with a frozen, filtered header.

    `formats` maps a column to its number format; unlisted columns get one from their dtype.
    `row_formats` maps a column to one format per row (e.g. Metrics' value by its unit), which
    wins over `formats` where it is not None. `widths` sets column widths (characters).
    `notes` are lines shown above nothing: they go into the About sheet, keyed by sheet.
    `highlight` names a column whose values colour the row (e.g. Flags' severity). Text in a
    `wrap` column wraps (top-aligned), so a row grows to show it. `form`: cells written above
    the table (Movement, Targets); with a frame without columns the sheet is the form alone.
    """

    name: str
    frame: pd.DataFrame
    formats: dict[str, ColumnFormat] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    highlight: str | None = None
    row_formats: dict[str, pd.Series] = field(default_factory=dict)
    widths: dict[str, float] = field(default_factory=dict)
    wrap: set[str] = field(default_factory=set)
    form: SheetForm | None = None


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
    """A native Excel chart on the Summary sheet, drawn from a range of another sheet.

    `values` are bars (or the chart's kind); `lines` are drawn as lines over them, on a second
    axis when also in `secondary`. Axis titles and number formats (`y_format` for the values,
    `y2_format` for the second axis) are Excel number format codes. `stacked` stacks the bars;
    `colours` maps a series to its colour; `muted_last` draws the last category lighter (a period
    still running).
    """

    title: str
    kind: Literal["column", "bar", "line", "pie"]
    sheet: str  # the data sheet
    category: str  # column name for categories
    values: list[str]  # column names for series
    rows: int | None = None  # first N data rows only (None = all)
    secondary: list[str] = field(default_factory=list)  # series names drawn on a second axis
    lines: list[str] = field(default_factory=list)
    x_title: str | None = None
    y_title: str | None = None
    y_format: str | None = None
    y2_title: str | None = None
    y2_format: str | None = None
    stacked: bool = False
    colours: dict[str, str] = field(default_factory=dict)
    muted_last: bool = False
    names: dict[str, str] = field(default_factory=dict)  # series -> legend name (default: the column header)
    x_format: str | None = None  # categories that are dates: a date axis in this format
    x_unit_days: int | None = None  # ... with a label every this many days


@dataclass
class SummaryTable:
    """A titled block of rows on the Summary sheet.

    `formats`: per column; `row_formats`: per column, one format per row (None: the column's).
    `better`: per column, one direction per row: +1 when a higher value is better (green above
    0, red below), -1 when lower is better, 0 no colour: written as conditional formats, so an
    edited value recolours. `signed`: columns shown with an explicit + or -. `links`: column ->
    column of URLs its cells link to. `highlight`: a column of severities that colours its cells.
    Columns whose name starts with `_` are not shown.
    """

    title: str
    frame: pd.DataFrame
    formats: dict[str, ColumnFormat] = field(default_factory=dict)
    row_formats: dict[str, list[ColumnFormat | None]] = field(default_factory=dict)
    better: dict[str, list[int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    note: str | None = None  # one line under the title
    signed: set[str] = field(default_factory=set)
    highlight: str | None = None
    page_break: bool = False  # printed from a new page


@dataclass
class SummaryBlock:
    """A titled table of its own on the Summary sheet, under the KPIs (e.g. the forecast)."""

    title: str
    frame: pd.DataFrame  # metric, value, unit (the unit formats the value)
    lines: list[str] = field(default_factory=list)  # shown under the table


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
    """The Summary sheet: title, status lines, tables and charts.

    `kpis` (metric, value, previous, change, unit, ...), `flag_counts` (rule, check, severity,
    count) and `blocks` (e.g. the forecast: metric, value, unit) are the machine-readable facts
    (notifications read `kpis`); `tables` is what the sheet shows. Without `tables` the sheet
    shows `kpis`, `blocks` and `flag_counts` as they are.
    """

    title: str
    kpis: pd.DataFrame  # metric, value, previous, change, unit
    flag_counts: pd.DataFrame  # rule, check, severity, count
    charts: list[ChartSpec | WaterfallSpec] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # short status lines under the title
    tables: list[SummaryTable] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)  # the sheet's column widths (characters); empty: from the tables
    blocks: list[SummaryBlock] = field(default_factory=list)  # separate tables under the KPIs

    def shown_tables(self) -> list[SummaryTable]:
        if self.tables:
            return self.tables
        unit_format: dict[str, ColumnFormat] = {"currency": "currency", "currency_per_day": "currency",
                                                 "ratio": "ratio", "pct": "pct", "count": "int", "days": "days"}

        def by_unit(frame: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, list[ColumnFormat | None]]:
            units = frame["unit"].tolist() if "unit" in frame.columns else []
            per_row: list[ColumnFormat | None] = [unit_format.get(str(u), "number") for u in units]
            return {c: per_row for c in columns if c in frame.columns and units}

        blocks = [SummaryTable(b.title, b.frame, row_formats=by_unit(b.frame, ("value",)), note=" ".join(b.lines) or None)
                  for b in self.blocks]
        return [SummaryTable("", self.kpis, row_formats=by_unit(self.kpis, ("value", "previous", "change"))),
                *blocks, SummaryTable("", self.flag_counts)]


def table_name(sheet: str) -> str:
    """`tbl<SheetName>` with characters Excel refuses in table names removed."""
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in sheet)
    return f"tbl{cleaned}"[:255]
