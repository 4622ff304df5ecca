"""CSV and Excel sources: read a file as text, map its headers to canonical fields."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from config.models import CsvSourceConfig, ExcelSourceConfig, ReadLimits, StageHistoryFileConfig
from config.schema import FIELD_NAMES, HISTORY_FIELDS, TEXT_FIELDS
from connectors.errors import SourceDataError
from connectors.extracted import ExtractContext, Extracted
from connectors.sources import xlsx_guard

ROW_COLUMN = "_row"
ERROR_COLUMN = "_error"
DEFAULT_LIMITS = ReadLimits()
RAW_TEXT_SHOWN = 200  # characters of a broken record's raw text in its reason
EXCEL_DIGITS = 15  # Excel keeps numbers to 15 significant digits


def _normalise_header(h: str) -> str:
    return str(h).replace("\ufeff", "").strip()


def map_columns(frame: pd.DataFrame, columns: Mapping[str, str], fields: tuple[str, ...], what: str) -> pd.DataFrame:
    """Rename source headers to canonical fields.

    `columns` maps a source header to a field; a header that already is a field name (any case,
    spaces as underscores) maps to itself. Duplicate headers that map to a field are an error.
    """
    meta = [c for c in (ROW_COLUMN, ERROR_COLUMN) if c in frame.columns]
    positions = [i for i, c in enumerate(frame.columns) if c not in meta]
    headers = [_normalise_header(frame.columns[i]) for i in positions]
    frame_meta = frame[meta]
    frame = frame.iloc[:, positions].set_axis(headers, axis=1)
    explicit = {_normalise_header(k).lower(): v for k, v in columns.items()}
    unknown_targets = sorted({v for v in explicit.values() if v not in fields})
    if unknown_targets:
        raise SourceDataError(
            f"{what}: columns maps to unknown field(s) {', '.join(unknown_targets)}; fields are: {', '.join(fields)}"
        )
    rename: dict[int, str] = {}
    for i, h in enumerate(headers):
        key = h.lower()
        target = explicit.get(key) or (key.replace(" ", "_") if key.replace(" ", "_") in fields else None)
        if target:
            rename[i] = target
    targets = list(rename.values())
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        sources = {t: [headers[i] for i, v in rename.items() if v == t] for t in dupes}
        detail = "; ".join(f"{t} <- {', '.join(repr(s) for s in srcs)}" for t, srcs in sources.items())
        raise SourceDataError(f"{what}: more than one column maps to the same field ({detail}); keep one")
    out = pd.DataFrame({target: frame.iloc[:, i] for i, target in rename.items()}, index=frame.index)
    for c in meta:
        out[c] = frame_meta[c]
    return out


def _require(frame: pd.DataFrame, required: tuple[str, ...], headers: list[str], what: str) -> None:
    missing = [f for f in required if f not in frame.columns]
    if missing:
        raise SourceDataError(
            f"{what}: no column for {', '.join(missing)} (headers found: {', '.join(headers) or 'none'}); "
            "map them under `columns:` (source header: field)"
        )


def read_csv_text(path: str, *, encoding: str, delimiter: str, what: str, data: bytes | None = None,
                  limits: ReadLimits = DEFAULT_LIMITS) -> pd.DataFrame:
    """Every cell as text, BOM stripped, any line endings, quoted newlines kept.

    Columns keep the header's names as written (duplicates included). A row with more
    non-empty fields than the header gets an `_error` instead of shifting data; short rows
    are padded with blanks. `_row` is the CSV record number (header = 1). `data`: the file's
    bytes when the caller already read them.

    Every physical line is accounted for: a record that does not parse (a stray quote opening a
    field that swallows the lines after it) is kept as one row with an `_error` naming its line
    and raw text, and reading goes on from the next line.
    """
    p = Path(path)
    data = read_bytes(path, what, limits=limits) if data is None else data
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceDataError(
            f"{what}: {p.name} is not valid {encoding} ({exc.__class__.__name__} at byte "
            f"{getattr(exc, 'start', '?')}); set `encoding:` (e.g. utf-8-sig or cp1252)"
        ) from exc
    text = text.lstrip("\ufeff")
    body = _utf8_body(data, text, encoding)
    if body is data:  # the file already is this text in UTF-8: parse its bytes, decode again only if refused
        text = ""
    fast = _read_rectangular(body, delimiter)
    del body
    if fast is not None:
        return fast
    text = text or data.decode(encoding).lstrip("\ufeff")
    lines = list(io.StringIO(text, newline=""))
    records = list(_records(lines, delimiter, what, p.name))
    first = next((i for i, (r, _, _) in enumerate(records) if r and "".join(r).strip()), None)
    if first is None:
        return pd.DataFrame()
    header_fields, _, header_err = records[first]
    if header_err:
        raise SourceDataError(f"{what}: {p.name}: the header {header_err}")
    header = [_normalise_header(h) for h in header_fields]
    width = len(header)
    body, row_numbers, errors = [], [], []
    for offset, (r, _, broken) in enumerate(records[first + 1:]):
        if not broken and (not r or not "".join(r).strip()):
            continue
        err = broken
        if len(r) > width:
            if not err and any(cell.strip() for cell in r[width:]):
                err = f"row has {len(r)} fields but the header has {width}"
            r = r[:width]
        elif len(r) < width:
            r = r + [""] * (width - len(r))
        body.append(r)
        row_numbers.append(first + 2 + offset)
        errors.append(err)
    frame = pd.DataFrame(body, columns=range(width), dtype=object) if body else pd.DataFrame(columns=range(width))
    frame.columns = header
    frame[ROW_COLUMN] = row_numbers
    frame[ERROR_COLUMN] = errors
    return frame


class _Lines:
    """The file's physical lines for csv.reader, remembering how many it has handed out."""

    def __init__(self, lines: list[str], start: int):
        self.lines, self.pos = lines, start

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _records(lines: list[str], delimiter: str, what: str, name: str) -> Iterator[tuple[list[str], int, str]]:
    """(fields, first line number, '' or why it is broken) per CSV record, every physical line in one.

    A record that spans lines is accepted when it parses strictly and none of its inner lines
    is a whole row of its own (`swallows_rows`); otherwise its first line is a broken record (fields split without quoting, for the Rejected sheet) and parsing restarts on
    the line after it.
    """
    width: int | None = None
    start = 0
    consumed = 0
    while start < len(lines):
        feed = _Lines(lines, start)
        reader = csv.reader(feed, delimiter=delimiter, strict=True)
        while True:
            first = feed.pos
            try:
                fields = next(reader)
            except StopIteration:
                start = len(lines)
                break
            except csv.Error as exc:
                consumed += 1
                yield _broken(lines[first], first, delimiter, f"does not parse as CSV ({exc})")
                start = first + 1
                break
            spans = feed.pos - first
            if spans > 1 and width is not None and swallows_rows(fields, width, delimiter):
                consumed += 1
                yield _broken(lines[first], first, delimiter, "opens a quoted field that is not closed on its line "
                              f"(it would swallow the next {spans - 1} line(s))")
                start = first + 1
                break
            consumed += spans
            if width is None and fields and "".join(fields).strip():
                width = len(fields)
            yield fields, first + 1, ""
    if consumed != len(lines):  # cannot happen by construction; never lose a line silently
        raise SourceDataError(f"{what}: {name}: read {consumed:,} of {len(lines):,} lines; the file is not a CSV table")


