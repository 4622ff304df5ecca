"""Turn one source's records (canonical column names, raw values) into typed opportunities and rejects.

Vectorised: each rule is evaluated over whole columns. A row that breaks any rule goes to the
rejected frame with every reason joined by '; ', never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, tzinfo

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from config.models import StageConfig
from config.models.finance import RateValue
from config.schema import (
    BOOL_FIELDS,
    CANONICAL_FIELDS,
    DATE_FIELDS,
    FIELD_NAMES,
    FX_COLUMNS,
    ROW_ID_COLUMN,
    SOURCE_COLUMN,
    TEXT_FIELDS,
)
from transforms.currency import RateTable, convert, rate_table

ROW_COLUMN = "_row"  # the source's row number (header = row 1), set by the connector
ERROR_COLUMN = "_error"  # a reason the connector already found (e.g. a ragged CSV row)
PIPELINE_COLUMN = "_pipeline"  # the record's pipeline, named in unknown-stage reasons
TRUE_WORDS = frozenset({"true", "yes", "y", "1", "t"})
FALSE_WORDS = frozenset({"false", "no", "n", "0", "f", ""})
MIN_YEAR, MAX_YEAR = 1900, 2200
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d")
_TZ_SUFFIX = r"(?:Z|[+-]\d{2}:?\d{2})$"
# amounts: plain numbers are parsed column-wise; anything else (signs, currency marks, other
# groupings) one value at a time by `_parse_amount`, which never guesses a decimal separator
_PLAIN = {".": r"^(?:\d+(?:\.\d+)?|\d{1,3}(?:,\d{3})+(?:\.\d+)?)$",
          ",": r"^(?:\d+(?:,\d+)?|\d{1,3}(?:\.\d{3})+(?:,\d+)?)$"}
_NUMBER = {".": re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+|\d{1,3}(?:,\d{3})+(?:\.\d*)?)(?:[eE][+-]?\d+)?$"),
           ",": re.compile(r"^(?:\d+(?:,\d*)?|,\d+|\d{1,3}(?:\.\d{3})+(?:,\d*)?)(?:[eE][+-]?\d+)?$")}
_AMBIGUOUS = re.compile(r"^\d{1,3}\.\d{3}$")  # 1.000: a thousand, or one with three decimals?
_SYMBOLS = {"$": "$", "€": "EUR", "£": "GBP", "¥": "¥"}
_CODE_AFFIX = re.compile(r"^(?P<pre>[A-Za-z]{3})\s*(?=[-+(\d.,])|(?<=[\d.)])\s*(?P<post>[A-Za-z]{3})$")
_GROUPING = re.compile(r"[\s\u00a0\u202f']")
EXACT_DIGITS = 15  # more significant digits than this are checked for a lossless float
_CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
_DEAL_TYPES = {
    "new": "new",
    "existing": "existing",
    "newbusiness": "new",
    "existingbusiness": "existing",
    "new business": "new",
    "existing business": "existing",
}
# source values of a forecast category (case, spaces, '_' and '-' ignored) -> canonical
_FORECAST = {
    "pipeline": "pipeline", "bestcase": "best_case", "mostlikely": "best_case", "commit": "commit",
    "forecast": "commit",  # Salesforce's ForecastCategory API value for Commit
    "omitted": "omitted", "omit": "omitted", "notforecasted": "omitted", "closed": "closed", "closedwon": "closed",
}


@dataclass(frozen=True)
class CanonicalResult:
    loaded: pd.DataFrame
    rejected: pd.DataFrame
    rows_read: int


def _text(series: pd.Series) -> pd.Series:
    """Raw values as stripped strings; missing -> ''. Each distinct value is converted once."""
    codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
    stripped = np.array([str(u).strip() for u in uniques.tolist()] + [""], dtype=object)
    return pd.Series(stripped[codes], index=series.index, dtype=object)


def _text_coded(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, texts) with `_text(series)` = texts[codes]: one stripped text per distinct raw value."""
    codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
    texts = np.array([str(u).strip() for u in uniques.tolist()] + [""], dtype=object)
    return np.where(codes < 0, len(uniques), codes), texts


