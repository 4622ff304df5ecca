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
`+`, `-` or `@` stays text. The one formula the writer makes is HYPERLINK() for a `url` column
past Excel's 65,530 hyperlinks a sheet (its URL escaped, its value cached). The workbook's own
formulas (Targets, Movement) come as `SheetForm` cells the transforms built, each stored with its
computed value.

A sheet may carry a form (`SheetData.form`): cells, small tables and formulas written by
xlsxwriter above its data table, which then starts below them (a form without a frame is the
whole sheet). A waterfall (`WaterfallSpec`) on the Summary draws from such cells.

Sheets come in `config.workbook.SHEET_ORDER`; every sheet prints landscape, one page wide, with
its header row repeated. A column may take its format per row (`SheetData.row_formats`): each
format's style is fixed by a scratch cell of the layout, below the sample row.
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

from config.schema import EXCEL_MAX_CELL_CHARS
from config.workbook import ColumnFormat, FormCell, SheetData, SheetForm, SummaryData, order_sheets
from connectors.workbook.names import (
    column_attribute,
    cut_utf16,
    replace_surrogates,
    utf16_len,
    xstring,
)
from connectors.workbook.plan import (
    MAX_DATA_ROWS,
    Plan,
    finish_late,
    infer_format,
    map_charts,
    plan_sheets,
    split_rows,
)
from connectors.workbook.summary_sheet import is_link, write_summary

CUT_MARKER = " …[cut]"
HALF_CELL = EXCEL_MAX_CELL_CHARS // 2  # text of fewer code points is within the limit in UTF-16 units too
# A member is written with ZIP64 only when it may pass zipfile's limit (2 GiB - 1 uncompressed: it
# refuses larger members without ZIP64). A sheet's size is estimated from its first block of rows.
ZIP64_LIMIT = zipfile.ZIP64_LIMIT
ZIP64_MARGIN = 2.0  # later rows may be longer than the first block's
CHUNK_ROWS = 25_000
IN_FLIGHT = 3  # blocks queued for the deflate thread at most (so memory stays bounded)
SST_PART = "xl/sharedStrings.xml"
_EPOCH = np.datetime64("1899-12-30", "D")
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

NUMBER_FORMATS: dict[str, str] = {
    "int": "#,##0",
    "number": "#,##0.00",
    "ratio": "0.0%",
    "pct": '0.0"%"',
    "date": "yyyy-mm-dd",
    "datetime": "yyyy-mm-dd hh:mm",
    "days": "#,##0.0",
    "points": '0.0" pts"',
    "rate": "0.0000##",  # exchange rates: up to 6 decimals, as the CRMs keep them
}
MAX_LINKS = 65_530  # Excel's limit of hyperlinks on one sheet
MAX_FORMULA_TEXT = 255  # a string literal in a formula
HYPERLINK_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/hyperlink"
_SAMPLE_URL = "https://example.invalid/"
# the look of each SheetForm cell style
FORM_STYLES: dict[str, dict[str, Any]] = {
    "text": {}, "title": {"bold": True, "font_size": 14}, "header": {"bold": True, "bottom": 1},
    "input": {"bg_color": "#FFF2CC", "border": 1, "locked": False},
    "note": {"italic": True, "font_color": "#595959"}, "bold": {"bold": True},
}


def currency_format(code: str, decimals: int = 2) -> str:
    symbols = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "KRW": "₩"}
    sym = symbols.get(code.upper())
    digits = "#,##0" + ("." + "0" * decimals if decimals else "")
    return f'"{sym}"{digits}' if sym else f'{digits}" {code.upper()}"'


@dataclass
class WriteStats:
    sheets: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    cut_cells: int = 0
    notes: list[str] = field(default_factory=list)  # rows split over sheets, then every fix
    fixes: list[str] = field(default_factory=list)  # what was renamed or moved so Excel opens the file
    late_part: str | None = None  # the `last` sheet's part and table name (connectors.workbook.reuse)
    late_table: str | None = None


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


def split_sheets(sheets: list[SheetData], stats: WriteStats, max_rows: int = MAX_DATA_ROWS) -> list[SheetData]:
    """A frame over Excel's row limit becomes `Name`, `Name (2)`, ...: never truncated."""
    return split_rows(sheets, stats.notes, max_rows=max_rows)


# ----------------------------------------------------------------------------- cell XML
#
# A column becomes (codes, table): per row the code of its distinct value, per distinct value its
# whole `<c ...>...</c>` without a reference (table[-1], picked by code -1, is "": a missing cell
# is not written). Rows are then `"".join` of a 2-D object array, so no Python work happens per
# cell. A cell carries its reference (`r`) only when the cell before it in the row is missing;
# otherwise its position is implied by its place in the row (ECMA-376 18.3.1.4: `r` is optional).


def _too_long(t: str) -> bool:
    """Whether `t` is over Excel's cell limit, counted as Excel does (UTF-16 code units)."""
    return len(t) > HALF_CELL and (len(t) > EXCEL_MAX_CELL_CHARS or utf16_len(t) > EXCEL_MAX_CELL_CHARS)


