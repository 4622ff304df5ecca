"""Render the workbook: xlsxwriter lays out every sheet, data rows are streamed in afterwards.

Why two steps: xlsxwriter writes tables, charts, formats and conditional formats well, but in
its streaming (`constant_memory`) mode it cannot add tables, and in its normal mode it keeps
every cell in memory. So xlsxwriter writes each data sheet with its header, one sample row
(which fixes the style of every column) and the `tbl<Sheet>` table (its range is widened to
all rows afterwards); then
the sheet XML's rows are replaced by rows generated column-wise from the frame, written
straight into the final zip (fast deflate). Text that repeats down a column goes to the
shared-string table. Memory stays at the frames plus one chunk of XML.

Text is always a string cell (inline or shared), never a formula: a value starting with `=`,
`+`, `-` or `@` stays text.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xlsxwriter
from xlsxwriter.utility import xl_col_to_name

from config.schema import EXCEL_MAX_CELL_CHARS, EXCEL_MAX_ROWS
from config.workbook import ColumnFormat, SheetData, SummaryData, table_name

MAX_DATA_ROWS = EXCEL_MAX_ROWS - 1  # one row is the header
CUT_MARKER = " …[cut]"
CHUNK_ROWS = 50_000
SST_PART = "xl/sharedStrings.xml"
_EPOCH = np.datetime64("1899-12-30", "D")
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_LITERAL_ESCAPE = re.compile(r"_(x[0-9A-Fa-f]{4}_)")
_SHEET_NAME_BAD = re.compile(r"[\[\]:*?/\\]")

NUMBER_FORMATS: dict[str, str] = {
    "int": "#,##0",
    "number": "#,##0.00",
    "ratio": "0.0%",
    "pct": '0.0"%"',
    "date": "yyyy-mm-dd",
    "datetime": "yyyy-mm-dd hh:mm",
    "days": "#,##0.0",
}


def currency_format(code: str) -> str:
    symbols = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "KRW": "₩"}
    sym = symbols.get(code.upper())
    return f'"{sym}"#,##0.00' if sym else f'#,##0.00" {code.upper()}"'


@dataclass
class WriteStats:
    sheets: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    cut_cells: int = 0
    notes: list[str] = field(default_factory=list)


class SharedStrings:
    """Strings that repeat down a column go to the workbook's shared-string table.

    xlsxwriter's own table (header and small-sheet strings) keeps its indices; ours are
    appended after it. Distinct values of high-cardinality columns stay inline strings, so
    memory grows with repeated values only.
    """

    def __init__(self, base_xml: bytes):
        m = re.search(rb'uniqueCount="(\d+)"', base_xml)
        c = re.search(rb'count="(\d+)"', base_xml)
        self.base_xml = base_xml
        self.base = int(m.group(1)) if m else 0
        self.references = int(c.group(1)) if c else 0
        self.index: dict[str, int] = {}
        self.items: list[str] = []

    def add(self, escaped: str, preserve: bool) -> int:
        key = escaped if not preserve else "\x00" + escaped
        idx = self.index.get(key)
        if idx is None:
            idx = self.index[key] = self.base + len(self.items)
            self.items.append(('<si><t xml:space="preserve">' if preserve else "<si><t>") + escaped + "</t></si>")
        return idx

    def xml(self) -> bytes:
        total = self.base + len(self.items)
        head, _, _ = self.base_xml.rpartition(b"</sst>")
        head = re.sub(rb'count="\d+"', b'count="%d"' % self.references, head, count=1)
        head = re.sub(rb'uniqueCount="\d+"', b'uniqueCount="%d"' % total, head, count=1)
        return head + "".join(self.items).encode("utf-8") + b"</sst>"


def safe_sheet_name(name: str) -> str:
    return _SHEET_NAME_BAD.sub("_", name).strip("'")[:31] or "Sheet"


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


def split_sheets(sheets: list[SheetData], stats: WriteStats, max_rows: int = MAX_DATA_ROWS) -> list[SheetData]:
    """A frame over Excel's row limit becomes `Name`, `Name (2)`, ...: never truncated."""
    out: list[SheetData] = []
    for sheet in sheets:
        n = len(sheet.frame)
        if n <= max_rows:
            out.append(sheet)
            continue
        parts = math.ceil(n / max_rows)
        for k in range(parts):
            name = sheet.name if k == 0 else safe_sheet_name(f"{sheet.name[:26]} ({k + 1})")
            part = sheet.frame.iloc[k * max_rows : (k + 1) * max_rows]
            out.append(SheetData(name, part, sheet.formats, sheet.notes, sheet.highlight))
        stats.notes.append(
            f"{sheet.name}: {n:,} rows are more than one sheet holds; split into {parts} sheets "
            f"({', '.join([sheet.name] + [f'{sheet.name} ({k + 1})' for k in range(1, parts)])})"
        )
    return out


