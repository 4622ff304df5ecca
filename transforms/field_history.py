"""A source's own field history of close_date and amount (config.schema.FIELD_HISTORY_COLUMNS).

Connectors hand raw rows `opportunity_id, field, changed_at, value` (one per recorded value:
Salesforce OpportunityHistory rows, HubSpot `propertiesWithHistory` versions); `field` is
`close_date` or `amount`. `canonicalize_field_history` types them: `changed_at` as a naive
datetime in the config's time zone, `close_date` (datetime64, for close_date rows) and `amount`
(float, for amount rows), plus `source`. Unusable rows (no id, no time, an unknown field, a
close_date that is missing or not a date) are left out: the history is supporting data. An
amount row without a value stays (the amount was blank then).
"""

from __future__ import annotations

from datetime import date, tzinfo

import numpy as np
import pandas as pd

from config.schema import FIELD_HISTORY_COLUMNS, SOURCE_COLUMN
from transforms.canonical import parse_amounts, parse_dates

FIELDS = ("close_date", "amount")


def empty_field_history() -> pd.DataFrame:
    return pd.DataFrame({
        "opportunity_id": pd.Series(dtype=object), "field": pd.Series(dtype=object),
        "changed_at": pd.Series(dtype="datetime64[ns]"), "close_date": pd.Series(dtype="datetime64[ns]"),
        "amount": pd.Series(dtype=float), SOURCE_COLUMN: pd.Series(dtype=object)})


def canonicalize_field_history(raw: pd.DataFrame | None, *, source: str, tz: tzinfo) -> pd.DataFrame:
    """Typed field-history rows (see the module docstring), sorted by (opportunity_id, changed_at)."""
    if raw is None or raw.empty:
        return empty_field_history()
    missing = [c for c in FIELD_HISTORY_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"field history of source {source!r} lacks {missing}")
    ids = raw["opportunity_id"].astype(object).where(raw["opportunity_id"].notna(), "").astype(str).str.strip()
    field = raw["field"].astype(str)
    changed = _timestamps(raw["changed_at"], tz)
    is_close = (field == "close_date").to_numpy()
    close, _ = parse_dates(raw["value"].where(is_close, None), "close_date", tz, None)
    amount, _, _ = parse_amounts(raw["value"].where(~is_close, None))  # (value, reason, currency mark)
    out = pd.DataFrame({"opportunity_id": ids.to_numpy(dtype=object), "field": field.to_numpy(dtype=object),
                        "changed_at": changed, "close_date": close.where(is_close), "amount": amount.where(~is_close)})
    keep = (out["opportunity_id"] != "") & out["field"].isin(FIELDS) & out["changed_at"].notna()
    keep &= ~(is_close & out["close_date"].isna().to_numpy())
    out = out[keep].sort_values(["opportunity_id", "changed_at"], kind="stable").reset_index(drop=True)
    out[SOURCE_COLUMN] = source
    return out


def _timestamps(raw: pd.Series, tz: tzinfo) -> pd.Series:
    """ISO date-times (an offset, else UTC) as naive times in `tz`; unparseable: NaT."""
    text = raw.astype(object).where(raw.notna(), None).map(lambda v: v if v is None or isinstance(v, str) else str(v))
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_convert(tz).dt.tz_localize(None).astype("datetime64[ns]")


def row_ids(history: pd.DataFrame) -> np.ndarray:
    """`source:opportunity_id` of each row (the deals' row_id)."""
    return (history[SOURCE_COLUMN].astype(str) + ":" + history["opportunity_id"].astype(str)).to_numpy(dtype=object)


def values_as_of(deals: pd.DataFrame, history: pd.DataFrame | None, as_of: date, *,
                 amount_column: str = "amount") -> pd.DataFrame:
    """`deals` (at as_of) with the close_date and amount of each open deal as they stood at
    as_of, where the source's history shows a change after as_of: the last recorded value on or
    before as_of (none recorded by then: the value is left as it is). Deals without a later
    change keep their values, so a run as of today changes nothing. A recorded amount is the
    source's (in the deal's currency): `amount_column` names the column it replaces
    (`original_amount` when the deals carry the FX columns; the caller converts it)."""
    if history is None or history.empty or deals.empty:
        return deals
    end = pd.Timestamp(as_of) + pd.Timedelta(days=1)
    pos = pd.Index(deals["row_id"].astype(str)).get_indexer(row_ids(history))
    is_open = deals["status"].to_numpy(dtype=object) == "open"
    out = deals
    for field in FIELDS:
        m = (history["field"] == field).to_numpy() & (pos >= 0)
        if not m.any():
            continue
        h, p = history[m], pos[m]
        when = h["changed_at"].to_numpy(dtype="datetime64[ns]")
        later = np.unique(p[when >= end.to_datetime64()])
        if not len(later):
            continue
        before = when < end.to_datetime64()
        order = np.lexsort((when[before].astype(np.int64), p[before]))
        bp = p[before][order]
        values = h[field].to_numpy()[before][order]
        last = np.r_[bp[1:] != bp[:-1], True] if len(bp) else np.zeros(0, dtype=bool)
        known = pd.Series(values[last], index=bp[last])
        targets = later[is_open[later] & np.isin(later, known.index)]
        if not len(targets):
            continue
        if out is deals:
            out = deals.copy()
        col = out.columns.get_loc(amount_column if field == "amount" else field)
        out.iloc[targets, col] = known.reindex(targets).to_numpy()
    return out