def _each_distinct(texts: pd.Series, fn: Callable[[str], str]) -> pd.Series:
    """`fn` of each text (as `_text` gives them: no missing), called once per distinct text; rows
    with equal texts share one result (no new string per row)."""
    codes, uniques = pd.factorize(texts.astype(object))
    done = np.array([fn(u) for u in uniques.tolist()], dtype=object)
    return pd.Series(done[codes], index=texts.index, dtype=object)


def _on_distinct(raw: pd.Series, parse: Callable[[pd.Series], tuple[pd.Series, ...]]) -> tuple[pd.Series, ...]:
    """Run a vectorised `parse` over the distinct raw values only, then spread results to every row.

    Columns of dates, stages, flags and amounts repeat values heavily; parsing each once makes
    validation cost grow with the number of distinct values, not rows.
    """
    obj = raw.astype(object)
    try:
        codes, uniques = pd.factorize(obj, use_na_sentinel=True)
    except TypeError:  # unhashable cells: parse row by row
        return parse(raw)
    if len(uniques) * 2 > len(raw):
        return parse(raw)
    distinct = pd.Series([*uniques.tolist(), None], dtype=object)  # the last one stands for missing
    results = parse(distinct)
    take = np.where(codes < 0, len(uniques), codes)
    return tuple(pd.Series(r.to_numpy()[take], index=raw.index, dtype=r.dtype) for r in results)


