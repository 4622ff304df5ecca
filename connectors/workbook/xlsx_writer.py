"""Render the workbook: xlsxwriter lays out every sheet, data rows are streamed in afterwards.

Why two steps: xlsxwriter writes tables, charts, formats and conditional formats well, but in
its streaming (`constant_memory`) mode it cannot add tables, and in its normal mode it keeps
every cell in memory. So xlsxwriter writes each data sheet with its header, one sample row
(which fixes the style of every column) and the `tbl<Sheet>` table (its range is widened to
all rows afterwards); then the sheet XML's rows are replaced by rows generated column-wise from
the frame, chunk by chunk, written straight into the final zip (fast deflate, on a second
thread). Each distinct value of a column is escaped and wrapped once; a row is one join of its
cells, which carry no cell reference unless they follow a missing cell (the reference is
optional in ECMA-376). Text that repeats down a column goes to the shared-string table. Memory
stays at the frames plus two chunks of XML.

Text is always a string cell (inline or shared), never a formula: a value starting with `=`,
`+`, `-` or `@` stays text.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xlsxwriter
from xlsxwriter.utility import xl_col_to_name

from config.schema import EXCEL_MAX_CELL_CHARS, EXCEL_MAX_ROWS
from config.workbook import (
    ColumnFormat,
    FormCell,
    SheetData,
    SheetForm,
    SummaryData,
    WaterfallSpec,
    table_name,
)

MAX_DATA_ROWS = EXCEL_MAX_ROWS - 1  # one row is the header
CUT_MARKER = " …[cut]"
CHUNK_ROWS = 25_000
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
        self.base_xml = base_xml
        self.base = int(m.group(1)) if m else 0
        self.references = 0  # shared-string cells actually written (xlsxwriter's count has the sample rows)
        self.index: defaultdict[str, int] = defaultdict(itertools.count(self.base).__next__)
        self.items: list[str] = []  # blocks of <si> XML, in index order

    def ids(self, keys: list[str]) -> list[int]:
        """Index of each key (escaped text; a leading NUL marks xml:space="preserve"), adding new
        ones in order."""
        before = self.base + len(self.index)
        ids = list(map(self.index.__getitem__, keys))
        if self.base + len(self.index) == before:
            return ids
        arr = np.asarray(ids)
        fresh = np.flatnonzero(arr >= before)
        _, first = np.unique(arr[fresh], return_index=True)  # new ids are consecutive from `before`
        new = [keys[i] for i in fresh[first].tolist()]
        spaced = [i for i, k in enumerate(new) if k.startswith("\x00")]
        block = _wrap([k[1:] if k.startswith("\x00") else k for k in new] if spaced else new, "<si><t>", "</t></si>")
        for i in spaced:
            block[i] = '<si><t xml:space="preserve">' + new[i][1:] + "</t></si>"
        self.items.append("".join(block))
        return ids

    def xml(self) -> bytes:
        total = self.base + len(self.index)
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
            out.append(SheetData(name, part, sheet.formats, sheet.notes, sheet.highlight,
                                 form=sheet.form if k == 0 else None))
        stats.notes.append(
            f"{sheet.name}: {n:,} rows are more than one sheet holds; split into {parts} sheets "
            f"({', '.join([sheet.name] + [f'{sheet.name} ({k + 1})' for k in range(1, parts)])})"
        )
    return out


# ----------------------------------------------------------------------------- cell XML
#
# A column becomes (codes, table): per row the code of its distinct value, per distinct value its
# whole `<c ...>...</c>` without a reference (table[-1], picked by code -1, is "": a missing cell
# is not written). Rows are then `"".join` of a 2-D object array, so no Python work happens per
# cell. A cell carries its reference (`r`) only when the cell before it in the row is missing;
# otherwise its position is implied by its place in the row (ECMA-376 18.3.1.4: `r` is optional).


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


def _wrap(items: list[str], head: str, tail: str) -> list[str]:
    """`head + item + tail` for every item, with one join and one split (items never hold NUL)."""
    if not items:
        return []
    return (head + (tail + "\x00" + head).join(items) + tail).split("\x00")


def _code_points(joined: str) -> np.ndarray:
    if joined.isascii():
        return np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _special(joined: str, lengths: np.ndarray) -> np.ndarray:
    """Indices of the values (joined by "\n") that need more than wrapping: XML escapes, illegal
    characters, a literal `_xHHHH_`, leading/trailing whitespace (xml:space) or a cut. One
    vectorised pass over the code points; "\n" needs no escape, so it marks no value by itself."""
    cp = _code_points(joined)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    bad = ((cp < 32) & (cp != 9) & (cp != 10)) | (cp == 38) | (cp == 60) | (cp == 62)
    if cp.dtype == np.uint32:
        bad |= (cp == 0xFFFE) | (cp == 0xFFFF)
    bad[:-1] |= (cp[:-1] == 95) & (cp[1:] == 120)  # "_x"
    hits = np.searchsorted(starts, np.flatnonzero(bad), side="right") - 1
    nonempty = lengths > 0
    ends = starts + lengths - 1
    edge = np.zeros(len(lengths), dtype=bool)
    if cp.dtype == np.uint8:  # ASCII: a lookup table
        edge[nonempty] = _ASCII_SPACE[cp[starts[nonempty]]] | _ASCII_SPACE[cp[ends[nonempty]]]
    else:
        edge[nonempty] = np.isin(cp[starts[nonempty]], _SPACES) | np.isin(cp[ends[nonempty]], _SPACES)
    long = lengths > EXCEL_MAX_CELL_CHARS
    return np.union1d(hits, np.flatnonzero(edge | long))


_SPACES = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)  # str.isspace, all of it
_ASCII_SPACE = np.array([chr(c).isspace() for c in range(256)])


def _mostly_distinct(values: np.ndarray, sample: int = 2000) -> bool:
    """Whether a text column's values are (nearly) all different, judged on its first rows: such
    a column is written inline value by value, without the cost of finding its repeats."""
    head = values[:sample]
    head = head[~pd.isna(head)].tolist()
    try:
        distinct = len(set(head))
    except TypeError:  # unhashable values (dicts, lists): see _text_table
        return False
    return len(head) >= 100 and distinct >= 0.9 * len(head) and distinct * 2 > min(sample, len(values))


def _text_table(values: np.ndarray, s_attr: str, stats: WriteStats, sst: SharedStrings | None,
                distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Text cells: each distinct value escaped and wrapped once; values that repeat down the
    column go to the shared-string table. Empty text is a missing cell. `distinct`: treat every
    present value as its own (inline), skipping the search for repeats."""
    arr = values
    if distinct:
        present = np.flatnonzero(~pd.isna(arr))
        texts = arr[present].tolist()
        codes = np.full(len(arr), -1, dtype=np.intp)
        codes[present] = np.arange(len(present))
        sst = None
    else:
        try:
            codes, uniques = pd.factorize(arr, use_na_sentinel=True)
        except TypeError:  # unhashable values (a raw record's dicts, lists): written as their text
            arr = np.array([v if na or isinstance(v, str) else str(v) for v, na in zip(arr.tolist(), pd.isna(arr).tolist(),
                                                                                      strict=True)], dtype=object)
            codes, uniques = pd.factorize(arr, use_na_sentinel=True)
        texts = uniques.tolist()
    try:
        joined = "\n".join(texts)
    except TypeError:  # an object column may hold numbers or other objects: written as their text
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        joined = "\n".join(texts)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    empty = np.flatnonzero(lengths == 0)
    if len(empty):  # "" is written like a missing value
        remap = np.append(np.arange(len(texts)), -1)  # code -1 stays -1
        remap[empty] = -1
        codes = remap[codes]
    escaped = texts  # shared with texts until a value needs escaping
    preserve: list[int] = []
    cut: list[int] = []
    special = _special(joined, lengths) if texts else np.empty(0, dtype=np.int64)
    if len(special):
        escaped = list(texts)
        for i in special.tolist():
            text = texts[i]
            if not text:
                continue
            if len(text) > EXCEL_MAX_CELL_CHARS:
                cut.append(i)
            escaped[i] = _escape_one(text, stats)
            if text[0].isspace() or text[-1].isspace():
                preserve.append(i)
    if cut:  # _escape_one counted each distinct value once; count every cell
        stats.cut_cells += int(np.isin(codes, cut).sum()) - len(cut)
    if sst is not None and len(texts) * 2 <= len(values):
        keys = escaped if not preserve else list(escaped)
        for i in preserve:
            keys[i] = "\x00" + keys[i]
        if len(empty):  # no shared string for "" (its cell is not written)
            ids = [0] * len(keys)
            kept = np.flatnonzero(lengths > 0).tolist()
            for i, v in zip(kept, sst.ids([keys[i] for i in kept]), strict=True):
                ids[i] = v
        else:
            ids = sst.ids(keys)
        table = _wrap(list(map(str, ids)), f'<c{s_attr} t="s"><v>', "</v></c>")
        sst.references += int((codes >= 0).sum())
    else:
        table = _wrap(escaped, f'<c{s_attr} t="inlineStr"><is><t>', "</t></is></c>")
        for i in preserve:
            table[i] = f'<c{s_attr} t="inlineStr"><is><t xml:space="preserve">{escaped[i]}</t></is></c>'
    table.append("")
    return codes, np.array(table, dtype=object)


