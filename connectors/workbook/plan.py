"""Every sheet made safe for Excel once, before layout: names, headers, rows and columns.

`Plan` takes the sheets as the transforms built them and gives the writer sheets it can write
as they are: sheet names claimed (names.SheetNames), headers cleaned and unique
(names.clean_headers), a formats entry for every column, columns past XFD moved to continuation
sheets `Name (cols 2)`, ..., rows past Excel's limit split over `Name (2)`, ..., and a table name
for each (names.TableNames). What it changed is said in `fixes`, one line each, for the About sheet.
Chart specs and the late sheet (written last, see xlsx_writer.write_workbook) are mapped to the
clean names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from config.schema import EXCEL_MAX_ROWS
from config.workbook import (
    ChartSpec,
    ColumnFormat,
    SheetData,
    SummaryData,
    WaterfallSpec,
    table_name,
)
from connectors.workbook.names import SheetNames, TableNames, clean_headers, is_cell_reference

MAX_COLS = 16_384  # XFD
MAX_DATA_ROWS = EXCEL_MAX_ROWS - 1  # one row is the header
SHOWN = 3  # renamed headers quoted per sheet in a fix line


def infer_format(series: pd.Series) -> ColumnFormat:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "date"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "number"
    return "text"


def column_formats(sheet: SheetData) -> list[ColumnFormat]:
    """Each column's format, by position: its entry in `formats`, else from its dtype."""
    frame = sheet.frame
    return [sheet.formats.get(str(c)) or infer_format(frame.iloc[:, j]) for j, c in enumerate(frame.columns)]


def _show(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[:width] + "…")


@dataclass
class _Source:
    """Where a sheet the transforms named went: its first written sheet and its headers' new names."""

    name: str
    columns: dict[str, str]  # given header (as text) -> written header (its first occurrence)


@dataclass
class Plan:
    """The sheets to write (clean), their table names and what was changed to get there."""

    sheets: list[SheetData] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # rows split over sheets
    sources: dict[str, _Source] = field(default_factory=dict)
    late_columns: list[str] | None = None  # the late sheet's given headers
    late_formats: list[ColumnFormat] | None = None


def _clean_sheet(sheet: SheetData, name: str, fixes: list[str]) -> tuple[SheetData, list[str]]:
    """`sheet` named `name`, with clean unique headers and every column's format (by position)."""
    given = [str(c) for c in sheet.frame.columns]
    formats = column_formats(sheet)
    headers = clean_headers(list(sheet.frame.columns))
    frame = sheet.frame
    if headers != given or not sheet.frame.columns.is_unique:
        frame = frame.set_axis(headers, axis=1)
        changed = [(g, h) for g, h in zip(given, headers, strict=True) if g != h]
        if changed:
            shown = ", ".join(f"{_show(g)} → {_show(h)}" for g, h in changed[:SHOWN])
            more = f" and {len(changed) - SHOWN:,} more" if len(changed) > SHOWN else ""
            fixes.append(f"sheet {name!r}: {len(changed):,} column header(s) renamed to names an Excel table "
                         f"accepts: {shown}{more}")
    highlight = sheet.highlight
    if highlight is not None and highlight in given:
        highlight = headers[given.index(highlight)]
    renamed = {g: h for g, h in reversed(list(zip(given, headers, strict=True)))}  # a given header's first column
    clean = SheetData(name, frame, dict(zip(headers, formats, strict=True)), list(sheet.notes), highlight,
                      {renamed[c]: f for c, f in sheet.row_formats.items() if c in renamed},
                      {renamed[c]: w for c, w in sheet.widths.items() if c in renamed},
                      {renamed[c] for c in sheet.wrap if c in renamed}, sheet.form)
    return clean, given


def _split_columns(sheet: SheetData, given_name: str, names: SheetNames, fixes: list[str]) -> list[SheetData]:
    """A sheet wider than XFD becomes `Name`, `Name (cols 2)`, ...: no column is dropped."""
    ncols = sheet.frame.shape[1]
    if ncols <= MAX_COLS:
        return [sheet]
    parts = []
    for k, start in enumerate(range(0, ncols, MAX_COLS)):
        stop = min(start + MAX_COLS, ncols)
        name = sheet.name if k == 0 else names.claim(f"{sheet.name} (cols {k + 1})")
        frame = sheet.frame.iloc[:, start:stop]
        formats = {str(c): sheet.formats[str(c)] for c in frame.columns}
        highlight = sheet.highlight if sheet.highlight in formats else None
        parts.append(SheetData(name, frame, formats, list(sheet.notes) if k == 0 else [], highlight,
                               {c: f for c, f in sheet.row_formats.items() if c in formats},
                               {c: w for c, w in sheet.widths.items() if c in formats},
                               {c for c in sheet.wrap if c in formats}, sheet.form if k == 0 else None))
        if k:
            fixes.append(f"sheet {given_name!r}: {ncols:,} columns are more than a sheet holds ({MAX_COLS:,}); "
                         f"columns {start + 1:,}-{stop:,} are on sheet {name!r} (same rows)")
    return parts