def parse_amounts(raw: pd.Series, decimal: str | None = None) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(amount as float or NaN, reason or '', currency mark or '') for values like 12000, '$12,000',
    'EUR 12.000,00'.

    `decimal`: the file's decimal mark ('.' or ','; None: a CRM's machine numbers, read with '.').
    The other mark groups thousands, in groups of three only; a value written with the other
    convention, or (file sources, '.') `1.000` which reads either way, is rejected, not guessed.
    The currency mark (`$`, `€`, `£`, `¥`, or a 3-letter code before or after the number) is
    returned for `canonicalize` to check against the row's currency.
    """
    return _on_distinct(raw, lambda distinct: _parse_amounts(distinct, decimal))


def _parse_amounts(raw: pd.Series, decimal: str | None) -> tuple[pd.Series, pd.Series, pd.Series]:
    dec = decimal or "."
    txt = _text(raw)
    num = pd.Series(np.nan, index=raw.index, dtype=float)
    reason = pd.Series("", index=raw.index, dtype=object)
    mark = pd.Series("", index=raw.index, dtype=object)
    obj = raw.astype(object)
    kind = infer_dtype(obj, skipna=True)  # numbers (Excel cells, JSON): no text rules, their value as it is
    if kind in ("string", "empty", "boolean"):
        typed = pd.Series(False, index=raw.index)
    elif kind in ("integer", "floating", "mixed-integer-float", "decimal"):
        typed = obj.notna()
    else:
        typed = obj.map(lambda v: isinstance(v, int | float | np.integer | np.floating)
                        and not isinstance(v, bool | np.bool_)).astype(bool)
    if typed.any():
        num[typed] = obj[typed].astype(float)
    plain = txt.str.match(_PLAIN[dec]).astype(bool) & ~typed
    if decimal is not None and dec == ".":
        plain &= ~txt.str.match(_AMBIGUOUS).astype(bool)
    if plain.any():
        body = txt[plain].str.replace(",", "", regex=False) if dec == "." else (
            txt[plain].str.replace(".", "", regex=False).str.replace(",", ".", regex=False))
        num[plain] = pd.to_numeric(body, errors="coerce")
    rest = (txt != "") & ~plain & ~typed
    for i in np.flatnonzero(rest.to_numpy()):
        value, why, m = _parse_amount(txt.iat[i], dec, strict=decimal is not None)
        num.iat[i], reason.iat[i], mark.iat[i] = (np.nan if value is None else value), why, m
    long = ~typed & (txt.str.len() > EXACT_DIGITS) & (reason == "") & (num.abs() <= 1e15)
    long[long] = txt[long].str.count(r"\d") > EXACT_DIGITS
    for i in np.flatnonzero(long.to_numpy()):
        if not _exact(txt.iat[i], num.iat[i], dec):
            reason.iat[i] = (f"amount '{txt.iat[i]}' has more significant digits than a number keeps exactly "
                             f"(about {EXACT_DIGITS}); round it in the source")
    ok = reason == ""
    negative = ok & (num < 0)
    reason[negative] = "amount '" + txt[negative] + "' is negative"
    too_big = ok & ~negative & ((num.abs() > 1e15) | np.isinf(num))
    reason[too_big] = "amount '" + txt[too_big] + "' is too large"
    not_number = ok & ~negative & ~too_big & (txt != "") & num.isna() & ~(typed & obj.isna())
    reason[not_number] = "amount '" + txt[not_number] + "' is not a number"
    return num.where(reason == "").astype(float), reason, mark


def _parse_amount(text: str, dec: str, *, strict: bool) -> tuple[float | None, str, str]:
    """One amount that is not a plain number: (value or None, reason or '', currency mark or '')."""
    t = text
    marks = {_SYMBOLS[ch] for ch in t if ch in _SYMBOLS}
    t = "".join(ch for ch in t if ch not in _SYMBOLS).strip()
    code = _CODE_AFFIX.search(t)
    if code is not None:
        marks.add((code.group("pre") or code.group("post")).upper())
        t = (t[code.end():] if code.group("pre") else t[: code.start()]).strip()
    if len(marks) > 1:
        return None, f"amount '{text}' names two currencies ({', '.join(sorted(marks))})", ""
    mark = marks.pop() if marks else ""
    t = _GROUPING.sub("", t)
    sign = 1.0
    if t.startswith("(") and t.endswith(")"):
        t, sign = t[1:-1], -1.0
    if t[:1] in "+-" and t[:1]:
        sign, t = (-sign if t[0] == "-" else sign), t[1:]
    if t.lower() in ("inf", "infinity"):
        return sign * float("inf"), "", mark
    other = "," if dec == "." else "."
    if not _NUMBER[dec].match(t):
        if _NUMBER[other].match(t):
            hint = f"it has a decimal {'comma' if other == ',' else 'point'}: set decimal: '{other}' on the source"
            return None, f"amount '{text}' is not a number ({hint})", mark
        return None, f"amount '{text}' is not a number", mark
    if strict and dec == "." and _AMBIGUOUS.match(t):
        return None, (f"amount '{text}' is ambiguous: '.' before three digits groups thousands in some countries; "
                      f"write {t.replace('.', '')} or {t}0 (or set decimal: ',' on the source)"), mark
    body = t.replace(other, "")
    body = body.replace(",", ".") if dec == "," else body
    try:
        return sign * float(body), "", mark
    except ValueError:
        return None, f"amount '{text}' is not a number", mark


def _exact(text: str, value: float, dec: str) -> bool:
    """True when the float keeps every digit the text wrote (0.1 does; 30 digits do not)."""
    from decimal import Decimal, InvalidOperation

    digits = "".join(ch for ch in text if ch.isdigit() or ch in ".,eE+-")
    digits = digits.replace("," if dec == "." else ".", "").replace(",", ".")
    try:
        return Decimal(digits.lstrip("+")).copy_abs() == Decimal(repr(abs(float(value))))
    except (InvalidOperation, ValueError):
        return True  # not a plain number: the other checks name it


def parse_dates(raw: pd.Series, field: str, tz: tzinfo, date_format: str | None = None) -> tuple[pd.Series, pd.Series]:
    """Returns (datetime64 date at midnight or NaT, reason or '').

    Accepts ISO dates, ISO date-times (with an offset: converted to `tz` first) and
    `date_format`. Already-parsed datetimes/dates pass through.
    """
    return _on_distinct(raw, lambda distinct: _parse_dates(distinct, field, tz, date_format))


def _parse_dates(raw: pd.Series, field: str, tz: tzinfo, date_format: str | None) -> tuple[pd.Series, pd.Series]:
    if raw.empty:
        return pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]"), pd.Series("", index=raw.index, dtype=object)
    # microseconds while parsing: years like 9999 (a common "no date" placeholder) fit, and are
    # rejected as out of range below instead of overflowing nanoseconds
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us]")
    obj = raw.astype(object)
    is_dt = obj.map(lambda v: hasattr(v, "year") and hasattr(v, "month")).astype(bool)
    typed_out_of_range = pd.Series(False, index=raw.index)
    if is_dt.any():
        # per value: a column may mix aware and naive datetimes, which to_datetime refuses;
        # years outside the range are caught here, before they overflow datetime64[ns]
        years = obj[is_dt].map(lambda v: MIN_YEAR if pd.isna(v) else v.year)
        typed_out_of_range[is_dt] = (years < MIN_YEAR) | (years > MAX_YEAR)
        ok = is_dt & ~typed_out_of_range
        dt = obj[ok].map(lambda v: _local_timestamp(v, tz))
        out[ok] = pd.to_datetime(dt, errors="coerce").dt.normalize()
    txt = _text(obj.where(~is_dt, ""))
    todo = (txt != "") & ~is_dt
    if date_format and todo.any():
        parsed = pd.to_datetime(txt[todo], format=date_format, errors="coerce")
        ok = parsed.notna()
        out[parsed[ok].index] = parsed[ok].dt.normalize()
        todo &= out.isna()
    date_only = todo & txt.str.match(_ISO_DATE)
    if date_only.any():
        out[date_only] = pd.to_datetime(txt[date_only], format="%Y-%m-%d", errors="coerce")
    rest = todo & ~date_only & txt.str.match(_ISO_DATE_TIME).astype(bool)  # '2026' or '2026-06' is no date
    if rest.any():
        has_tz = txt[rest].str.contains(_TZ_SUFFIX, regex=True)
        aware = txt[rest][has_tz]
        if len(aware):
            # Salesforce writes +0000 without a colon; ISO8601 parsing accepts both forms.
            parsed = pd.to_datetime(aware, format="ISO8601", errors="coerce", utc=True)
            out[aware.index] = parsed.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
        naive = txt[rest][~has_tz]
        if len(naive):
            parsed = pd.to_datetime(naive, format="ISO8601", errors="coerce")
            out[naive.index] = parsed.dt.normalize()
    reason = pd.Series("", index=raw.index, dtype=object)
    expected = f"'{date_format}' or YYYY-MM-DD" if date_format else "YYYY-MM-DD"
    unparsed = (txt != "") & out.isna() & ~is_dt
    reason[unparsed] = f"{field} '" + txt[unparsed] + f"' is not a date (expected {expected})"
    years = out.dt.year
    out_of_range = out.notna() & ((years < MIN_YEAR) | (years > MAX_YEAR))
    reason[out_of_range] = f"{field} " + out[out_of_range].dt.strftime("%Y-%m-%d") + f" is out of range ({MIN_YEAR}-{MAX_YEAR})"
    out[out_of_range] = pd.NaT
    reason[typed_out_of_range] = (
        f"{field} " + obj[typed_out_of_range].map(lambda v: v.isoformat()[:10]) + f" is out of range ({MIN_YEAR}-{MAX_YEAR})"
    )
    return out.astype("datetime64[ns]"), reason


def _local_timestamp(value: object, tz: tzinfo) -> pd.Timestamp:
    """A date/datetime as a naive Timestamp in `tz` (aware values converted); NaT if unusable."""
    try:
        t = pd.Timestamp(value)
        return t.tz_convert(tz).tz_localize(None) if t.tzinfo is not None else t
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def parse_bools(raw: pd.Series, field: str) -> tuple[pd.Series, pd.Series]:
    """true/false, yes/no, y/n, 1/0, blank (= false), any case."""
    return _on_distinct(raw, lambda distinct: _parse_bools(distinct, field))


def _parse_bools(raw: pd.Series, field: str) -> tuple[pd.Series, pd.Series]:
    obj = raw.astype(object)
    txt = _text(obj).str.lower()
    txt = txt.where(~obj.map(lambda v: isinstance(v, bool | np.bool_)), obj.map(lambda v: str(bool(v)).lower() if isinstance(v, bool | np.bool_) else ""))
    txt = txt.replace({"1.0": "1", "0.0": "0"})
    val = txt.isin(TRUE_WORDS)
    bad = ~(val | txt.isin(FALSE_WORDS))
    reason = pd.Series("", index=raw.index, dtype=object)
    reason[bad] = f"{field} '" + _text(obj)[bad] + "' is not a yes/no value"
    return val, reason


def _stage_lookup(stages: list[StageConfig], stage_map: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased source label or stage name -> configured stage name."""
    lookup = {s.name.lower(): s.name for s in stages}
    lookup.update({k.strip().lower(): v for k, v in stage_map.items()})
    return lookup