# ----------------------------------------------------------------------------- cell XML


def _escape_one(t: str, stats: WriteStats) -> str:
    if len(t) > EXCEL_MAX_CELL_CHARS:
        stats.cut_cells += 1
        t = t[: EXCEL_MAX_CELL_CHARS - len(CUT_MARKER)] + CUT_MARKER
    if "_x" in t:
        t = _LITERAL_ESCAPE.sub(r"_x005F_\1", t)
    if _ILLEGAL_XML.search(t):
        t = _ILLEGAL_XML.sub(lambda m: f"_x{ord(m.group(0)):04X}_", t)
    if "&" in t:
        t = t.replace("&", "&amp;")
    if "<" in t:
        t = t.replace("<", "&lt;")
    if ">" in t:
        t = t.replace(">", "&gt;")
    if "\r" in t:  # a raw CR would be read back as LF
        t = t.replace("\r", "&#13;")
    return t


def _text_tails(values: pd.Series, s_attr: str, stats: WriteStats, sst: SharedStrings | None) -> np.ndarray:
    """Per row, everything of a text cell after its reference (None for missing or empty).

    Each distinct value is escaped and wrapped once; values that repeat down the column are
    written once into the shared-string table.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    shared = sst is not None and len(uniques) * 2 <= len(values)
    plain = '"' + s_attr + ' t="inlineStr"><is><t>'
    keep_space = '"' + s_attr + ' t="inlineStr"><is><t xml:space="preserve">'
    tails: list[str | None] = []
    cut_codes = []
    for i, u in enumerate(uniques.tolist()):
        text = u if isinstance(u, str) else str(u)
        if not text:
            tails.append(None)
            continue
        if len(text) > EXCEL_MAX_CELL_CHARS:
            cut_codes.append(i)
        esc = _escape_one(text, stats)
        preserve = text[0].isspace() or text[-1].isspace()
        if shared:
            tails.append(f'"{s_attr} t="s"><v>{sst.add(esc, preserve)}</v></c>')
        else:
            tails.append((keep_space if preserve else plain) + esc + "</t></is></c>")
    if cut_codes:  # _escape_one counted each distinct value once; count every cell
        stats.cut_cells += int(np.isin(codes, cut_codes).sum()) - len(cut_codes)
    if shared:
        sst.references += int((codes >= 0).sum())
    return np.array([*tails, None], dtype=object)[codes]  # code -1 (missing) picks the trailing None


def _column_cells(series: pd.Series, fmt: ColumnFormat, style: str, pre: str, numbers: list[str],
                  stats: WriteStats, sst: SharedStrings | None = None) -> list[str]:
    """Cell XML for one column; a cell is `pre + row number + tail` (pre is e.g. '<c r="C')."""
    s_attr = f' s="{style}"' if style and style != "0" else ""
    if fmt == "text":
        tails = _text_tails(series, s_attr, stats, sst)
    elif fmt == "bool":
        codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
        wrapped = [f'"{s_attr} t="b"><v>{1 if u else 0}</v></c>' for u in uniques.tolist()]
        tails = np.array([*wrapped, None], dtype=object)[codes]
    elif fmt in ("date", "datetime"):
        dt = pd.to_datetime(series, errors="coerce")
        if getattr(dt.dt, "tz", None) is not None:
            dt = dt.dt.tz_localize(None)
        arr = dt.to_numpy(dtype="datetime64[ns]")
        if fmt == "date":
            serial = np.where(np.isnat(arr), -1, (arr.astype("datetime64[D]") - _EPOCH).astype(np.int64))
            codes, uniques = pd.factorize(serial)
            wrapped = [None if u < 0 else f'"{s_attr}><v>{u}</v></c>' for u in uniques.tolist()]
            tails = np.array(wrapped, dtype=object)[codes]
        else:
            mask = np.isnat(arr)
            serial = (arr - _EPOCH.astype("datetime64[ns]")).astype(np.int64) / 86_400e9
            mid = f'"{s_attr}><v>'
            tails = [None if m else mid + repr(v) + "</v></c>" for v, m in
                     zip(np.round(serial, 8).tolist(), mask.tolist(), strict=True)]
    else:
        num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        mask = ~np.isfinite(num)
        whole = np.where(mask, 0.0, num)
        if len(whole) and bool((whole == np.trunc(whole)).all()) and float(np.abs(whole).max(initial=0)) < 2**53:
            strs = map(str, whole.astype(np.int64).tolist())  # integral values print without ".0"
        else:
            strs = map(repr, whole.tolist())
        mid = f'"{s_attr}><v>'
        return ["" if m else pre + r + mid + v + "</v></c>" for r, v, m in zip(numbers, strs, mask.tolist(), strict=True)]
    return ["" if t is None else pre + r + t for r, t in zip(numbers, tails, strict=True)]


def _rows_xml(frame: pd.DataFrame, formats: list[ColumnFormat], styles: list[str], stats: WriteStats,
              sst: SharedStrings | None = None) -> Iterator[str]:
    """Yield `<row>` XML for all data rows (starting at sheet row 2), chunk by chunk."""
    pres = ['<c r="' + xl_col_to_name(j) for j in range(frame.shape[1])]
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        numbers = list(map(str, range(start + 2, start + 2 + len(chunk))))
        cols = [_column_cells(chunk.iloc[:, j], formats[j], styles[j], pres[j], numbers, stats, sst)
                for j in range(chunk.shape[1])]
        yield "".join(
            '<row r="' + r + '">' + "".join(cells) + "</row>" for r, cells in zip(numbers, zip(*cols, strict=True), strict=True)
        )


# ----------------------------------------------------------------------------- layout with xlsxwriter


@dataclass
class _Planned:
    sheet: SheetData
    index: int  # 1-based worksheet number in the package (xl/worksheets/sheet{index}.xml)
    formats: list[ColumnFormat]


def _sample_value(fmt: ColumnFormat) -> Any:
    return {
        "text": "x",
        "bool": True,
        "date": datetime(2000, 1, 1),
        "datetime": datetime(2000, 1, 1, 12, 0),
    }.get(fmt, 0)


def _col_width(series: pd.Series, header: str, fmt: ColumnFormat) -> float:
    base = len(str(header)) + 3
    if fmt == "date":
        return max(base, 12)
    if fmt == "datetime":
        return max(base, 17)
    if fmt in ("int", "number", "currency", "days", "ratio", "pct"):
        return max(base, 14)
    if fmt == "bool":
        return max(base, 8)
    sample = series.head(2000).dropna().astype(str)
    longest = int(sample.str.len().quantile(0.95)) if len(sample) else 0
    return float(min(60, max(base, longest + 2)))


class _Layout:
    def __init__(self, workbook: xlsxwriter.Workbook, currency: str):
        self.wb = workbook
        self.header = workbook.add_format({"bold": True, "text_wrap": False})
        self.formats: dict[str, Any] = {k: workbook.add_format({"num_format": v}) for k, v in NUMBER_FORMATS.items()}
        self.formats["currency"] = workbook.add_format({"num_format": currency_format(currency)})
        self.formats["text"] = workbook.add_format({})
        self.formats["bool"] = workbook.add_format({})
        self.count = 0

    def data_sheet(self, sheet: SheetData) -> _Planned:
        ws = self.wb.add_worksheet(safe_sheet_name(sheet.name))
        self.count += 1
        frame = sheet.frame
        formats = [sheet.formats.get(str(c)) or infer_format(frame[c]) for c in frame.columns]
        headers = [str(c) for c in frame.columns]
        n = len(frame)
        ncols = max(1, len(headers))
        for j, (h, fmt) in enumerate(zip(headers, formats, strict=True)):
            ws.write_string(0, j, h, self.header)
            ws.set_column(j, j, _col_width(frame.iloc[:, j], h, fmt))
            sample = _sample_value(fmt)
            cell_fmt = self.formats[fmt]
            if isinstance(sample, str):
                ws.write_string(1, j, sample, cell_fmt)
            elif isinstance(sample, bool):
                ws.write_boolean(1, j, sample, cell_fmt)
            elif isinstance(sample, datetime):
                ws.write_datetime(1, j, sample, cell_fmt)
            else:
                ws.write_number(1, j, sample, cell_fmt)
        if headers:
            # Sized for the sample row only: xlsxwriter tracks every table cell in a dict, which
            # would cost gigabytes at a million rows. The real range is set when rows are spliced in.
            ws.add_table(0, 0, 1, ncols - 1, {
                "name": table_name(sheet.name),
                "columns": [{"header": h} for h in headers],
                "style": "Table Style Medium 2",
            })
        ws.freeze_panes(1, 0)
        if sheet.highlight and sheet.highlight in headers and n:
            col = headers.index(sheet.highlight)
            letter = xl_col_to_name(col)
            colours = {"high": "#F8CBAD", "medium": "#FFE699", "low": "#DDEBF7"}
            for value, colour in colours.items():
                ws.conditional_format(1, 0, n, ncols - 1, {
                    "type": "formula",
                    "criteria": f'=${letter}2="{value}"',
                    "format": self.wb.add_format({"bg_color": colour}),
                })
        return _Planned(sheet, self.count, formats)

    def summary(self, data: SummaryData, sheet_rows: dict[str, int], sheet_columns: dict[str, list[str]]) -> None:
        ws = self.wb.add_worksheet("Summary")
        self.count += 1
        title = self.wb.add_format({"bold": True, "font_size": 16})
        bold = self.wb.add_format({"bold": True, "bottom": 1})
        ws.write_string(0, 0, data.title, title)
        row = 1
        for line in data.lines:
            ws.write_string(row, 0, line)
            row += 1
        row += 1
        ws.set_column(0, 0, 30)
        ws.set_column(1, 4, 16)
        kpi_cols = list(data.kpis.columns)
        for j, c in enumerate(kpi_cols):
            ws.write_string(row, j, str(c), bold)
        row += 1
        for rec in data.kpis.itertuples(index=False):
            unit = getattr(rec, "unit", "") or ""
            fmt = self.formats.get({"currency": "currency", "currency_per_day": "currency", "ratio": "ratio",
                                    "pct": "pct", "count": "int", "days": "days"}.get(str(unit), "number"))
            for j, v in enumerate(rec):
                _write_any(ws, row, j, v, fmt if kpi_cols[j] in ("value", "previous", "change") else None)
            row += 1
        row += 1
        flag_cols = list(data.flag_counts.columns)
        for j, c in enumerate(flag_cols):
            ws.write_string(row, j, str(c), bold)
        row += 1
        for rec in data.flag_counts.itertuples(index=False):
            for j, v in enumerate(rec):
                _write_any(ws, row, j, v, None)
            row += 1
        chart_row = 1
        for spec in data.charts:
            rows = sheet_rows.get(spec.sheet, 0)
            cols = sheet_columns.get(spec.sheet, [])
            if rows == 0 or spec.category not in cols or any(v not in cols for v in spec.values):
                continue
            last = rows if spec.rows is None else min(rows, spec.rows)
            chart = self.wb.add_chart({"type": spec.kind})
            cat = cols.index(spec.category)
            for v in spec.values:
                c = cols.index(v)
                series = {
                    "name": [spec.sheet, 0, c],
                    "categories": [spec.sheet, 1, cat, last, cat],
                    "values": [spec.sheet, 1, c, last, c],
                }
                if v in spec.secondary:
                    series["y2_axis"] = True
                chart.add_series(series)
            chart.set_title({"name": spec.title})
            chart.set_size({"width": 560, "height": 300})
            chart.set_legend({"position": "bottom"})
            ws.insert_chart(chart_row, 7, chart)
            chart_row += 16
        ws.set_landscape()
        ws.fit_to_pages(1, 0)


def _write_any(ws: Any, row: int, col: int, value: Any, fmt: Any) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return
    if isinstance(value, bool | np.bool_):
        ws.write_boolean(row, col, bool(value))
    elif isinstance(value, int | float | np.integer | np.floating):
        ws.write_number(row, col, float(value), fmt)
    elif isinstance(value, datetime | date | pd.Timestamp):
        ws.write_datetime(row, col, pd.Timestamp(value).to_pydatetime().replace(tzinfo=None), fmt)
    else:
        ws.write_string(row, col, str(value)[:EXCEL_MAX_CELL_CHARS])


# ----------------------------------------------------------------------------- splice rows in


_SAMPLE_ROW = re.compile(rb'<row r="2"[^>]*>(.*?)</row>', re.S)
_CELL_STYLE = re.compile(rb'<c r="[A-Z]+2"(?: s="(\d+)")?')
_DIMENSION = re.compile(rb'<dimension ref="[^"]*"/>')


def _splice(src: zipfile.ZipFile, dst: zipfile.ZipFile, name: str, planned: _Planned, stats: WriteStats,
            sst: SharedStrings | None) -> None:
    xml = src.read(name)
    head, rest = xml.split(b"<sheetData>", 1) if b"<sheetData>" in xml else xml.split(b"<sheetData/>", 1)
    data, tail = rest.split(b"</sheetData>", 1) if b"</sheetData>" in rest else (b"", rest)
    header_row = re.search(rb'<row r="1"[^>]*>.*?</row>', data, re.S)
    sample = _SAMPLE_ROW.search(data)
    styles = [m.group(1).decode() if m.group(1) else "0" for m in _CELL_STYLE.finditer(sample.group(1))] if sample else []
    frame = planned.sheet.frame
    ncols = frame.shape[1]
    styles = (styles + ["0"] * ncols)[:ncols]
    last_row = max(len(frame), 1) + 1
    dim = f'<dimension ref="A1:{xl_col_to_name(max(ncols, 1) - 1)}{last_row}"/>'.encode()
    head = _DIMENSION.sub(dim, head)
    # opened by name, so the entry gets the archive's fast compression level (a bare ZipInfo gets 6)
    with dst.open(name, "w", force_zip64=True) as out:
        out.write(head + b"<sheetData>")
        if header_row:
            out.write(header_row.group(0))
        wrote = False
        for block in _rows_xml(frame, planned.formats, styles, stats, sst):
            out.write(block.encode("utf-8"))
            wrote = True
        if not wrote:
            out.write(b'<row r="2"></row>')
        out.write(b"</sheetData>" + tail)



def _full_ref(planned: _Planned) -> str:
    ncols = max(planned.sheet.frame.shape[1], 1)
    return f"A1:{xl_col_to_name(ncols - 1)}{max(len(planned.sheet.frame), 1) + 1}"


_TABLE_NAME = re.compile(rb'<table [^>]*?name="([^"]+)"')
_REF = re.compile(rb'(<table [^>]*?ref=|<autoFilter ref=)"[^"]*"')


def _resize_table(xml: bytes, refs: dict[str, str]) -> bytes:
    """Set a data table's range (and its filter's) to cover every written row."""
    m = _TABLE_NAME.search(xml)
    ref = refs.get(m.group(1).decode()) if m else None
    if ref is None:
        return xml
    return _REF.sub(lambda mm: mm.group(1) + b'"' + ref.encode() + b'"', xml)


def write_workbook(
    path: str | Path,
    *,
    sheets: list[SheetData],
    summary: SummaryData | None = None,
    currency: str = "USD",
) -> WriteStats:
    """Write the workbook atomically to `path` (temp file in the same folder, then rename).

    Sheet order: Summary first (when given), then `sheets` as given.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stats = WriteStats()
    sheets = split_sheets(sheets, stats)
    work = Path(tempfile.mkdtemp(prefix=".pipeline-sync-", dir=target.parent))
    try:
        layout_path = work / "layout.xlsx"
        wb = xlsxwriter.Workbook(str(layout_path), {
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
            "use_zip64": True,
        })
        layout = _Layout(wb, currency)
        if summary is not None:
            layout.summary(
                summary,
                {s.name: len(s.frame) for s in sheets},
                {s.name: [str(c) for c in s.frame.columns] for s in sheets},
            )
        planned = [layout.data_sheet(s) for s in sheets]
        wb.close()
        by_part = {f"xl/worksheets/sheet{p.index}.xml": p for p in planned}
        table_refs = {table_name(p.sheet.name): _full_ref(p) for p in planned}
        final_tmp = work / "final.xlsx"
        with zipfile.ZipFile(layout_path) as src, zipfile.ZipFile(final_tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
            names = set(src.namelist())
            sst = SharedStrings(src.read(SST_PART)) if SST_PART in names else None
            for item in src.infolist():
                if item.filename in by_part:
                    _splice(src, dst, item.filename, by_part[item.filename], stats, sst)
                elif item.filename.startswith("xl/tables/"):
                    dst.writestr(item, _resize_table(src.read(item.filename), table_refs))
                elif item.filename != SST_PART:
                    dst.writestr(item, src.read(item.filename))
            if sst is not None:  # written last: it now holds the strings the data sheets share
                dst.writestr(src.getinfo(SST_PART), sst.xml())
        with open(final_tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(final_tmp, target)
        stats.sheets = (["Summary"] if summary is not None else []) + [p.sheet.name for p in planned]
        stats.rows = {p.sheet.name: len(p.sheet.frame) for p in planned}
        return stats
    finally:
        shutil.rmtree(work, ignore_errors=True)
