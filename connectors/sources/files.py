"""CSV and Excel sources: read a file as text, map its headers to canonical fields."""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from config.models import CsvSourceConfig, ExcelSourceConfig, StageHistoryFileConfig
from config.schema import FIELD_NAMES, HISTORY_FIELDS
from connectors.errors import SourceDataError
from connectors.extracted import ExtractContext, Extracted

ROW_COLUMN = "_row"
ERROR_COLUMN = "_error"


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


def read_csv_text(path: str, *, encoding: str, delimiter: str, what: str, data: bytes | None = None) -> pd.DataFrame:
    """Every cell as text, BOM stripped, any line endings, quoted newlines kept.

    Columns keep the header's names as written (duplicates included). A row with more
    non-empty fields than the header gets an `_error` instead of shifting data; short rows
    are padded with blanks. `_row` is the CSV record number (header = 1). `data`: the file's
    bytes when the caller already read them.
    """
    p = Path(path)
    data = read_bytes(path, what) if data is None else data
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceDataError(
            f"{what}: {p.name} is not valid {encoding} ({exc.__class__.__name__} at byte "
            f"{getattr(exc, 'start', '?')}); set `encoding:` (e.g. utf-8-sig or cp1252)"
        ) from exc
    text = text.lstrip("\ufeff")
    fast = _read_rectangular(text, delimiter)
    if fast is not None:
        return fast
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False))
    except csv.Error as exc:
        raise SourceDataError(f"{what}: {p.name} is not a readable CSV table: {exc}") from exc
    first = next((i for i, r in enumerate(rows) if r and "".join(r).strip()), None)
    if first is None:
        return pd.DataFrame()
    header = [_normalise_header(h) for h in rows[first]]
    width = len(header)
    rest = rows[first + 1 :]
    if all(len(r) == width for r in rest):  # the usual rectangular file: no per-row work
        keep = [i for i, r in enumerate(rest) if "".join(r).strip()] if any(not "".join(r).strip() for r in rest) else None
        body = rest if keep is None else [rest[i] for i in keep]
        row_numbers = [first + 2 + i for i in (range(len(rest)) if keep is None else keep)]
        errors = [""] * len(body)
    else:
        body, row_numbers, errors = [], [], []
        for offset, r in enumerate(rest):
            if not r or not "".join(r).strip():
                continue
            err = ""
            if len(r) > width:
                if any(cell.strip() for cell in r[width:]):
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