def clean_text(t: str, stats: WriteStats | None = None) -> str:
    """Text as a cell can hold it: lone surrogates U+FFFD; over 32,767 UTF-16 units cut, with
    CUT_MARKER (and counted in `stats`)."""
    t = replace_surrogates(t)
    if _too_long(t):
        if stats is not None:
            stats.cut_cells += 1
        t = cut_utf16(t, EXCEL_MAX_CELL_CHARS - len(CUT_MARKER)) + CUT_MARKER
    return t


def _xstring(t: str) -> str:
    """ST_Xstring escapes: a literal `_xHHHH_` becomes `_x005F_xHHHH_`, a character XML cannot hold `_xHHHH_`."""
    t = xstring(t)
    if _ILLEGAL_XML.search(t):
        t = _ILLEGAL_XML.sub(lambda m: f"_x{ord(m.group(0)):04X}_", t)
    return t


def _escape_one(t: str, stats: WriteStats) -> str:
    t = _xstring(clean_text(t, stats))
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
    characters, lone surrogates, a literal `_xHHHH_`, leading/trailing whitespace (xml:space) or a cut. One
    vectorised pass over the code points; "\n" needs no escape, so it marks no value by itself."""
    cp = _code_points(joined)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    bad = ((cp < 32) & (cp != 9) & (cp != 10)) | (cp == 38) | (cp == 60) | (cp == 62)
    if cp.dtype == np.uint32:
        bad |= (cp == 0xFFFE) | (cp == 0xFFFF) | ((cp >= 0xD800) & (cp <= 0xDFFF))  # lone surrogates too
    bad[:-1] |= (cp[:-1] == 95) & (cp[1:] == 120)  # "_x"
    hits = np.searchsorted(starts, np.flatnonzero(bad), side="right") - 1
    nonempty = lengths > 0
    ends = starts + lengths - 1
    edge = np.zeros(len(lengths), dtype=bool)
    if cp.dtype == np.uint8:  # ASCII: a lookup table
        edge[nonempty] = _ASCII_SPACE[cp[starts[nonempty]]] | _ASCII_SPACE[cp[ends[nonempty]]]
    else:
        edge[nonempty] = np.isin(cp[starts[nonempty]], _SPACES) | np.isin(cp[ends[nonempty]], _SPACES)
    long = lengths > HALF_CELL  # maybe over the limit in UTF-16 units: _text_table measures them
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
    joined: str | None = None
    if distinct:
        texts = arr.tolist()
        try:  # a column without missing values (or numbers) joins as it is
            joined = "\n".join(texts)
            codes = np.arange(len(arr), dtype=np.intp)
        except TypeError:
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
    if joined is None:
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
            if _too_long(text):
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


def _grouped_table(values: pd.Series | np.ndarray, fmts: np.ndarray, base: ColumnFormat, base_style: str,
                   alt_styles: dict[str, str], stats: WriteStats, sst: SharedStrings | None) -> tuple[np.ndarray, np.ndarray]:
    """(codes, table) of a column whose format is chosen per row: one table per format, joined."""
    fm = np.where(pd.isna(fmts), base, fmts).astype(object)
    codes = np.full(len(fm), -1, dtype=np.intp)
    parts: list[np.ndarray] = []
    offset = 0
    for f in pd.unique(fm).tolist():
        at = np.flatnonzero(fm == f)
        part = values[at] if isinstance(values, np.ndarray) else values.iloc[at]
        c, t = _column_table(part, f, alt_styles.get(f, base_style), stats, sst)
        codes[at] = np.where(c >= 0, c + offset, -1)
        parts.append(t[:-1])
        offset += len(t) - 1
    return codes, np.concatenate([*parts, np.array([""], dtype=object)])


def link_plan(values: pd.Series) -> np.ndarray:
    """Per row of a `url` column: 0 plain text, 1 a hyperlink, 2 a HYPERLINK() formula (past
    MAX_LINKS hyperlinks on the sheet; a URL too long for a formula stays text)."""
    arr = values.to_numpy(dtype=object)
    distinct = _mostly_distinct(arr)  # a record URL per deal: each value checked once, no search for repeats
    codes, uniques = (None, arr) if distinct else pd.factorize(arr, use_na_sentinel=True)
    kinds = np.fromiter(((2 if len(u) <= MAX_FORMULA_TEXT else 1) if is_link(u) else 0 for u in uniques.tolist()),
                        dtype=np.int8, count=len(uniques))  # 2: a link that also fits in a formula
    kind = kinds if codes is None else np.append(kinds, 0)[codes]
    valid = kind > 0
    native = valid & (np.cumsum(valid) <= MAX_LINKS)
    plan = np.zeros(len(arr), dtype=np.int8)
    plan[native] = 1
    plan[valid & ~native & (kind == 2)] = 2
    return plan


def _formula_cells(urls: np.ndarray, style: str) -> list[str]:
    """`HYPERLINK("url")` formula cells (the URL also their cached value), escaped in one pass over
    all of them (`link_plan` lets no URL with a newline through)."""
    if not len(urls):
        return []
    s_attr = f' s="{style}"' if style and style != "0" else ""
    joined = "\n".join(urls.tolist()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    texts = joined.split("\n")
    quoted = joined.replace('"', '""').split("\n") if '"' in joined else texts
    return [f'<c{s_attr} t="str"><f>HYPERLINK("{q}")</f><v>{t}</v></c>' for q, t in zip(quoted, texts, strict=True)]


def _rows_xml(frame: pd.DataFrame, formats: list[ColumnFormat], styles: list[str], stats: WriteStats,
              sst: SharedStrings | None = None, row_formats: list[np.ndarray | None] | None = None,
              alt_styles: list[dict[str, str]] | None = None,
              links: list[np.ndarray | None] | None = None, heights: np.ndarray | None = None,
              first: int = 2) -> Iterator[str]:
    """Yield `<row>` XML for all data rows (starting at sheet row `first`, 1-based), chunk by chunk.
    `row_formats` (per column: a format per row, or None), `alt_styles` (their styles) and `links`
    (per `url` column: `link_plan`) and `heights` (points per row, 0: the default) are optional."""
    letters = [xl_col_to_name(j) for j in range(frame.shape[1])]
    ncols = frame.shape[1]
    row_formats = row_formats or [None] * ncols
    alt_styles = alt_styles or [{} for _ in range(ncols)]
    links = links or [None] * ncols
    columns = [frame.iloc[:, j] for j in range(ncols)]
    columns = [c.to_numpy(dtype=object) if f in ("text", "url") else c for c, f in zip(columns, formats, strict=True)]
    distinct = [formats[j] in ("text", "url") and _mostly_distinct(columns[j]) for j in range(ncols)]
    grid = np.empty((min(CHUNK_ROWS, len(frame)), ncols + 2), dtype=object)  # reused by every chunk
    grid[:, -1] = "</row>"
    for start in range(0, len(frame), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(frame))
        n = stop - start
        rows = grid[:n]
        rows[:, 0] = _wrap(list(map(str, range(start + first, stop + first))), '<row r="', '">')
        if heights is not None:
            tall = np.flatnonzero(heights[start:stop] > 0)
            rows[tall, 0] = [f'<row r="{start + first + i}" ht="{h:g}" customHeight="1">'
                             for i, h in zip(tall.tolist(), heights[start:stop][tall].tolist(), strict=True)]
        before_missing: np.ndarray | None = None  # per row: is the previous column's cell missing?
        for j in range(ncols):
            col = columns[j]
            part = col[start:stop] if formats[j] in ("text", "url") else col.iloc[start:stop]
            if row_formats[j] is not None:
                codes, table = _grouped_table(part, row_formats[j][start:stop], formats[j], styles[j], alt_styles[j],
                                              stats, sst)
            else:
                codes, table = _column_table(part, "text" if formats[j] == "url" else formats[j], styles[j], stats, sst,
                                             distinct[j])
            cells = table[codes]
            if links[j] is not None:
                as_formula = np.flatnonzero(links[j][start:stop] == 2)
                if len(as_formula):
                    cells[as_formula] = _formula_cells(part[as_formula], styles[j])
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
    table: str  # its table's name
    alts: dict[int, list[str]] = field(default_factory=dict)  # column -> formats of its scratch cells (rows 3, 4, ...)
    offset: int = 0  # rows of form cells above the table's header
    spliced: bool = True  # False: a form alone, written whole by xlsxwriter
    _links: tuple[pd.DataFrame, list[np.ndarray | None]] | None = None

    def row_formats(self) -> list[np.ndarray | None]:
        by_name = self.sheet.row_formats
        return [by_name[str(c)].to_numpy(dtype=object) if str(c) in by_name else None for c in self.sheet.frame.columns]

    def links(self) -> list[np.ndarray | None]:
        """`link_plan` of each `url` column (None for the others), worked out once."""
        if self._links is None or self._links[0] is not self.sheet.frame:
            frame = self.sheet.frame
            self._links = (frame, [link_plan(frame.iloc[:, j]) if f == "url" else None for j, f in enumerate(self.formats)])
        return self._links[1]


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
    if fmt in ("int", "number", "currency", "days", "ratio", "pct", "rate"):
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
        self.header = workbook.add_format({"bold": True, "text_wrap": False})
        self.formats: dict[str, Any] = {k: workbook.add_format({"num_format": v}) for k, v in NUMBER_FORMATS.items()}
        self.formats["currency"] = workbook.add_format({"num_format": currency_format(currency)})
        self.formats["currency_whole"] = workbook.add_format({"num_format": currency_format(currency, 0)})
        self.formats["text"] = None  # the default style: no `s` attribute on millions of text cells
        self.formats["bool"] = None
        self.formats["url"] = None  # the sample is a hyperlink: xlsxwriter's hyperlink style
        self._top: dict[tuple[str, bool], Any] = {}
        self.overlapping: list[str] = []  # Summary / form texts with overlapping _xHHHH_ runs (see _fix_overlapping)
        self.form_formats: dict[tuple[str, str | None], Any] = {}
        self.currency = currency
        self.count = 0

    def top(self, fmt: ColumnFormat, wrap: bool = False) -> Any:
        """`fmt` aligned to the top of its cell (a sheet with wrapped columns), wrapped when asked."""
        key = (fmt, wrap and fmt == "text")
        if key not in self._top:
            spec: dict[str, Any] = {"valign": "top", "text_wrap": key[1]}
            if fmt == "url":
                spec.update({"font_color": "blue", "underline": 1, "align": "left", "indent": 1})
            elif fmt == "text":
                spec.update({"align": "left", "indent": 1})  # clear of a number to its left
            elif self.number_format(fmt):
                spec["num_format"] = self.number_format(fmt)
            self._top[key] = self.wb.add_format(spec)
        return self._top[key]

    def data_sheet(self, sheet: SheetData, table: str, stats: WriteStats) -> _Planned:
        """`sheet` as planned (plan.py: its name and headers are clean) with its table `table`,
        below its form's cells when it has one."""
        ws = self.wb.add_worksheet(sheet.name)
        self.count += 1
        frame = sheet.frame
        headers = [str(c) for c in frame.columns]
        formats = [sheet.formats.get(h) or infer_format(frame.iloc[:, j]) for j, h in enumerate(headers)]
        n = len(frame)
        ncols = max(1, len(headers))
        top = 0
        if sheet.form is not None:
            self.form(ws, sheet.form, stats)
            if not headers:
                ws.set_landscape()
                ws.fit_to_pages(1, 0)
                ws.repeat_rows(0)
                return _Planned(sheet, self.count, formats, table, spliced=False)
            top = sheet.form.height
        alts: dict[int, list[str]] = {}
        for j, (h, fmt) in enumerate(zip(headers, formats, strict=True)):
            ws.write_string(top, j, h, self.header)
            if sheet.form is None or j not in sheet.form.widths:
                ws.set_column(j, j, sheet.widths.get(h) or _col_width(frame.iloc[:, j], h, fmt))
            if h in sheet.row_formats:  # a scratch cell per other format fixes its style (dropped when rows are spliced)
                alts[j] = sorted({str(f) for f in pd.unique(sheet.row_formats[h].dropna())} - {fmt})
                for k, alt in enumerate(alts[j]):
                    ws.write_number(top + 2 + k, j, 0, self.top(alt) if sheet.wrap else self.formats[alt])
            sample = _sample_value(fmt)
            cell_fmt = self.top(fmt, wrap=h in sheet.wrap) if sheet.wrap else self.formats[fmt]
            if fmt == "url":
                ws.write_url(top + 1, j, _SAMPLE_URL, cell_fmt, string="x")
            elif isinstance(sample, str):
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
                "name": table,
                "columns": [{"header": h} for h in headers],
                "style": "Table Style Medium 2",
            })
        if sheet.form is None:  # a form's rows would all stay frozen above the table
            ws.freeze_panes(1, 0)
        ws.set_landscape()
        ws.fit_to_pages(1, 0)
        ws.repeat_rows(0)  # the header, or a form's title
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
        return _Planned(sheet, self.count, formats, table, alts, offset=top)

    def _form_format(self, cell: FormCell) -> Any:
        key = (cell.style, cell.format)
        if key not in self.form_formats:
            props: dict[str, Any] = dict(FORM_STYLES[cell.style])
            code = self.number_format(cell.format) if cell.format else None
            if code:
                props["num_format"] = code
            self.form_formats[key] = self.wb.add_format(props) if props else None
        return self.form_formats[key]

    def clean(self, text: str, stats: WriteStats) -> str:
        """Text xlsxwriter writes as it is (Summary, forms): cut to a cell, overlapping `_xHHHH_`
        runs noted (xlsxwriter escapes only the first of each: fixed in the shared strings)."""
        text = clean_text(text, stats)
        if "_x" in text and _OVERLAPPING.search(text):
            self.overlapping.append(text)
        return text

    def form(self, ws: Any, form: SheetForm, stats: WriteStats) -> None:
        """A form's column widths, cells (formulas with their computed values) and small tables."""
        for col, width in form.widths.items():
            ws.set_column(col, col, width)
        for cell in form.cells:
            fmt = self._form_format(cell)
            value = cell.value
            if cell.formula is not None:
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    value = ""
                elif isinstance(value, bool | np.bool_):
                    value = "TRUE" if value else "FALSE"
                elif isinstance(value, int | float | np.integer | np.floating):
                    value = float(value)
                else:
                    value = self.clean(str(value), stats)
                ws.write_formula(cell.row, cell.col, cell.formula, fmt, value)
            elif value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
                if fmt is not None:
                    ws.write_blank(cell.row, cell.col, None, fmt)
            elif isinstance(value, bool | np.bool_):
                ws.write_boolean(cell.row, cell.col, bool(value), fmt)
            elif isinstance(value, int | float | np.integer | np.floating):
                ws.write_number(cell.row, cell.col, float(value), fmt)
            elif isinstance(value, datetime | date | pd.Timestamp):
                ws.write_datetime(cell.row, cell.col, pd.Timestamp(value).to_pydatetime().replace(tzinfo=None), fmt)
            else:
                ws.write_string(cell.row, cell.col, self.clean(str(value), stats), fmt)
        for t in form.tables:
            ws.add_table(t.first_row, t.first_col, max(t.last_row, t.first_row + 1), t.first_col + len(t.headers) - 1, {
                "name": t.name, "columns": [{"header": self.clean(h, stats)} for h in t.headers],
                "style": "Table Style Light 9", "autofilter": False})

    def summary(self, data: SummaryData, frames: dict[str, pd.DataFrame], stats: WriteStats) -> None:
        """The Summary sheet; its charts draw from `frames` (by sheet name), their caches too; its
        cells cut at Excel's limit are counted in `stats`."""
        self.count += 1
        write_summary(self.wb, data, self.number_format, frames, cache=_chart_cache,
                      clean=lambda text: self.clean(text, stats))

    def number_format(self, fmt: ColumnFormat) -> str | None:
        if fmt == "currency":
            return currency_format(self.currency)
        if fmt == "currency_whole":
            return currency_format(self.currency, 0)
        return NUMBER_FORMATS.get(fmt)