def swallows_rows(fields: list[str], width: int, delimiter: str) -> bool:
    """True when a record spanning lines holds whole rows: a line inside one of its cells splits into
    exactly the header's width (3 columns or more). That is a stray quote that opened a field and
    took the next lines with it; a real multi-line cell (a note, an address) does not look so."""
    if width < 3:
        return False
    for cell in fields:
        if "\n" in cell or "\r" in cell:
            inner = cell.replace("\r\n", "\n").replace("\r", "\n").split("\n")[1:]
            if any(line.count(delimiter) >= width - 1 and len(next(csv.reader([line], delimiter=delimiter), []))
                   == width for line in inner):
                return True
    return False


def _broken(line: str, index: int, delimiter: str, why: str) -> tuple[list[str], int, str]:
    raw = line.rstrip("\r\n")
    fields = next(csv.reader([raw], delimiter=delimiter, quoting=csv.QUOTE_NONE), [])
    shown = raw if len(raw) <= RAW_TEXT_SHOWN else raw[:RAW_TEXT_SHOWN] + "..."
    return fields, index + 1, f"line {index + 1} {why}; its raw text: {shown!r}"


def _physical_lines(text: str | bytes) -> int:
    nl, cr = ("\n", "\r") if isinstance(text, str) else (b"\n", b"\r")
    n = text.count(nl) + text.count(cr) - text.count(cr + nl)
    return n + (1 if text and not text.endswith((nl, cr)) else 0)


