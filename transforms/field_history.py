"""A source's own field history of close_date and amount (config.schema.FIELD_HISTORY_COLUMNS).

Connectors hand raw rows `opportunity_id, field, changed_at, value` (one per recorded value:
Salesforce OpportunityHistory rows, HubSpot `propertiesWithHistory` versions); `field` is
`close_date` or `amount`. `canonicalize_field_history` types them: `changed_at` as a naive
datetime in the config's time zone, `close_date` (datetime64, for close_date rows) and `amount`
(float, for amount rows), plus `source`. Unusable rows (no id, no time, an unknown field, a
close_date that is not a date) are left out: the history is supporting data.
"""

from __future__ import annotations

from datetime import tzinfo

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
    amount, _ = parse_amounts(raw["value"].where(~is_close, None))
    out = pd.DataFrame({"opportunity_id": ids.to_numpy(dtype=object), "field": field.to_numpy(dtype=object),
                        "changed_at": changed, "close_date": close.where(is_close), "amount": amount.where(~is_close)})
    keep = (out["opportunity_id"] != "") & out["field"].isin(FIELDS) & out["changed_at"].notna()
    keep &= ~(is_close & out["close_date"].isna() & raw["value"].notna().to_numpy())
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