def _chart_cache(col: pd.Series, numbers: bool) -> list[str | None]:
    """A chart's cached points, from the rows it draws: numbers as Excel prints them, dates as
    serial numbers, booleans TRUE/FALSE, text as its cell holds it; None where a cell is empty."""
    if pd.api.types.is_datetime64_any_dtype(col):
        arr = pd.to_datetime(col).dt.tz_localize(None) if getattr(col.dt, "tz", None) else col
        serial = ((arr.to_numpy(dtype="datetime64[ns]") - _EPOCH.astype("datetime64[ns]")).astype(np.int64)
                  / 86_400e9)
        return [None if nat else f"{x:.16g}" for x, nat in zip(serial.tolist(), pd.isna(arr).tolist(), strict=True)]
    if numbers or (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return [f"{x:.16g}" if math.isfinite(x) else None for x in num.tolist()]
    out: list[str | None] = []
    for v, na in zip(col.tolist(), pd.isna(col.to_numpy(dtype=object)).tolist(), strict=True):
        if na:
            out.append(None)
        elif isinstance(v, bool | np.bool_):
            out.append("TRUE" if v else "FALSE")
        else:
            out.append(_xstring(clean_text(v if isinstance(v, str) else str(v))))
    return out


# ----------------------------------------------------------------------------- splice rows in


_SAMPLE_ROW = re.compile(rb'<row r="2"[^>]*>(.*?)</row>', re.S)
_CELL_STYLE = re.compile(rb'<c r="[A-Z]+2"(?: s="(\d+)")?')
_DIMENSION = re.compile(rb'<dimension ref="[^"]*"/>')


class _NeedsZip64(Exception):
    """A member written without ZIP64 (its estimate was under the limit) grew past zipfile's limit."""

    def __init__(self, member: str):
        super().__init__(member)
        self.member = member


class _Zipper:
    """Every write into the final zip, in order, on one worker thread. zlib, crc32 and the file
    write release the GIL, so deflating block k overlaps building block k + 1, across sheets too.
    At most one block waits or deflates while the next is built (two blocks in memory).

    A streamed member gets a ZIP64 local header only if `begin` is told it may need one; one
    that grows past ZIP64_LIMIT without it raises _NeedsZip64 before the byte that would not fit."""

    def __init__(self, dst: zipfile.ZipFile):
        self.dst = dst
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="xlsx-deflate")
        self.pending: list[Future] = []
        self.out: Any = None  # the entry being written
        self.name = ""
        self.zip64 = False
        self.size = 0  # bytes written into the entry so far (uncompressed)

    def __enter__(self) -> _Zipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        if self.out is not None:  # failed inside an entry: close it so the archive closes (and is discarded)
            out, self.out = self.out, None
            out.close()

    def _submit(self, fn: Any, *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self) -> None:
        for f in self.pending:
            f.result()
        self.pending.clear()

    def writestr(self, info: zipfile.ZipInfo, data: bytes, **kw: Any) -> None:
        self._submit(lambda: self.dst.writestr(info, data, **kw))  # its size is known: ZIP64 only if needed

    def _write(self, data: bytes) -> None:
        if not self.zip64 and self.size + len(data) > ZIP64_LIMIT:
            raise _NeedsZip64(self.name)
        self.size += len(data)
        self.out.write(data)

    def begin(self, name: str, head: bytes, zip64: bool) -> None:
        def run() -> None:
            # opened by name, so the entry gets the archive's fast level (a bare ZipInfo gets 6)
            self.out = self.dst.open(name, "w", force_zip64=zip64)
            self.name, self.zip64, self.size = name, zip64, 0
            self._write(head)
        self._submit(run)

    def block(self, data: str | bytes) -> None:
        while len(self.pending) >= IN_FLIGHT:  # the oldest done before another block is queued
            self.pending.pop(0).result()
        self._submit(lambda: self._write(data.encode("utf-8") if isinstance(data, str) else data))

    def end(self, tail: bytes) -> None:
        def run() -> None:
            self._write(tail)
            out, self.out = self.out, None
            try:
                out.close()
            except RuntimeError as exc:  # zipfile: "... too large, try using force_zip64"
                if self.zip64:
                    raise
                raise _NeedsZip64(self.name) from exc
        self._submit(run)