def _utf8_body(data: bytes, text: str, encoding: str) -> bytes:
    """`text` (the file decoded, leading BOMs stripped) as UTF-8: the file's own bytes when they
    already are exactly that (UTF-8 without a BOM), so a large file is not copied again."""
    if codecs.lookup(encoding).name == "utf-8" and not data.startswith(codecs.BOM_UTF8):
        return data
    return text.encode("utf-8", "surrogatepass")


def _blank_rows(grid: pd.DataFrame) -> np.ndarray:
    """Rows whose every cell is empty or whitespace, a column at a time over the rows still in doubt
    (usually the first column settles almost every row)."""
    blank = np.ones(len(grid), dtype=bool)
    for j in range(grid.shape[1]):
        doubt = np.flatnonzero(blank)
        if not len(doubt):
            break
        blank[doubt] = (grid.iloc[doubt, j].astype(str).str.strip() == "").to_numpy(dtype=bool)
    return blank


def _read_rectangular(body: bytes, delimiter: str) -> pd.DataFrame | None:
    """pandas' C parser for the usual file (no row wider than the header); None -> use the csv path.

    `body` is the text in UTF-8 (bytes: the parser reads them as they are, where a str would be
    copied at 4 bytes a character). Blank lines are kept while parsing so `_row` counts CSV
    records exactly as the csv module does.
    """
    try:
        grid = pd.read_csv(io.BytesIO(body), sep=delimiter, header=None, dtype=object, encoding="utf-8",
                           keep_default_na=False, na_filter=False, skip_blank_lines=False, engine="c",
                           quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return None
    if len(grid) != _physical_lines(body):  # a record spans lines (quoted newlines, or a stray quote)
        return None
    grid = grid.fillna("")
    blank = _blank_rows(grid)
    if blank.all():
        return pd.DataFrame()
    first = int(np.argmax(~blank))
    header = [_normalise_header(h) for h in grid.iloc[first].tolist()]
    body_mask = ~blank
    body_mask[: first + 1] = False
    rows = np.flatnonzero(body_mask)
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # one run of rows (the usual file): a slice, no copy
        frame = grid.iloc[rows[0]:rows[-1] + 1, : len(header)].reset_index(drop=True)
    else:
        frame = grid.iloc[rows, : len(header)].reset_index(drop=True)
    frame.columns = header
    frame[ROW_COLUMN] = rows + 1
    frame[ERROR_COLUMN] = ""
    return frame


def read_bytes(path: str, what: str, *, missing: str | None = None, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """The file's bytes, or SourceDataError (`missing`: the wording for a file that does not exist).

    Only a regular file is read (a FIFO, /dev/zero or a folder is refused without blocking), and
    only up to `limits.max_file_mb`."""
    cap = int(limits.max_file_mb * (1 << 20))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise SourceDataError(f"{what}: cannot read {path}: {missing or exc.strerror}") from exc
    except OSError as exc:
        raise SourceDataError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise SourceDataError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        raise SourceDataError(f"{what}: {path} is not a regular file ({kind}); a source must be a file")
    with os.fdopen(fd, "rb") as fh:
        try:
            if st.st_size > cap:
                raise SourceDataError(_too_big(what, path, st.st_size, limits))
            data = fh.read(st.st_size + 1)  # one byte more tells whether it grew meanwhile
            while len(data) > st.st_size and len(data) <= cap and (more := fh.read(1 << 20)):
                data += more
        except OSError as exc:
            raise SourceDataError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if len(data) > cap:  # it grew while being read
        raise SourceDataError(_too_big(what, path, len(data), limits))
    return data


def _too_big(what: str, path: str, size: int, limits: ReadLimits) -> str:
    return (f"{what}: {path} is {size / (1 << 20):,.1f} MB, over limits.max_file_mb ({limits.max_file_mb:g}); "
            "raise `limits: {max_file_mb: ...}` on the source if the file is really that big")


def read_excel_text(path: str, *, sheet: str | int | None, what: str, data: bytes | None = None,
                    limits: ReadLimits = DEFAULT_LIMITS) -> pd.DataFrame:
    """Read one sheet with python-calamine; values keep their types (dates stay dates).
    `data`: the file's bytes when the caller already read them.

    The archive is checked first (connectors.sources.xlsx_guard, against `limits`); a formula
    cell with no saved value gets its row an `_error`, and text calamine decodes differently from
    the file (an escaped `_x005F_`) is corrected."""
    data = read_bytes(path, what, missing="file not found", limits=limits) if data is None else data
    found = xlsx_guard.inspect(data, name=Path(path).name, sheet=sheet, limits=limits, what=what)
    try:
        frame = pd.read_excel(io.BytesIO(data), sheet_name=sheet if sheet is not None else 0, dtype=object,
                              engine="calamine", header=None)
    except ValueError as exc:
        raise SourceDataError(f"{what}: cannot read sheet {sheet!r} of {Path(path).name}: {exc}") from exc
    except Exception as exc:  # calamine raises its own error types for corrupt files
        raise SourceDataError(f"{what}: {Path(path).name} is not a readable Excel workbook: {exc}") from exc
    frame = frame.astype(object).where(frame.notna(), "")
    for (row, col), text in found.texts.items():
        if row <= frame.shape[0] and col <= frame.shape[1]:
            frame.iat[row - 1, col - 1] = text
    if frame.empty:
        return pd.DataFrame()
    header = [_normalise_header(h) for h in frame.iloc[0]]
    body = frame.iloc[1:].reset_index(drop=True)
    body.columns = header
    body[ROW_COLUMN] = range(2, len(body) + 2)
    body[ERROR_COLUMN] = [
        "; ".join(f"cell {ref} holds a formula with no saved value (open and save the file in Excel, or paste the "
                  "values)" for ref in found.formula_cells[r]) if r in found.formula_cells else ""
        for r in body[ROW_COLUMN]]
    # like blank CSV lines, an empty sheet row is not a record (it would only be rejected)
    blank = body.iloc[:, : len(header)].map(lambda v: str(v).strip() == "").all(axis=1) & (body[ERROR_COLUMN] == "")
    return body[~blank].reset_index(drop=True)


def _excel_number_problems(mapped: pd.DataFrame) -> pd.Series:
    """Text fields (ids, names) that Excel stored as numbers too long to keep exactly."""
    out = pd.Series("", index=mapped.index, dtype=object)
    for f in (f for f in TEXT_FIELDS if f in mapped):
        col = mapped[f]
        big = col.map(lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                      and abs(v) >= 10 ** EXCEL_DIGITS).astype(bool)
        if big.any():
            msg = (f"{f} " + col[big].map(lambda v: f"{v:.15g}") + f" is a number of more than {EXCEL_DIGITS} digits, "
                   "which Excel does not keep exactly (the last digits are lost); store the column as text")
            out[big] = np.where(out[big] == "", msg, out[big] + "; " + msg)
    return out


def _with_rows(mapped: pd.DataFrame) -> pd.DataFrame:
    if ROW_COLUMN not in mapped:
        mapped[ROW_COLUMN] = range(2, len(mapped) + 2)
    return mapped


def _read_history(cfg: StageHistoryFileConfig | None, what: str) -> pd.DataFrame | None:
    if cfg is None:
        return None
    label = f"{what} stage_history"
    if cfg.path.lower().endswith((".xlsx", ".xlsm", ".xls")):
        frame = read_excel_text(cfg.path, sheet=cfg.sheet, what=label, limits=cfg.limits)
    else:
        frame = read_csv_text(cfg.path, encoding=cfg.encoding, delimiter=cfg.delimiter, what=label, limits=cfg.limits)
    headers = [_normalise_header(h) for h in frame.columns if h not in (ROW_COLUMN, ERROR_COLUMN)]
    mapped = map_columns(frame, cfg.columns, HISTORY_FIELDS, label)
    _require(mapped, HISTORY_FIELDS, headers, label)
    return mapped


def _extract(cfg: CsvSourceConfig | ExcelSourceConfig, frame: pd.DataFrame, started: float) -> Extracted:
    what = f"source '{cfg.name}'"
    headers = [_normalise_header(h) for h in frame.columns if h not in (ROW_COLUMN, ERROR_COLUMN)]
    if frame.empty and not headers:
        records = pd.DataFrame({ROW_COLUMN: pd.Series(dtype=int)})
        return Extracted(cfg.name, records, None, frame if cfg.raw_sheet else None,
                         seconds=time.perf_counter() - started, notes=[f"{what}: the file is empty"])
    mapped = map_columns(frame, cfg.columns, FIELD_NAMES, what)
    _require(mapped, ("opportunity_id", "stage", "created_date"), headers, what)
    if cfg.type == "excel":
        problems = _excel_number_problems(mapped)
        if (problems != "").any():
            before = mapped[ERROR_COLUMN] if ERROR_COLUMN in mapped else pd.Series("", index=mapped.index)
            mapped[ERROR_COLUMN] = np.where(before == "", problems, np.where(problems == "", before,
                                                                             before + "; " + problems))
    history = _read_history(cfg.stage_history, what)
    raw = None
    if cfg.raw_sheet:
        raw = frame.iloc[:, [i for i, c in enumerate(frame.columns) if c not in (ROW_COLUMN, ERROR_COLUMN)]]
        raw = raw.set_axis(unique_headers([str(c) for c in raw.columns]), axis=1)
    return Extracted(cfg.name, _with_rows(mapped), history, raw, seconds=time.perf_counter() - started)


def unique_headers(headers: list[str]) -> list[str]:
    """Headers as given, a repeated one (Excel compares them ignoring case) numbered: Note, Note (2)."""
    seen: set[str] = set()
    out = []
    for h in headers:
        name, n = h, 1
        while name.lower() in seen:
            n += 1
            name = f"{h} ({n})"
        seen.add(name.lower())
        out.append(name)
    return out


def extract_csv(cfg: CsvSourceConfig, ctx: ExtractContext | None = None) -> Extracted:
    """The file's rows; `reused` (no rows) when its bytes are those the flow validated last run."""
    started = time.perf_counter()
    what = f"source '{cfg.name}'"
    data = read_bytes(cfg.path, what, limits=cfg.limits)
    version = content_version(cfg, data)
    if ctx is not None and ctx.cached_version == version:
        return _unchanged(cfg, version, started)
    frame = read_csv_text(cfg.path, encoding=cfg.encoding, delimiter=cfg.delimiter, what=what, data=data,
                          limits=cfg.limits)
    return _versioned(_extract(cfg, frame, started), cfg, data, version)


def extract_excel(cfg: ExcelSourceConfig, ctx: ExtractContext | None = None) -> Extracted:
    """The sheet's rows; `reused` (no rows) when the file's bytes are those the flow validated last run."""
    started = time.perf_counter()
    what = f"source '{cfg.name}'"
    data = read_bytes(cfg.path, what, missing="file not found", limits=cfg.limits)
    version = content_version(cfg, data)
    if ctx is not None and ctx.cached_version == version:
        return _unchanged(cfg, version, started)
    frame = read_excel_text(cfg.path, sheet=cfg.sheet, what=what, data=data, limits=cfg.limits)
    return _versioned(_extract(cfg, frame, started), cfg, data, version)


def content_version(cfg: CsvSourceConfig | ExcelSourceConfig, data: bytes) -> str | None:
    """sha256 of the file's bytes (and of its stage-history file): the version of its rows.
    None when the history file cannot be read (the extraction then reports it)."""
    h = hashlib.sha256(data)
    if cfg.stage_history is not None:
        try:
            h.update(b"\x00history\x00" + read_bytes(cfg.stage_history.path, "stage_history",
                                                        limits=cfg.stage_history.limits))
        except SourceDataError:
            return None
    return h.hexdigest()


def _unchanged(cfg: CsvSourceConfig | ExcelSourceConfig, version: str, started: float) -> Extracted:
    return Extracted(cfg.name, pd.DataFrame(), seconds=time.perf_counter() - started, version=version, reused=True,
                     notes=[f"source '{cfg.name}': the file is unchanged since the last run"])


def _versioned(extracted: Extracted, cfg: CsvSourceConfig | ExcelSourceConfig, data: bytes,
               version: str | None) -> Extracted:
    """The rows named by `version`, unless the history file changed while they were read (then unversioned)."""
    extracted.version = version if version is not None and content_version(cfg, data) == version else None
    return extracted