def canonicalize(
    records: pd.DataFrame,
    *,
    source: str,
    stages: list[StageConfig],
    stage_map: Mapping[str, str],
    tz: tzinfo,
    date_format: str | None = None,
    reporting_currency: str = "USD",
    rates: Mapping[str, RateValue] | RateTable | None = None,
    decimal: str | None = None,
    as_of: date | None = None,
) -> CanonicalResult:
    """Validate and type one source's records. `records` has canonical column names and `_row`.

    `decimal`: a file source's decimal mark for text amounts (see `parse_amounts`). Amounts
    convert to `reporting_currency` at `as_of` (transforms.currency: closed deals at the rate of
    their close date, open deals at the rate of `as_of`); dated rates need `as_of`."""
    n = len(records)
    idx = records.index
    rows = records[ROW_COLUMN] if ROW_COLUMN in records else pd.Series(np.arange(2, n + 2), index=idx)
    col = {f: (records[f] if f in records else pd.Series([None] * n, index=idx, dtype=object)) for f in FIELD_NAMES}
    reasons: list[pd.Series] = []
    if ERROR_COLUMN in records:
        reasons.append(_text(records[ERROR_COLUMN]))
    out = pd.DataFrame(index=idx)

    for f in TEXT_FIELDS:
        t = _text(col[f])
        out[f] = t.where(t != "", None)

    ids = out["opportunity_id"]
    r = pd.Series("", index=idx, dtype=object)
    r[ids.isna()] = "opportunity_id is missing"
    reasons.append(r)

    # stage: source label -> configured stage
    lookup = _stage_lookup(stages, stage_map)
    stage_txt = _text(col["stage"])
    mapped = _each_distinct(stage_txt, str.lower).map(lookup)
    r = pd.Series("", index=idx, dtype=object)
    r[stage_txt == ""] = "stage is missing"
    unknown = (stage_txt != "") & mapped.isna()
    in_pipeline = pd.Series("", index=idx, dtype=object)
    if PIPELINE_COLUMN in records:  # a source with pipelines (HubSpot) names the deal's pipeline too
        pipe = _text(records[PIPELINE_COLUMN])
        in_pipeline = in_pipeline.where(pipe == "", " in pipeline '" + pipe + "'")
    r[unknown] = (
        "stage '" + stage_txt[unknown] + "'" + in_pipeline[unknown] + " is not a configured stage (map it "
        "in the source's stage_map or add it to pipeline.stages)"
    )
    reasons.append(r)
    out["stage"] = mapped.where(mapped.notna(), None)

    # status: given, else from the stage
    stage_status = {s.name: s.status for s in stages}
    st = _each_distinct(_text(col["status"]), str.lower)
    r = pd.Series("", index=idx, dtype=object)
    bad_status = (st != "") & ~st.isin(["open", "won", "lost"])
    r[bad_status] = "status '" + _text(col["status"])[bad_status] + "' is not open, won or lost"
    reasons.append(r)
    derived = out["stage"].map(stage_status)
    out["status"] = st.where(st.isin(["open", "won", "lost"]), derived)

    amount, r, mark = parse_amounts(col["amount"], decimal)
    reasons.append(r)

    cur = _each_distinct(_text(col["currency"]), str.upper)
    cur, r = _currency_of_marks(cur, mark, _text(col["amount"]), reporting_currency.upper())
    reasons.append(r)

    for f in DATE_FIELDS:
        d, r = parse_dates(col[f], f, tz, date_format)
        out[f] = d
        reasons.append(r)

    table = rates if isinstance(rates, RateTable) else rate_table(reporting_currency, rates)
    r = pd.Series("", index=idx, dtype=object)
    bad_code = (cur != "") & ~cur.str.match(_CURRENCY_CODE)
    r[bad_code] = "currency '" + cur[bad_code] + "' is not an ISO 4217 code"
    conv = convert(amount.to_numpy(dtype=float), cur.where(~bad_code, "").to_numpy(dtype=object),
                   out["status"].to_numpy(dtype=object), out["close_date"].to_numpy(dtype="datetime64[D]"),
                   as_of, table)
    r = r.where(bad_code, pd.Series(conv.reason, index=idx, dtype=object))
    reasons.append(r)
    out["amount"] = conv.amount
    out["currency"] = table.reporting
    out.loc[out["amount"].isna() & (cur == ""), "currency"] = None
    out["original_amount"] = amount.to_numpy(dtype=float)
    out["original_currency"] = cur.where(cur != "", None)
    out["fx_rate"] = conv.rate
    out["fx_rate_date"] = conv.rate_date.astype("datetime64[ns]")

    # forecast category: the source's value for deals open now (a closed deal is "closed" at every
    # as_of it is closed by, and takes its stage's category where it was still open: analysis decides)
    fc_txt = _text(col["forecast_category"])
    fc = fc_txt.map({v: _FORECAST.get(re.sub(r"[\s_\-]", "", v.lower())) for v in pd.unique(fc_txt)})
    r = pd.Series("", index=idx, dtype=object)
    bad_fc = (fc_txt != "") & fc.isna()
    r[bad_fc] = ("forecast_category '" + fc_txt[bad_fc]
                 + "' is not pipeline, best case, commit, omitted or closed")
    reasons.append(r)
    out["forecast_category"] = fc.where(fc.notna() & (fc != "closed") & (out["status"] == "open"), None)
    r = pd.Series("", index=idx, dtype=object)
    r[_text(col["created_date"]) == ""] = "created_date is missing"
    reasons.append(r)

    dt = _each_distinct(_text(col["deal_type"]), str.lower)
    mapped_dt = dt.map(_DEAL_TYPES)
    r = pd.Series("", index=idx, dtype=object)
    bad_dt = (dt != "") & mapped_dt.isna()
    r[bad_dt] = "deal_type '" + _text(col["deal_type"])[bad_dt] + "' is not new or existing"
    reasons.append(r)
    out["deal_type"] = mapped_dt.fillna("new")

    for f in BOOL_FIELDS:
        b, r = parse_bools(col[f], f)
        out[f] = b
        reasons.append(r)

    reason = _join_reasons(reasons, idx)
    del reasons
    # duplicates within the source: the first good row with an id is kept
    dup = ids.notna() & (reason == "") & ids.where(reason == "").duplicated(keep="first")
    if dup.any():
        first_row = rows[(reason == "") & ids.notna()].groupby(ids[(reason == "") & ids.notna()]).first()
        reason[dup] = "duplicate opportunity_id '" + ids[dup] + "' (first seen on row " + ids[dup].map(first_row).astype(str) + ")"

    bad = reason != ""
    kept = [*FIELD_NAMES, *FX_COLUMNS]
    loaded = out.loc[~bad, kept] if bad.any() else out[kept]  # a new frame either way (copy on write)
    del out
    loaded[SOURCE_COLUMN] = source
    loaded[ROW_ID_COLUMN] = source + ":" + loaded["opportunity_id"].astype(str)
    loaded = loaded.reset_index(drop=True)

    raw_cols = [c for c in FIELD_NAMES if c in records]
    rejected = pd.DataFrame(
        {"source": source, "row": rows[bad].astype(int).to_numpy(), "reason": reason[bad].to_numpy()}
    )
    for c in raw_cols:
        rejected[c] = _text(records.loc[bad, c]).to_numpy()
    return CanonicalResult(loaded=loaded, rejected=rejected, rows_read=n)


