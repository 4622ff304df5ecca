"""The order of a delta merge's rows without sorting every row again.

A delta run stacks the base rows it keeps (already in order) over the changed deals' new rows.
Sorting the whole stack costs what is kept, not what changed: at 1,000,000 deals the stage
history is 2.8M rows and its sort 0.8 s. The keys of kept and new rows are disjoint (every row of
a changed deal is replaced), so the new rows, sorted on their own, are merged in by key alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype, is_datetime64_any_dtype


def _sort_ints(values: pd.Series) -> np.ndarray | None:
    """A datetime column as int64 that orders as pandas sorts it (NaT last); None for other kinds."""
    if not is_datetime64_any_dtype(values.dtype):
        return None
    ints = np.asarray(values.array.asi8, dtype=np.int64).copy()  # UTC for tz-aware: the same order
    ints[values.isna().to_numpy()] = np.iinfo(np.int64).max
    return ints


def _in_order(keys: np.ndarray, second: np.ndarray) -> bool:
    """Whether rows are sorted by (keys, second): keys non-decreasing, `second` within equal keys."""
    if len(keys) < 2:
        return True
    if not (keys[1:] >= keys[:-1]).all():
        return False
    same = keys[1:] == keys[:-1]
    return bool((second[1:][same] >= second[:-1][same]).all())


def stable_sort_order(frame: pd.DataFrame, kept: int, by: tuple[str, str]) -> np.ndarray:
    """Positions that put `frame` in `frame.sort_values(list(by), kind="stable")` order, where
    `frame` is `kept` rows already in that order over new rows that share no `by[0]` key with
    them. Falls back to that sort when the premise does not hold (or the keys are not text and
    a datetime column)."""
    key, second = by
    ids = frame[key].to_numpy(dtype=object)
    when = _sort_ints(frame[second])

    def fallback() -> np.ndarray:
        return frame.sort_values(list(by), kind="stable").index.to_numpy()

    if when is None or infer_dtype(ids, skipna=False) != "string":
        return fallback()
    old_ids, new_ids = ids[:kept], ids[kept:]
    if not _in_order(old_ids, when[:kept]):
        return fallback()
    new = frame.iloc[kept:][[key, second]].reset_index(drop=True)
    new_order = new.sort_values([key, second], kind="stable").index.to_numpy()
    placed = new_ids[new_order]
    at = np.searchsorted(old_ids, placed, side="left")
    inside = at < kept
    if (old_ids[at[inside]] == placed[inside]).any():  # a key in both parts: not a delta merge
        return fallback()
    slots = at + np.arange(len(placed))
    order = np.empty(len(ids), dtype=np.int64)
    old_slot = np.ones(len(ids), dtype=bool)
    old_slot[slots] = False
    order[old_slot] = np.arange(kept)
    order[slots] = kept + new_order
    return order
