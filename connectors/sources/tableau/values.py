"""Tableau's answers as tables: the view CSV as sent, headers mapped to canonical fields, and the
formatted numbers ("$45,047", "14.4%", "(1,234)") and dates Tableau shows, read at this boundary."""

from __future__ import annotations

import io
import re
from typing import Any

import pandas as pd

from config.schema import FIELD_NAMES, FIELDS_BY_NAME
from connectors.errors import SourceDataError
from connectors.sources import files

REQUIRED_FIELDS = tuple(f.name for f in FIELDS_BY_NAME.values() if f.required)
AMOUNT_FIELDS = tuple(f.name for f in FIELDS_BY_NAME.values() if f.kind == "amount")
DATE_FIELDS = tuple(f.name for f in FIELDS_BY_NAME.values() if f.kind == "date")


def read_view_csv(body: bytes, where: str) -> pd.DataFrame:
    """The CSV exactly as Tableau sent it: every cell a string, blanks stay ''."""
    text = body.decode("utf-8-sig")
    if not text.strip():
        raise SourceDataError(f"view '{where}' returned an empty body instead of CSV")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise SourceDataError(f"view '{where}' did not return readable CSV: {exc}") from None


def map_columns(frame: pd.DataFrame, columns: dict[str, str], where: str) -> pd.DataFrame:
    """Rename source headers to canonical fields the way the csv source does (connectors.sources.files).

    A `columns` key the data lacks, or no column for a required field, is an error naming both.
    """
    have = {str(c).strip().lower() for c in frame.columns}
    missing = [src for src in columns if src.strip().lower() not in have]
    if missing:
        raise SourceDataError(
            f"{where}: 'columns' names {', '.join(repr(m) for m in missing)}, which the data does not have; "
            f"its columns are: {', '.join(map(str, frame.columns))}"
        )
    out = files.map_columns(frame, columns, FIELD_NAMES, where)
    absent = [f for f in REQUIRED_FIELDS if f not in out]
    if absent:
        raise SourceDataError(
            f"{where}: no column gives {', '.join(absent)}; add it to 'columns' (source header -> field). "
            f"Columns available: {', '.join(map(str, frame.columns))}"
        )
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- formatted values

_NUM_NOISE = re.compile(r"[\s\u00a0\u202f$€£¥]|^(?:USD|EUR|GBP|CHF|JPY)|(?:USD|EUR|GBP|CHF|JPY)$")
_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9}
_GROUPED = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def parse_tableau_number(text: Any) -> float | None:
    """'$45,047' -> 45047.0, '14.4%' -> 0.144, '(1,234)' -> -1234.0, '1.234,5' -> 1234.5, '$1.2M' -> 1.2e6.

    None for blanks and for text that is not a number. Numbers pass through.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return None if pd.isna(text) else float(text)
    s = str(text).strip().replace("\u2212", "-")
    if s == "" or s.lower() in ("null", "%null%"):
        return None
    neg = s.startswith("(") and s.endswith(")")
    s = s[1:-1] if neg else s
    s = _NUM_NOISE.sub("", s.replace("'", ""))
    if s.startswith("-"):
        neg, s = not neg, s[1:]
    s = _NUM_NOISE.sub("", s)
    scale = 1.0
    if s.endswith("%"):
        scale, s = 0.01, s[:-1]
    elif s[-1:].upper() in _UNITS:
        scale, s = _UNITS[s[-1].upper()], s[:-1]
    if "," in s and "." in s:
        s = s.replace(".", "").replace(",", ".") if s.rfind(",") > s.rfind(".") else s.replace(",", "")
    elif "," in s:
        s = s.replace(",", "") if _GROUPED.match(s) else s.replace(",", ".")
    try:
        value = float(s) * scale
    except ValueError:
        return None
    return -value if neg else value


_DATE_FORMATS = (
    "%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%m/%d/%Y", "%m/%d/%Y %I:%M:%S %p", "%d/%m/%Y",
    "%d/%m/%Y %H:%M:%S", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y",
)


def parse_formatted(records: pd.DataFrame, date_format: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Amount fields -> floats (unreadable text kept for the Rejected sheet); dates -> ISO text.

    A date column is read with the first format that fits every value (with `date_format`
    given, the canonical layer reads it instead). Ambiguous day/month columns get a note.
    """
    notes: list[str] = []
    out = records.copy()
    for f in AMOUNT_FIELDS:
        if f not in out:
            continue
        raw = out[f].astype(object)
        txt = _as_text(raw)
        parsed = _parse_numbers(txt)
        keep_raw = parsed.isna() & (txt != "")
        out[f] = parsed.astype(object).where(~keep_raw, raw)
        if txt.str[-1:].str.upper().isin(list(_UNITS)).any():
            notes.append(f"{f}: the view shows abbreviated numbers (K/M/B), so values are rounded as displayed")
    if date_format:
        return out, notes
    for f in DATE_FIELDS:
        if f not in out:
            continue
        txt = _as_text(out[f])
        uniq = pd.Series(pd.unique(txt[txt != ""]), dtype=object)  # parse each distinct date once
        if uniq.empty:
            continue
        fits = [fmt for fmt in _DATE_FORMATS if pd.to_datetime(uniq, format=fmt, errors="coerce").notna().all()]
        if not fits:
            continue  # left raw: the canonical layer rejects the rows with the reason
        if "%m/%d/%Y" in fits and "%d/%m/%Y" in fits:
            notes.append(f"{f}: dates like '{uniq.iloc[0]}' read as month/day/year; set date_format if the view uses day/month")
        iso = dict(zip(uniq, pd.to_datetime(uniq, format=fits[0]).dt.strftime("%Y-%m-%d"), strict=True))
        out[f] = txt.map(iso).astype(object).where(txt != "", "")
    return out, notes


def _as_text(values: pd.Series) -> pd.Series:
    """Stripped strings; missing values -> ''."""
    obj = values.astype(object)
    return obj.where(obj.notna(), "").map(str).str.strip().astype(object)


_PLAIN_NUMBER = re.compile(r"^\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")


def _parse_numbers(txt: pd.Series) -> pd.Series:
    """parse_tableau_number over a column: plain '$1,234.5' vectorised, the rest once per distinct value."""
    out = pd.Series(float("nan"), index=txt.index, dtype=float)
    plain = txt.str.match(_PLAIN_NUMBER).astype(bool)
    if plain.any():
        out[plain] = pd.to_numeric(txt[plain].str.replace(r"[$,]", "", regex=True))
    rest = ~plain & (txt != "")
    if rest.any():
        values = {u: parse_tableau_number(u) for u in pd.unique(txt[rest])}
        out[rest] = txt[rest].map(lambda v: values[v]).astype(float)
    return out