def _currency_of_marks(cur: pd.Series, mark: pd.Series, amount_text: pd.Series, reporting: str
                       ) -> tuple[pd.Series, pd.Series]:
    """The row's currency, from the amount's mark when the currency column is blank; a reason when
    the two disagree ('EUR 5,000' on a USD row). `$` agrees with any dollar (…D) currency, `¥` with
    JPY and CNY; a blank row with `$` is the reporting currency if it is a dollar, else USD."""
    reason = pd.Series("", index=cur.index, dtype=object)
    has = mark != ""
    if not has.any():
        return cur, reason
    dollar = mark == "$"
    yen = mark == "¥"
    agree = (mark == cur) | (dollar & cur.str.endswith("D")) | (yen & cur.isin(["JPY", "CNY"]))
    clash = has & (cur != "") & ~agree
    shown = mark.where(~dollar, "$").where(~yen, "¥")
    reason[clash] = "amount '" + amount_text[clash] + "' is in " + shown[clash] + " but currency is " + cur[clash]
    implied = mark.where(~dollar, reporting if reporting.endswith("D") else "USD").where(~yen, "JPY")
    return cur.where(~(has & (cur == "")), implied), reason


def _join_reasons(parts: list[pd.Series], idx: pd.Index) -> pd.Series:
    joined = pd.Series("", index=idx, dtype=object)
    for p in parts:
        has = p != ""
        if not has.any():
            continue
        joined = joined.where(~has, np.where(joined == "", p, joined + "; " + p))
    return joined