def _splice(src: zipfile.ZipFile, zipper: _Zipper, name: str, planned: _Planned, stats: WriteStats,
            sst: SharedStrings | None, zip64: bool, *, shared: bool = True) -> None:
    """The sheet part `name` of the layout with its rows generated from the frame (`shared`: with
    repeated texts in the shared strings; else every text inline, so the part can be written
    again alone, its header the layout's as before). Its ZIP64
    header is chosen from an estimate: the first block's size times the number of blocks (with
    ZIP64_MARGIN), or `zip64` (forced after an estimate proved short)."""
    xml = src.read(name)
    head, rest = xml.split(b"<sheetData>", 1) if b"<sheetData>" in xml else xml.split(b"<sheetData/>", 1)
    data, tail = rest.split(b"</sheetData>", 1) if b"</sheetData>" in rest else (b"", rest)
    top = planned.offset  # rows of the sheet's form above the header
    header_row = re.search(rb'<row r="%d"[^>]*>.*?</row>' % (top + 1), data, re.S)
    sample = re.search(rb'<row r="%d"[^>]*>(.*?)</row>' % (top + 2), data, re.S) if top else _SAMPLE_ROW.search(data)
    cell_style = re.compile(rb'<c r="[A-Z]+%d"(?: s="(\d+)")?' % (top + 2)) if top else _CELL_STYLE
    styles = [m.group(1).decode() if m.group(1) else "0" for m in cell_style.finditer(sample.group(1))] if sample else []
    frame = planned.sheet.frame
    ncols = frame.shape[1]
    styles = (styles + ["0"] * ncols)[:ncols]
    scratch = {(m.group(1).decode(), int(m.group(2))): (m.group(3) or b"0").decode() for m in _ANY_CELL.finditer(data)}
    alt_styles = [{f: scratch.get((xl_col_to_name(j), top + 3 + k), styles[j])
                   for k, f in enumerate(planned.alts.get(j, []))} for j in range(ncols)]
    links = planned.links()
    last_row = max(len(frame), 1) + 1 + top
    width = max(ncols, _form_width(planned.sheet.form))
    dim = f'<dimension ref="A1:{xl_col_to_name(max(width, 1) - 1)}{last_row}"/>'.encode()
    head = _DIMENSION.sub(dim, head) + b"<sheetData>"
    if header_row:
        cells = data[:header_row.start()] + _header_cells(header_row.group(0), [str(c) for c in frame.columns], top + 1)
        head += cells  # a form's rows, then the header
        if sst is not None:
            sst.references += cells.count(b't="s"')
    refs, _ = _hyperlinks(links, first=top + 2)
    tail = b"</sheetData>" + _HYPERLINKS.sub(refs.encode(), tail, count=1)
    blocks = _rows_xml(frame, planned.formats, styles, stats, sst if shared else None, planned.row_formats(),
                       alt_styles, links, _row_heights(planned), first=top + 2)
    text = next(blocks, None)
    first = b'<row r="%d"></row>' % (top + 2) if text is None else text.encode("utf-8")
    del text
    estimate = len(head) + len(tail) + len(first) * max(1, math.ceil(len(frame) / CHUNK_ROWS))
    zipper.begin(name, head, zip64 or estimate * ZIP64_MARGIN > ZIP64_LIMIT)
    zipper.block(first)
    del first  # the zipper holds it until written: no third block in memory
    for block in blocks:
        zipper.block(block)
    zipper.end(tail)


