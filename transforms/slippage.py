"""Slippage (shared docs/metrics.md, "Slippage"): deals whose close date keeps moving out.

- `slipped_deals` / `slipped_value` (team and owner): deals open in the previous stored snapshot
  (D0) and at as_of whose close_date now is later than at D0, and their amount now (missing
  amounts count in the count only). Empty without an earlier snapshot.
- `push_count` per deal: the pushes (an open deal's close_date moved later between two
  consecutive observations) seen over its observed life. Where the source keeps field history
  for the deal (Salesforce OpportunityHistory.CloseDate, HubSpot `closedate` history), the
  observations are its recorded values up to as_of, then its close_date at as_of when it is
  open; otherwise they are the stored snapshots (their pushes, kept by the snapshot store) and
  the deal at as_of. A deal without a close_date in an observation is skipped there.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from config.snapshot_types import SnapshotHistory
from transforms.field_history import row_ids
from transforms.history import to_days
from transforms.metrics import NO_OWNER, UNITS


def row_index(deals: pd.DataFrame) -> pd.Index:
    """The deals' row ids as an Index (built once: every lookup below shares its hash table)."""
    return pd.Index(deals["row_id"].astype(str).to_numpy(dtype=object))


def previous_positions(index: pd.Index, previous: pd.DataFrame) -> np.ndarray:
    """Per deal of the previous snapshot: its position among the deals now (-1: not there)."""
    return index.get_indexer(previous["deal_id"].astype(str).to_numpy(dtype=object)).astype(np.int64)


def slipped_mask(deals: pd.DataFrame, previous: pd.DataFrame, at: np.ndarray | None = None) -> np.ndarray:
    """Per deal at as_of: open now and in the previous snapshot, with a later close_date now."""
    at = previous_positions(row_index(deals), previous) if at is None else at
    old = np.full(len(deals), np.datetime64("NaT"), dtype="datetime64[D]")
    ok = at >= 0
    old[at[ok]] = to_days(previous["close_date"])[ok]
    new = to_days(deals["close_date"])
    is_open = deals["status"].to_numpy(dtype=object) == "open"
    return is_open & ~np.isnat(old) & ~np.isnat(new) & (new > old)


def push_counts(deals: pd.DataFrame, snapshots: SnapshotHistory, field_history: pd.DataFrame | None,
                as_of: date, index: pd.Index | None = None, at: np.ndarray | None = None) -> np.ndarray:
    """`push_count` of every deal (see the module docstring), int64. `index` / `at`: row_index and
    previous_positions, when the caller has them."""
    index = row_index(deals) if index is None else index
    is_open = deals["status"].to_numpy(dtype=object) == "open"
    now = to_days(deals["close_date"])
    # from the stored snapshots: their pushes, then the step from the previous snapshot to now
    pushed_at = index.get_indexer(snapshots.pushes["deal_id"].astype(str).to_numpy(dtype=object))
    counts = np.bincount(pushed_at[pushed_at >= 0], minlength=len(deals)).astype(np.int64)
    if snapshots.previous_as_of is not None and snapshots.previous_as_of < as_of and len(snapshots.previous_deals):
        counts = counts + slipped_mask(deals, snapshots.previous_deals, at).astype(np.int64)
    if field_history is None or field_history.empty:
        return counts
    hist = field_history[(field_history["field"] == "close_date").to_numpy()
                         & field_history["close_date"].notna().to_numpy()
                         & (field_history["changed_at"] < pd.Timestamp(as_of) + pd.Timedelta(days=1)).to_numpy()]
    if hist.empty:
        return counts
    pos = index.get_indexer(row_ids(hist))
    hist = hist[pos >= 0]
    pos = pos[pos >= 0]
    if not len(pos):
        return counts
    # observations: the recorded values in time order, then the deal's close_date now when it is open
    order = np.lexsort((hist["changed_at"].to_numpy(dtype="datetime64[ns]").astype(np.int64), pos))
    deal = pos[order]
    value = to_days(hist["close_date"])[order]
    has = np.unique(deal)
    tail = has[is_open[has] & ~np.isnat(now[has])]
    deal = np.concatenate([deal, tail])
    value = np.concatenate([value, now[tail]])
    step = np.lexsort((np.r_[np.zeros(len(order), np.int64), np.ones(len(tail), np.int64)], deal))
    deal, value = deal[step], value[step]
    same_deal = deal[1:] == deal[:-1]
    later = same_deal & (value[1:] > value[:-1])
    from_history = np.bincount(deal[1:][later], minlength=len(deals)).astype(np.int64)
    counts[has] = from_history[has]
    return counts


def slippage_metrics(deals: pd.DataFrame, snapshots: SnapshotHistory, as_of: date, owner_keys: list[str],
                     at: np.ndarray | None = None) -> pd.DataFrame:
    """slipped_deals and slipped_value for the team and every owner key (long metric rows)."""
    has_prev = snapshots.previous_as_of is not None and snapshots.previous_as_of < as_of
    owner = deals["owner"].astype(object).where(deals["owner"].notna(), NO_OWNER).to_numpy(dtype=object)
    amount = deals["amount"].to_numpy(dtype=float)
    mask = slipped_mask(deals, snapshots.previous_deals, at) if has_prev else np.zeros(len(deals), dtype=bool)
    codes = pd.Index(owner_keys, dtype=object).get_indexer(owner)
    k = len(owner_keys)
    ok = codes >= 0
    with_amount = mask & ~np.isnan(amount)
    n_owner = np.bincount(codes[mask & ok], minlength=k)
    a_owner = np.bincount(codes[with_amount & ok], minlength=k)
    v_owner = np.bincount(codes[with_amount & ok], weights=amount[with_amount & ok], minlength=k)
    rows = []
    note = "" if has_prev else "no earlier snapshot of this report to compare with"
    since = pd.Timestamp(snapshots.previous_as_of) if has_prev else pd.NaT
    scopes = [("team", "all", int(mask.sum()), int(with_amount.sum()), float(amount[with_amount].sum()))]
    scopes += [("owner", key, int(n_owner[i]), int(a_owner[i]), float(v_owner[i])) for i, key in enumerate(owner_keys)]
    for scope, key, n, n_amount, total in scopes:
        value = total if n_amount else (0.0 if n == 0 else np.nan)
        vnote = note or ("" if n == 0 or n_amount else f"none of the {n} slipped deals has an amount")
        rows.append(("slipped_deals", scope, key, float(n) if has_prev else np.nan, note))
        rows.append(("slipped_value", scope, key, value if has_prev else np.nan, vnote))
    frame = pd.DataFrame(rows, columns=["metric", "scope", "key", "value", "note"])
    frame["unit"] = frame["metric"].map(UNITS)
    frame["period_start"] = since
    frame["period_end"] = pd.Timestamp(as_of)
    frame["missing_input"] = None
    return frame