def split_rows(sheets: list[SheetData], notes: list[str], names: SheetNames | None = None,
               max_rows: int = MAX_DATA_ROWS) -> list[SheetData]:
    """A frame over Excel's row limit becomes `Name`, `Name (2)`, ...: never truncated."""
    names = names or SheetNames()
    out: list[SheetData] = []
    for sheet in sheets:
        n = len(sheet.frame)
        if n <= max_rows:
            out.append(sheet)
            continue
        parts = math.ceil(n / max_rows)
        part_names = [sheet.name] + [names.claim(f"{sheet.name} ({k + 1})") for k in range(1, parts)]
        for k, name in enumerate(part_names):
            rows = slice(k * max_rows, (k + 1) * max_rows)
            out.append(SheetData(name, sheet.frame.iloc[rows], sheet.formats, sheet.notes, sheet.highlight,
                                 {c: f.iloc[rows] for c, f in sheet.row_formats.items()}, sheet.widths, sheet.wrap,
                                 sheet.form if k == 0 else None))
        notes.append(f"{sheet.name}: {n:,} rows are more than one sheet holds; split into {parts} sheets "
                     f"({', '.join(part_names)})")
    return out


def plan_sheets(sheets: list[SheetData], *, summary: bool, late: SheetData | None,
                max_rows: int = MAX_DATA_ROWS) -> Plan:
    """The plan for `sheets` (in order), then `late` (the sheet written last), after `Summary`.

    Names are claimed Summary first, then the late sheet's (so a raw sheet called `About` is the
    one renamed), then each sheet in order; a clash gets ` (2)`."""
    plan = Plan()
    names = SheetNames()
    if summary:
        names.claim("Summary")
    late_name = names.claim(late.name) if late is not None else None
    cleaned: list[SheetData] = []
    for sheet in sheets:
        name = names.claim(sheet.name)
        if name != sheet.name:
            plan.fixes.append(f"sheet {_show(sheet.name)} is written as {name!r} (Excel's rules for sheet names)")
        clean, given = _clean_sheet(sheet, name, plan.fixes)
        plan.sources.setdefault(sheet.name, _Source(name, dict(zip(reversed(given), reversed(list(clean.frame.columns)),
                                                                   strict=True))))
        cleaned += _split_columns(clean, sheet.name, names, plan.fixes)
    plan.sheets = split_rows(cleaned, plan.notes, names, max_rows)
    if late is not None and late_name is not None:
        if late_name != late.name:
            plan.fixes.append(f"sheet {_show(late.name)} is written as {late_name!r} (Excel's rules for sheet names)")
        clean, given = _clean_sheet(late, late_name, plan.fixes)
        plan.late_columns, plan.late_formats = given, column_formats(late)
        plan.sheets.append(clean)
    tables = TableNames()
    for i, sheet in enumerate(plan.sheets):
        form = sheet.form
        if form is not None:  # a form's own tables, then its data table, under the names it asks for
            named = [dataclasses.replace(t, name=tables.claim_name(t.name)) for t in form.tables]
            form = dataclasses.replace(form, tables=named) if named != form.tables else form
            if form is not sheet.form:
                plan.sheets[i] = sheet = dataclasses.replace(sheet, form=form)
        wanted = form.table_name if form is not None and form.table_name else None
        name = tables.claim_name(wanted) if wanted else tables.claim(sheet.name)
        default = wanted or table_name(sheet.name)
        if name != default:
            why = "would be read as a cell reference" if is_cell_reference(default) else "is taken"
            plan.fixes.append(f"sheet {sheet.name!r}: its table is named {name} ({default} {why})")
        plan.tables.append(name)
    return plan


def finish_late(plan: Plan, sheet: SheetData) -> SheetData:
    """The late sheet's final frame, cleaned as it was at layout; ValueError if its columns or
    formats changed since."""
    laid_out = plan.sheets[-1]
    if [str(c) for c in sheet.frame.columns] != plan.late_columns or column_formats(sheet) != plan.late_formats:
        raise ValueError(f"write_workbook: the last sheet {sheet.name!r} changed its columns or formats after layout; "
                         "`last` must return the same columns for any WriteStats")
    frame = sheet.frame.set_axis(list(laid_out.frame.columns), axis=1)
    return SheetData(laid_out.name, frame, laid_out.formats, list(sheet.notes), laid_out.highlight,
                     laid_out.row_formats, laid_out.widths, laid_out.wrap, laid_out.form)


def map_charts(plan: Plan, summary: SummaryData) -> SummaryData:
    """`summary` with its charts pointing at the written sheet and column names (a chart whose
    sheet or columns are not written keeps its names and is skipped by the layout)."""
    charts: list[ChartSpec | WaterfallSpec] = []
    for spec in summary.charts:
        src = plan.sources.get(spec.sheet)
        if src is None:
            charts.append(spec)
            continue
        if isinstance(spec, WaterfallSpec):  # draws from the sheet's form cells, by position
            charts.append(dataclasses.replace(spec, sheet=src.name))
            continue
        col = src.columns.get
        charts.append(dataclasses.replace(spec, sheet=src.name, category=col(spec.category, spec.category),
                                          values=[col(v, v) for v in spec.values],
                                          secondary=[col(v, v) for v in spec.secondary],
                                          lines=[col(v, v) for v in spec.lines],
                                          colours={col(k, k): v for k, v in spec.colours.items()},
                                          names={col(k, k): v for k, v in spec.names.items()}))
    return dataclasses.replace(summary, charts=charts) if charts != summary.charts else summary