def rewrite_late(old: bytes, old_table: bytes, late: SheetData, table: str) -> tuple[bytes, bytes, WriteStats] | None:
    """The late sheet's part and table (`old`, `old_table`: as `write_workbook` wrote them, see
    WriteStats.late_part) written again for `late`, which has the columns and formats it had then:
    the part's head (columns, views) and header row kept, its rows and ranges new, every text
    inline as then. None when `late` would now be laid out under another table name or the old
    part is not one this writer spliced (then the workbook is written whole)."""
    stats = WriteStats()
    plan = plan_sheets([], summary=False, late=late)
    if plan.tables[-1] != table or b"<sheetData>" not in old or b"</sheetData>" not in old:
        return None
    sheet = finish_late(plan, late)
    headers = [str(c) for c in sheet.frame.columns]
    planned = _Planned(sheet, 0, [sheet.formats.get(h) or infer_format(sheet.frame.iloc[:, j])
                                  for j, h in enumerate(headers)], table)
    head, rest = old.split(b"<sheetData>", 1)
    data, tail = rest.split(b"</sheetData>", 1)
    header_row = re.search(rb'<row r="1"[^>]*>.*?</row>', data, re.S)
    sample = _SAMPLE_ROW.search(data)
    if header_row is None or sample is None or planned.row_formats() != [None] * len(headers) or "url" in planned.formats:
        return None  # no rows to take the styles from (or per-row styles, links: not an About sheet)
    styles = [m.group(1).decode() if m.group(1) else "0" for m in _CELL_STYLE.finditer(sample.group(1))]
    styles = (styles + ["0"] * len(headers))[:len(headers)]
    ref = _full_ref(planned)
    head = _DIMENSION.sub(f'<dimension ref="{ref}"/>'.encode(), head) + b"<sheetData>" + header_row.group(0)
    rows = "".join(_rows_xml(sheet.frame, planned.formats, styles, stats, None, heights=_row_heights(planned)))
    part = head + rows.encode("utf-8") + b"</sheetData>" + tail
    stats.sheets, stats.rows = [sheet.name], {sheet.name: len(sheet.frame)}
    return part, _finish_table(old_table, {table: (ref, headers)}), stats