def _number_strings(uniques: np.ndarray) -> list[str]:
    if len(uniques) and bool((uniques == np.trunc(uniques)).all()) and float(np.abs(uniques).max()) < 2**53:
        return list(map(str, uniques.astype(np.int64).tolist()))  # integral values print without ".0"
    return list(map(repr, uniques.tolist()))


def _column_table(series: pd.Series | np.ndarray, fmt: ColumnFormat, style: str, stats: WriteStats,
                  sst: SharedStrings | None = None, distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(codes, table) for one column (text: an object array; else a Series): the cell of row i is
    table[codes[i]]; code -1 (and only code -1) is a missing cell, table[-1] == ""."""
    s_attr = f' s="{style}"' if style and style != "0" else ""
    if fmt == "text":
        return _text_table(series, s_attr, stats, sst, distinct)
    if fmt == "bool":
        codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
        table = [f'<c{s_attr} t="b"><v>{1 if u else 0}</v></c>' for u in uniques.tolist()]
        return codes, np.array([*table, ""], dtype=object)
    if fmt in ("date", "datetime"):
        dt = pd.to_datetime(series, errors="coerce")
        if getattr(dt.dt, "tz", None) is not None:
            dt = dt.dt.tz_localize(None)
        arr = dt.to_numpy(dtype="datetime64[ns]")
        if fmt == "date":
            serial = np.where(np.isnat(arr), -1, (arr.astype("datetime64[D]") - _EPOCH).astype(np.int64))
            codes, uniques = pd.factorize(serial)
            codes[serial < 0] = -1  # its unique stays in the table, unused
            table = _wrap(list(map(str, uniques.tolist())), f"<c{s_attr}><v>", "</v></c>")
            return codes, np.array([*table, ""], dtype=object)
        serial = (arr - _EPOCH.astype("datetime64[ns]")).astype(np.int64) / 86_400e9
        codes, uniques = pd.factorize(np.where(np.isnat(arr), np.nan, np.round(serial, 8)), use_na_sentinel=True)
        table = _wrap(list(map(repr, uniques.tolist())), f"<c{s_attr}><v>", "</v></c>")
        return codes, np.array([*table, ""], dtype=object)
    num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    codes, uniques = pd.factorize(np.where(np.isfinite(num), num, np.nan), use_na_sentinel=True)
    table = _wrap(_number_strings(uniques), f"<c{s_attr}><v>", "</v></c>")
    return codes, np.array([*table, ""], dtype=object)


def _with_reference(letter: str, rows: np.ndarray, cells: np.ndarray) -> list[str]:
    """`<c r="B7" ...>` for cells that follow a gap (the cell's own `<c` replaced)."""
    refs = _wrap(list(map(str, rows.tolist())), f'<c r="{letter}', '"')
    return [ref + cell[2:] for ref, cell in zip(refs, cells.tolist(), strict=True)]


def _rows_xml(frame: pd.DataFrame, formats: list[ColumnFormat], styles: list[str], stats: WriteStats,
              sst: SharedStrings | None = None, first: int = 2) -> Iterator[str]:
    """Yield `<row>` XML for all data rows (starting at sheet row `first`, 1-based), chunk by chunk."""
    letters = [xl_col_to_name(j) for j in range(frame.shape[1])]
    ncols = frame.shape[1]
    columns = [frame.iloc[:, j] for j in range(ncols)]
    columns = [c.to_numpy(dtype=object) if f == "text" else c for c, f in zip(columns, formats, strict=True)]
    distinct = [formats[j] == "text" and _mostly_distinct(columns[j]) for j in range(ncols)]
    grid = np.empty((min(CHUNK_ROWS, len(frame)), ncols + 2), dtype=object)  # reused by every chunk
    grid[:, -1] = "</row>"
    for start in range(0, len(frame), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(frame))
        n = stop - start
        rows = grid[:n]
        rows[:, 0] = _wrap(list(map(str, range(start + first, stop + first))), '<row r="', '">')
        before_missing: np.ndarray | None = None  # per row: is the previous column's cell missing?
        for j in range(ncols):
            col = columns[j]
            codes, table = _column_table(col[start:stop] if formats[j] == "text" else col.iloc[start:stop],
                                         formats[j], styles[j], stats, sst, distinct[j])
            cells = table[codes]
            missing = codes < 0
            if before_missing is not None:
                at = np.flatnonzero(before_missing & ~missing)
                if len(at):  # after a gap a cell says where it is
                    cells[at] = _with_reference(letters[j], at + (start + first), cells[at])
            rows[:, j + 1] = cells
            before_missing = missing
        yield "".join(rows.ravel().tolist())


# ----------------------------------------------------------------------------- layout with xlsxwriter


@dataclass
class _Planned:
    sheet: SheetData
    index: int  # 1-based worksheet number in the package (xl/worksheets/sheet{index}.xml)
    formats: list[ColumnFormat]
    offset: int = 0  # rows of form cells above the table's header
    spliced: bool = True  # False: a form alone, written whole by xlsxwriter


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
    sample = series.iloc[:2000].to_numpy(dtype=object)
    lengths = [len(v) if isinstance(v, str) else len(str(v)) for v in sample[~pd.isna(sample)].tolist()]
    longest = int(np.quantile(lengths, 0.95)) if lengths else 0
    return float(min(60, max(base, longest + 2)))


class _Layout:
    def __init__(self, workbook: xlsxwriter.Workbook, currency: str):
        self.wb = workbook
        self.currency_code = currency_format(currency)
        self.form_formats: dict[tuple[str, str | None], Any] = {}
        self.header = workbook.add_format({"bold": True, "text_wrap": False})
        self.formats: dict[str, Any] = {k: workbook.add_format({"num_format": v}) for k, v in NUMBER_FORMATS.items()}
        self.formats["currency"] = workbook.add_format({"num_format": currency_format(currency)})
        self.formats["text"] = None  # the default style: no `s` attribute on millions of text cells
        self.formats["bool"] = None
        self.count = 0

    def data_sheet(self, sheet: SheetData) -> _Planned:
        ws = self.wb.add_worksheet(safe_sheet_name(sheet.name))
        self.count += 1
        frame = sheet.frame
        formats = [sheet.formats.get(str(c)) or infer_format(frame[c]) for c in frame.columns]
        headers = [str(c) for c in frame.columns]
        n = len(frame)
        ncols = max(1, len(headers))
        top = 0
        if sheet.form is not None:
            self.form(ws, sheet.form)
            if not headers:
                return _Planned(sheet, self.count, formats, spliced=False)
            top = sheet.form.height
        for j, (h, fmt) in enumerate(zip(headers, formats, strict=True)):
            ws.write_string(top, j, h, self.header)
            if sheet.form is None or j not in sheet.form.widths:
                ws.set_column(j, j, _col_width(frame.iloc[:, j], h, fmt))
            sample = _sample_value(fmt)
            cell_fmt = self.formats[fmt]
            if isinstance(sample, str):
                ws.write_string(top + 1, j, sample, cell_fmt)
            elif isinstance(sample, bool):
                ws.write_boolean(top + 1, j, sample, cell_fmt)
            elif isinstance(sample, datetime):
                ws.write_datetime(top + 1, j, sample, cell_fmt)
            else:
                ws.write_number(top + 1, j, sample, cell_fmt)
        if headers:
            # Sized for the sample row only: xlsxwriter tracks every table cell in a dict, which
            # would cost gigabytes at a million rows. The real range is set when rows are spliced in.
            ws.add_table(top, 0, top + 1, ncols - 1, {
                "name": (sheet.form.table_name if sheet.form is not None else None) or table_name(sheet.name),
                "columns": [{"header": h} for h in headers],
                "style": "Table Style Medium 2",
            })
        if sheet.form is None:  # a form's rows would all stay frozen above the table
            ws.freeze_panes(1, 0)
        if sheet.highlight and sheet.highlight in headers and n:
            col = headers.index(sheet.highlight)
            letter = xl_col_to_name(col)
            colours = {"high": "#F8CBAD", "medium": "#FFE699", "low": "#DDEBF7"}
            for value, colour in colours.items():
                ws.conditional_format(top + 1, 0, top + n, ncols - 1, {
                    "type": "formula",
                    "criteria": f'=${letter}{top + 2}="{value}"',
                    "format": self.wb.add_format({"bg_color": colour}),
                })
        return _Planned(sheet, self.count, formats, offset=top)

    def _cell_format(self, cell: FormCell) -> Any:
        key = (cell.style, cell.format)
        if key not in self.form_formats:
            props: dict[str, Any] = {
                "text": {}, "title": {"bold": True, "font_size": 14}, "header": {"bold": True, "bottom": 1},
                "input": {"bg_color": "#FFF2CC", "border": 1, "locked": False}, "note": {"italic": True,
                                                                                     "font_color": "#595959"},
                "bold": {"bold": True}}[cell.style]
            if cell.format == "currency":
                props["num_format"] = self.currency_code
            elif cell.format in NUMBER_FORMATS:
                props["num_format"] = NUMBER_FORMATS[cell.format]
            self.form_formats[key] = self.wb.add_format(props) if props else None
        return self.form_formats[key]

    def form(self, ws: Any, form: SheetForm) -> None:
        """Write a form's cells (formulas with their computed values), tables and column widths."""
        for col, width in form.widths.items():
            ws.set_column(col, col, width)
        for cell in form.cells:
            fmt = self._cell_format(cell)
            if cell.formula is not None:
                value = cell.value
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    value = ""
                elif isinstance(value, bool | np.bool_):
                    value = "TRUE" if value else "FALSE"
                elif isinstance(value, int | float | np.integer | np.floating):
                    value = float(value)
                ws.write_formula(cell.row, cell.col, cell.formula, fmt, value)
            elif cell.value is None and fmt is not None:
                ws.write_blank(cell.row, cell.col, None, fmt)
            else:
                _write_any(ws, cell.row, cell.col, cell.value, fmt)
        for t in form.tables:
            ws.add_table(t.first_row, t.first_col, max(t.last_row, t.first_row + 1), t.first_col + len(t.headers) - 1, {
                "name": t.name, "columns": [{"header": h} for h in t.headers], "style": "Table Style Light 9",
                "autofilter": False})

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
            if isinstance(spec, WaterfallSpec):
                from connectors.workbook.waterfall import waterfall_chart

                ws.insert_chart(chart_row, 7, waterfall_chart(self.wb, spec, self.currency_code))
                chart_row += 16
                continue
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


class _Zipper:
    """Every write into the final zip, in order, on one worker thread. zlib, crc32 and the file
    write release the GIL, so deflating block k overlaps building block k + 1, across sheets too.
    At most one block waits or deflates while the next is built (two blocks in memory)."""

    def __init__(self, dst: zipfile.ZipFile):
        self.dst = dst
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="xlsx-deflate")
        self.pending: list[Future] = []
        self.out: Any = None  # the entry being written

    def __enter__(self) -> _Zipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        if self.out is not None:  # failed inside an entry: close it so the archive closes (and is discarded)
            self.out.close()

    def _submit(self, fn: Any, *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self) -> None:
        for f in self.pending:
            f.result()
        self.pending.clear()

    def writestr(self, info: zipfile.ZipInfo, data: bytes, **kw: Any) -> None:
        self._submit(lambda: self.dst.writestr(info, data, **kw))

    def begin(self, name: str, head: bytes) -> None:
        def run() -> None:
            # opened by name, so the entry gets the archive's fast level (a bare ZipInfo gets 6)
            self.out = self.dst.open(name, "w", force_zip64=True)
            self.out.write(head)
        self._submit(run)

    def block(self, text: str) -> None:
        self.wait()
        self._submit(lambda: self.out.write(text.encode("utf-8")))

    def end(self, tail: bytes) -> None:
        def run() -> None:
            self.out.write(tail)
            self.out.close()
            self.out = None
        self._submit(run)


def _splice(src: zipfile.ZipFile, zipper: _Zipper, name: str, planned: _Planned, stats: WriteStats,
            sst: SharedStrings | None) -> None:
    xml = src.read(name)
    head, rest = xml.split(b"<sheetData>", 1) if b"<sheetData>" in xml else xml.split(b"<sheetData/>", 1)
    data, tail = rest.split(b"</sheetData>", 1) if b"</sheetData>" in rest else (b"", rest)
    top = planned.offset
    header_row = re.search(rb'<row r="%d"[^>]*>.*?</row>' % (top + 1), data, re.S)
    sample = re.search(rb'<row r="%d"[^>]*>(.*?)</row>' % (top + 2), data, re.S) if top else _SAMPLE_ROW.search(data)
    cell_style = re.compile(rb'<c r="[A-Z]+%d"(?: s="(\d+)")?' % (top + 2)) if top else _CELL_STYLE
    styles = [m.group(1).decode() if m.group(1) else "0" for m in cell_style.finditer(sample.group(1))] if sample else []
    frame = planned.sheet.frame
    ncols = frame.shape[1]
    styles = (styles + ["0"] * ncols)[:ncols]
    last_row = max(len(frame), 1) + 1 + top
    width = max(ncols, _form_width(planned.sheet.form))
    dim = f'<dimension ref="A1:{xl_col_to_name(max(width, 1) - 1)}{last_row}"/>'.encode()
    head = _DIMENSION.sub(dim, head) + b"<sheetData>"
    if header_row:
        above = data[:header_row.start()]  # a form's rows
        head += above + header_row.group(0)
        if sst is not None:
            sst.references += (above + header_row.group(0)).count(b't="s"')
    zipper.begin(name, head)
    wrote = False
    for block in _rows_xml(frame, planned.formats, styles, stats, sst, first=top + 2):
        zipper.block(block)
        wrote = True
    zipper.end((b"" if wrote else b'<row r="%d"></row>' % (top + 2)) + b"</sheetData>" + tail)


def _form_width(form: SheetForm | None) -> int:
    if form is None:
        return 0
    return max([c.col + 1 for c in form.cells] + [t.first_col + len(t.headers) for t in form.tables] + [0])


def _data_table_name(sheet: SheetData) -> str:
    return (sheet.form.table_name if sheet.form is not None else None) or table_name(sheet.name)


def _finish_late(planned: _Planned, sheet: SheetData) -> None:
    """The late sheet's final frame replaces the one it was laid out with."""
    formats = [sheet.formats.get(str(c)) or infer_format(sheet.frame[c]) for c in sheet.frame.columns]
    if [str(c) for c in sheet.frame.columns] != [str(c) for c in planned.sheet.frame.columns] or formats != planned.formats:
        raise ValueError(f"write_workbook: the last sheet {sheet.name!r} changed its columns or formats after layout; "
                         "`last` must return the same columns for any WriteStats")
    planned.sheet = sheet


def _full_ref(planned: _Planned) -> str:
    ncols = max(planned.sheet.frame.shape[1], 1)
    top = planned.offset
    return f"A{top + 1}:{xl_col_to_name(ncols - 1)}{max(len(planned.sheet.frame), 1) + 1 + top}"


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
    last: Callable[[WriteStats], SheetData] | None = None,
) -> WriteStats:
    """Write the workbook atomically to `path` (temp file in the same folder, then rename).

    Sheet order: Summary first (when given), then `sheets` as given, then `last`: a sheet built
    once every other sheet is written, from their WriteStats (so an About sheet can report the
    cells cut while writing). It is laid out from `last(WriteStats())` and written from
    `last(stats)`, which must have the same columns and formats (rows may differ).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stats = WriteStats()
    sheets = split_sheets(sheets, stats)
    if last is not None:
        sheets.append(last(WriteStats()))
    work = Path(tempfile.mkdtemp(prefix=".pipeline-sync-", dir=target.parent))
    try:
        layout_path = work / "layout.xlsx"
        wb = xlsxwriter.Workbook(str(layout_path), {
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
            "use_zip64": True,
            "in_memory": True,  # the layout is small: no temp file per part
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
        by_part = {f"xl/worksheets/sheet{p.index}.xml": p for p in planned if p.spliced}
        table_refs = {_data_table_name(p.sheet): _full_ref(p) for p in planned if p.spliced}
        late = planned[-1] if last is not None else None
        final_tmp = work / "final.xlsx"
        with zipfile.ZipFile(layout_path) as src, \
                zipfile.ZipFile(final_tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst, _Zipper(dst) as zipper:
            names = set(src.namelist())
            sst = SharedStrings(src.read(SST_PART)) if SST_PART in names else None
            for item in src.infolist():
                if item.filename in by_part:
                    if by_part[item.filename] is late:  # every other sheet is written (xlsxwriter's order)
                        _finish_late(late, last(stats))
                        table_refs[_data_table_name(late.sheet)] = _full_ref(late)  # tables come after sheets
                    _splice(src, zipper, item.filename, by_part[item.filename], stats, sst)
                elif item.filename.startswith("xl/tables/"):
                    zipper.writestr(item, _resize_table(src.read(item.filename), table_refs))
                elif item.filename != SST_PART:
                    part = src.read(item.filename)
                    if sst is not None and item.filename.startswith("xl/worksheets/sheet"):  # e.g. Summary
                        sst.references += part.count(b't="s"')
                    zipper.writestr(item, part)
            if sst is not None:  # written last: it now holds the strings the data sheets share
                zipper.writestr(src.getinfo(SST_PART), sst.xml(), compresslevel=1)
            zipper.wait()
        with open(final_tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(final_tmp, target)
        stats.sheets = (["Summary"] if summary is not None else []) + [p.sheet.name for p in planned]
        stats.rows = {p.sheet.name: len(p.sheet.frame) for p in planned}
        return stats
    finally:
        shutil.rmtree(work, ignore_errors=True)