def _read_rectangular(text: str, delimiter: str) -> pd.DataFrame | None:
    """pandas' C parser for the usual file (no row wider than the header); None -> use the csv path.

    Blank lines are kept while parsing so `_row` counts CSV records exactly as the csv module does.
    """
    try:
        grid = pd.read_csv(io.StringIO(text, newline=""), sep=delimiter, header=None, dtype=object,
                           keep_default_na=False, na_filter=False, skip_blank_lines=False, engine="c",
                           quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return None
    grid = grid.fillna("")
    cells = grid.astype(str)
    blank = (cells.apply(lambda col: col.str.strip()) == "").all(axis=1).to_numpy()
    if blank.all():
        return pd.DataFrame()
    first = int(np.argmax(~blank))
    header = [_normalise_header(h) for h in grid.iloc[first].tolist()]
    body_mask = ~blank
    body_mask[: first + 1] = False
    frame = grid.iloc[np.flatnonzero(body_mask), : len(header)].reset_index(drop=True)
    frame.columns = header
    frame[ROW_COLUMN] = (np.flatnonzero(body_mask) + 1).tolist()
    frame[ERROR_COLUMN] = ""
    return frame


def read_bytes(path: str, what: str, *, missing: str | None = None) -> bytes:
    """The file's bytes, or SourceDataError (`missing`: the wording for a file that does not exist)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise SourceDataError(f"{what}: cannot read {path}: {missing or exc.strerror}") from exc
    except OSError as exc:
        raise SourceDataError(f"{what}: cannot read {path}: {exc.strerror}") from exc


def read_excel_text(path: str, *, sheet: str | int | None, what: str, data: bytes | None = None) -> pd.DataFrame:
    """Read one sheet with python-calamine; values keep their types (dates stay dates).
    `data`: the file's bytes when the caller already read them."""
    try:
        frame = pd.read_excel(io.BytesIO(data) if data is not None else path,
                              sheet_name=sheet if sheet is not None else 0, dtype=object,
                              engine="calamine", header=None)
    except FileNotFoundError as exc:
        raise SourceDataError(f"{what}: cannot read {path}: file not found") from exc
    except ValueError as exc:
        raise SourceDataError(f"{what}: cannot read sheet {sheet!r} of {Path(path).name}: {exc}") from exc
    except Exception as exc:  # calamine raises its own error types for corrupt files
        raise SourceDataError(f"{what}: {Path(path).name} is not a readable Excel workbook: {exc}") from exc
    frame = frame.astype(object).where(frame.notna(), "")
    if frame.empty:
        return pd.DataFrame()
    header = [_normalise_header(h) for h in frame.iloc[0]]
    body = frame.iloc[1:].reset_index(drop=True)
    body.columns = header
    body[ROW_COLUMN] = range(2, len(body) + 2)
    # like blank CSV lines, an empty sheet row is not a record (it would only be rejected)
    blank = body.iloc[:, : len(header)].map(lambda v: str(v).strip() == "").all(axis=1)
    return body[~blank].reset_index(drop=True)


def _with_rows(mapped: pd.DataFrame) -> pd.DataFrame:
    if ROW_COLUMN not in mapped:
        mapped[ROW_COLUMN] = range(2, len(mapped) + 2)
    return mapped


def _read_history(cfg: StageHistoryFileConfig | None, what: str) -> pd.DataFrame | None:
    if cfg is None:
        return None
    label = f"{what} stage_history"
    if cfg.path.lower().endswith((".xlsx", ".xlsm", ".xls")):
        frame = read_excel_text(cfg.path, sheet=cfg.sheet, what=label)
    else:
        frame = read_csv_text(cfg.path, encoding=cfg.encoding, delimiter=cfg.delimiter, what=label)
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
    history = _read_history(cfg.stage_history, what)
    raw = frame.iloc[:, [i for i, c in enumerate(frame.columns) if c not in (ROW_COLUMN, ERROR_COLUMN)]] if cfg.raw_sheet else None
    return Extracted(cfg.name, _with_rows(mapped), history, raw, seconds=time.perf_counter() - started)


def extract_csv(cfg: CsvSourceConfig, ctx: ExtractContext | None = None) -> Extracted:
    """The file's rows; `reused` (no rows) when its bytes are those the flow validated last run."""
    started = time.perf_counter()
    what = f"source '{cfg.name}'"
    data = read_bytes(cfg.path, what)
    version = content_version(cfg, data)
    if ctx is not None and ctx.cached_version == version:
        return _unchanged(cfg, version, started)
    frame = read_csv_text(cfg.path, encoding=cfg.encoding, delimiter=cfg.delimiter, what=what, data=data)
    return _versioned(_extract(cfg, frame, started), cfg, data, version)


def extract_excel(cfg: ExcelSourceConfig, ctx: ExtractContext | None = None) -> Extracted:
    """The sheet's rows; `reused` (no rows) when the file's bytes are those the flow validated last run."""
    started = time.perf_counter()
    what = f"source '{cfg.name}'"
    data = read_bytes(cfg.path, what, missing="file not found")
    version = content_version(cfg, data)
    if ctx is not None and ctx.cached_version == version:
        return _unchanged(cfg, version, started)
    frame = read_excel_text(cfg.path, sheet=cfg.sheet, what=what, data=data)
    return _versioned(_extract(cfg, frame, started), cfg, data, version)


def content_version(cfg: CsvSourceConfig | ExcelSourceConfig, data: bytes) -> str | None:
    """sha256 of the file's bytes (and of its stage-history file): the version of its rows.
    None when the history file cannot be read (the extraction then reports it)."""
    h = hashlib.sha256(data)
    if cfg.stage_history is not None:
        try:
            h.update(b"\x00history\x00" + Path(cfg.stage_history.path).read_bytes())
        except OSError:
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