def empty_opportunities() -> pd.DataFrame:
    """A zero-row frame with the loaded columns and types."""
    frame = pd.DataFrame({f.name: pd.Series(dtype=_DTYPES[f.kind]) for f in CANONICAL_FIELDS})
    frame["original_amount"] = pd.Series(dtype=float)
    frame["original_currency"] = pd.Series(dtype=object)
    frame["fx_rate"] = pd.Series(dtype=float)
    frame["fx_rate_date"] = pd.Series(dtype="datetime64[ns]")
    frame[SOURCE_COLUMN] = pd.Series(dtype=object)
    frame[ROW_ID_COLUMN] = pd.Series(dtype=object)
    return frame


_DTYPES = {
    "text": object,
    "status": object,
    "amount": float,
    "currency": object,
    "date": "datetime64[ns]",
    "deal_type": object,
    "bool": bool,
    "forecast_category": object,
}


def canonicalize_history(history: pd.DataFrame, *, source: str, tz: tzinfo, stages: list[StageConfig],
                         stage_map: Mapping[str, str], date_format: str | None = None) -> pd.DataFrame:
    """Stage history rows (opportunity_id, stage, entered_date) typed and mapped; unusable rows dropped.

    History is supporting data: a row with an unknown stage or date cannot place a deal and is
    left out (the deal then falls back to the estimates of the spec).
    """
    if history is None or history.empty:
        return pd.DataFrame({"opportunity_id": pd.Series(dtype=object), "stage": pd.Series(dtype=object),
                             "entered_date": pd.Series(dtype="datetime64[ns]"), SOURCE_COLUMN: pd.Series(dtype=object)})
    lookup = _stage_lookup(stages, stage_map)
    id_codes, id_texts = _text_coded(history["opportunity_id"])
    ids = pd.Series(id_texts[id_codes], index=history.index, dtype=object)  # = _text(...)
    rank = pd.factorize(id_texts, sort=True)[0].astype(np.int32)[id_codes]  # each row's id: its rank in text order
    del id_codes, id_texts
    stage_codes, stage_texts = _text_coded(history["stage"])
    lowered = np.array([t.lower() for t in stage_texts.tolist()], dtype=object)
    stage = pd.Series(lowered[stage_codes], index=history.index, dtype=object).map(lookup)
    key = pd.factorize(np.array([lookup.get(t) for t in lowered.tolist()], dtype=object))[0].astype(np.int32)
    key = key[stage_codes]
    del stage_codes
    entered, _ = parse_dates(history["entered_date"], "entered_date", tz, date_format)
    usable = ((ids != "") & stage.notna() & entered.notna()).to_numpy(dtype=bool)
    out = pd.DataFrame({"opportunity_id": ids, "stage": stage, "entered_date": entered}, copy=False)
    day = entered.to_numpy(dtype="datetime64[ns]").view(np.int64)
    del ids, stage, entered
    rows = None if usable.all() else np.flatnonzero(usable)
    if rows is not None:
        rank, key, day = rank[rows], key[rows], day[rows]
    # What drop_duplicates() then sort_values(["opportunity_id", "entered_date"], kind="stable") keep, in
    # their order, from integer keys (millions of rows: no hash table per column, one copy of the rows)
    by_key = np.lexsort((key, day, rank))  # stable: equal rows stay in their order, the first one is kept
    same = np.diff(rank[by_key]) == 0
    same &= np.diff(day[by_key]) == 0
    same &= np.diff(key[by_key]) == 0
    del key
    keep = np.ones(len(rank), dtype=bool)
    keep[by_key[1:][same]] = False
    del by_key, same
    if keep.all():
        order = np.lexsort((day, rank))
    else:
        kept = np.flatnonzero(keep)
        order = kept[np.lexsort((day[kept], rank[kept]))]
    del rank, day, keep
    out = out.take(order if rows is None else rows[order]).reset_index(drop=True)
    out[SOURCE_COLUMN] = source
    return out