def _form_width(form: SheetForm | None) -> int:
    """Columns a form's cells and tables span (0 without a form)."""
    if form is None:
        return 0
    return max([c.col + 1 for c in form.cells] + [t.first_col + len(t.headers) for t in form.tables] + [0])


def _row_heights(planned: _Planned) -> np.ndarray | None:
    """Points per row where a `wrap` column's text needs more than one line (at most 4), else 0."""
    sheet = planned.sheet
    wrap = [c for c in sheet.frame.columns if str(c) in sheet.wrap]
    if not wrap or sheet.frame.empty:
        return None
    lines = np.ones(len(sheet.frame), dtype=np.int64)
    for c in wrap:
        width = sheet.widths.get(str(c)) or 60.0
        chars = sheet.frame[c].astype(object).str.len().fillna(0).to_numpy(dtype=np.int64)
        lines = np.maximum(lines, -(-chars // max(int(width * 1.2), 1)))
    return np.where(lines > 1, 15.0 * np.minimum(lines, 4), 0.0)


_ANY_CELL = re.compile(rb'<c r="([A-Z]+)(\d+)"(?: s="(\d+)")?')
_HYPERLINKS = re.compile(rb"<hyperlinks>.*?</hyperlinks>", re.S)
_SAMPLE_REL = re.compile(rb'<Relationship [^>]*Target="' + re.escape(_SAMPLE_URL.encode()) + rb'"[^>]*/>')


def _hyperlinks(links: list[np.ndarray | None], frame: pd.DataFrame | None = None, first: int = 2) -> tuple[str, str]:
    """(`<hyperlinks>` of the sheet, its relationships) for the rows `link_plan` made hyperlinks
    (data rows from sheet row `first`); ("", "") without any. With `frame`, the relationships
    carry the URLs."""
    refs: list[str] = []
    rels: list[str] = []
    k = 0
    for j, plan in enumerate(links):
        if plan is None:
            continue
        rows = np.flatnonzero(plan == 1)
        letter = xl_col_to_name(j)
        urls = frame.iloc[rows, j].tolist() if frame is not None else [None] * len(rows)
        for r, url in zip(rows.tolist(), urls, strict=True):
            k += 1
            refs.append(f'<hyperlink ref="{letter}{r + first}" r:id="rIdL{k}"/>')
            if url is not None:
                target = url.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
                rels.append(f'<Relationship Id="rIdL{k}" Type="{HYPERLINK_REL}" Target="{target}" TargetMode="External"/>')
    if not refs:
        return "", ""
    return "<hyperlinks>" + "".join(refs) + "</hyperlinks>", "".join(rels)


def _sheet_rels(xml: bytes, planned: _Planned) -> bytes:
    """The sheet's relationships with the layout's sample hyperlink replaced by the real ones."""
    _, rels = _hyperlinks(planned.links(), planned.sheet.frame, planned.offset + 2)
    xml = _SAMPLE_REL.sub(b"", xml)
    return xml.replace(b"</Relationships>", rels.encode() + b"</Relationships>")


_OVERLAPPING = re.compile(r"_x[0-9A-Fa-f]{4}_x[0-9A-Fa-f]{4}_")  # one escape's last `_` starts the next


_XLSXWRITER_ESCAPE = re.compile(r"(_x[0-9a-fA-F]{4}_)")  # how xlsxwriter escapes a literal _xHHHH_ (no overlaps)
_XLSXWRITER_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")  # ... and then these characters, as _xHHHH_


def _xlsxwriter_controls(t: str) -> str:
    t = _XLSXWRITER_CONTROL.sub(lambda m: f"_x{ord(m.group(0)):04X}_", t)
    return t.replace("\ufffe", "_xFFFE_").replace("\uffff", "_xFFFF_")


def _fix_overlapping(sst: bytes, texts: list[str]) -> bytes:
    """The layout's shared strings with the texts xlsxwriter wrote (Summary, forms) that hold
    overlapping `_xHHHH_` runs escaped in full (names.xstring) where xlsxwriter escaped only the
    first of each run; control characters stay escaped as xlsxwriter escaped them."""
    def xml(t: str) -> bytes:
        return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").encode("utf-8")

    for text in dict.fromkeys(texts):
        wrong = xml(_xlsxwriter_controls(_XLSXWRITER_ESCAPE.sub(r"_x005F\1", text)))
        right = xml(_xlsxwriter_controls(xstring(text)))
        sst = sst.replace(b">" + wrong + b"</t>", b">" + right + b"</t>")
    return sst


def _header_cells(row: bytes, headers: list[str], number: int = 1) -> bytes:
    """The layout's header row, with the cells of headers holding overlapping `_xHHHH_` runs
    rewritten as inline strings escaped in full (names.xstring): xlsxwriter escapes only the
    first of them, so Excel would decode the second and the cell would not match its table column.
    `number`: the header's sheet row (1-based)."""
    for j, h in enumerate(headers):
        if "_x" in h and _OVERLAPPING.search(h):
            text = xstring(h).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            space = ' xml:space="preserve"' if h[0].isspace() or h[-1].isspace() else ""
            ref = f'<c r="{xl_col_to_name(j)}{number}"'
            row = re.sub(re.escape(ref).encode() + rb'([^>]*?) t="s"><v>\d+</v></c>',
                         lambda m, ref=ref, text=text, space=space: (
                             f'{ref}{m.group(1).decode()} t="inlineStr"><is><t{space}>{text}</t></is></c>').encode(),
                         row, count=1)
    return row


def _full_ref(planned: _Planned) -> str:
    ncols = max(planned.sheet.frame.shape[1], 1)
    top = planned.offset
    return f"A{top + 1}:{xl_col_to_name(ncols - 1)}{max(len(planned.sheet.frame), 1) + 1 + top}"


_TABLE_NAME = re.compile(rb'<table [^>]*?name="([^"]+)"')
_REF = re.compile(rb'(<table [^>]*?ref=|<autoFilter ref=)"[^"]*"')
_TABLE_COLUMN = re.compile(rb'(<tableColumn id="\d+" name=")[^"]*"')


def _finish_table(xml: bytes, tables: dict[str, tuple[str, list[str]]]) -> bytes:
    """A data table's range (and its filter's) set to cover every written row, and its column
    names written as Excel decodes them back to the header cells (names.column_attribute)."""
    m = _TABLE_NAME.search(xml)
    entry = tables.get(m.group(1).decode()) if m else None
    if entry is None:
        return xml
    ref, headers = entry
    xml = _REF.sub(lambda mm: mm.group(1) + b'"' + ref.encode() + b'"', xml)
    names = iter(headers)
    return _TABLE_COLUMN.sub(lambda mm: mm.group(1) + column_attribute(next(names)).encode() + b'"', xml)


def write_workbook(
    path: str | Path,
    *,
    sheets: list[SheetData],
    summary: SummaryData | None = None,
    currency: str = "USD",
    last: Callable[[WriteStats], SheetData] | None = None,
) -> WriteStats:
    """Write the workbook atomically to `path` (temp file in the same folder, then rename).

    Sheet order: Summary first (when given), then `sheets` in `config.workbook.SHEET_ORDER`, then
    `last`: a sheet built once every other sheet is written, from their WriteStats (so an About
    sheet can report the cells cut while writing and the fixes). It is laid out from `last(WriteStats())` and written
    from `last(stats)`, which must have the same columns and formats (rows may differ).

    Sheet names, headers and table names are made safe for Excel first, and sheets too wide or
    too long are continued on more sheets (plan.py); `stats.fixes` says what that changed.
    """
    zip64: set[str] = set()
    while True:
        try:
            return _write(Path(path), sheets, summary, currency, last, zip64)
        except _NeedsZip64 as exc:  # rare (a sheet near 2 GiB): written again, that member with ZIP64
            zip64.add(exc.member)


def _write(target: Path, sheets: list[SheetData], summary: SummaryData | None, currency: str,
           last: Callable[[WriteStats], SheetData] | None, zip64: set[str]) -> WriteStats:
    target.parent.mkdir(parents=True, exist_ok=True)
    stats = WriteStats()
    plan: Plan = plan_sheets(order_sheets(sheets), summary=summary is not None,
                             late=last(WriteStats()) if last else None)
    stats.notes += [*plan.notes, *plan.fixes]
    stats.fixes = list(plan.fixes)
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
            layout.summary(map_charts(plan, summary), {s.name: s.frame for s in plan.sheets}, stats)
        planned = [layout.data_sheet(s, t, stats) for s, t in zip(plan.sheets, plan.tables, strict=True)]
        wb.close()
        spliced = [p for p in planned if p.spliced]  # a form alone is written whole by xlsxwriter
        by_part = {f"xl/worksheets/sheet{p.index}.xml": p for p in spliced}
        by_rels = {f"xl/worksheets/_rels/sheet{p.index}.xml.rels": p for p in spliced if "url" in p.formats}
        tables = {p.table: (_full_ref(p), [str(c) for c in p.sheet.frame.columns]) for p in spliced}
        late = planned[-1] if last is not None else None
        final_tmp = work / "final.xlsx"
        with zipfile.ZipFile(layout_path) as src, \
                zipfile.ZipFile(final_tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst, _Zipper(dst) as zipper:
            names = set(src.namelist())
            sst = SharedStrings(_fix_overlapping(src.read(SST_PART), layout.overlapping)) if SST_PART in names else None
            for item in src.infolist():
                if item.filename in by_part:
                    if by_part[item.filename] is late:  # every other sheet is written (xlsxwriter's order)
                        late.sheet = finish_late(plan, last(stats))
                        tables[late.table] = (_full_ref(late), tables[late.table][1])  # tables come after sheets
                    # the late sheet shares no strings: it can be written again alone (connectors.workbook.reuse)
                    _splice(src, zipper, item.filename, by_part[item.filename], stats, sst, item.filename in zip64,
                            shared=by_part[item.filename] is not late)
                elif item.filename in by_rels:
                    zipper.writestr(item, _sheet_rels(src.read(item.filename), by_rels[item.filename]))
                elif item.filename.startswith("xl/tables/"):
                    zipper.writestr(item, _finish_table(src.read(item.filename), tables))
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
        if late is not None and late.spliced:
            stats.late_part, stats.late_table = f"xl/worksheets/sheet{late.index}.xml", late.table
        return stats
    finally:
        shutil.rmtree(work, ignore_errors=True)
