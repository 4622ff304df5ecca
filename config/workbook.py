"""The workbook contract: which sheets exist, in which order, and how a sheet is described.

Transforms build `SheetData` (a frame plus column formats); the xlsx writer renders them.
This is the one module that owns the sheet list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

ColumnFormat = Literal["text", "int", "number", "currency", "ratio", "pct", "date", "datetime", "bool", "days", "rate"]

SHEET_ORDER: tuple[str, ...] = (
    "Summary",
    "Flags",
    "Metrics",
    "Funnel",
    "Owners",
    "Products",
    "Trends",
    "Changes",
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
class SummaryBlock:
    """A titled table of its own on the Summary sheet, under the KPIs (e.g. the forecast)."""

    title: str
    frame: pd.DataFrame  # metric, value, unit (the unit formats the value)
    lines: list[str] = field(default_factory=list)  # shown under the table


@dataclass
class SummaryData:
    """The Summary sheet: a KPI block, flag counts and charts."""

    title: str
    kpis: pd.DataFrame  # metric, value, previous, change, unit
    flag_counts: pd.DataFrame  # rule, check, severity, count
    charts: list[ChartSpec] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # short status lines under the title
    blocks: list[SummaryBlock] = field(default_factory=list)  # separate tables under the KPIs


def table_name(sheet: str) -> str:
    """`tbl<SheetName>` with characters Excel refuses in table names removed."""
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in sheet)
    return f"tbl{cleaned}"[:255]
