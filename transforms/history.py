"""Stage history: the stage a deal was in at `as_of`, when it entered it, and how far it got.

History rows (`opportunity_id, stage, entered_date, source`) join the deals on
(`source`, `opportunity_id`). Everything is vectorised over numpy arrays: the history is joined
and sorted once (`prepare_history`), then `stage_as_of` answers for any `as_of`.

Rules for a deal open at `as_of` (shared docs/metrics.md, "Inputs"):

1. Its current stage, if the deal is open now and nothing shows a stage change after `as_of`
   (no history entry after `as_of`, and `stage_entered_date` not after `as_of`). Entered on
   `stage_entered_date`, else on the latest history entry of that stage, else on
   `created_date` (estimated).
2. Otherwise, with history: the last open stage entered on or before `as_of`, entered then.
3. Otherwise, without usable history: a deal open now keeps its current stage; a deal closed
   after `as_of` is placed in the last open stage (the one a deal sits in just before it
   closes; its real stage is unknown). Both are entered on `created_date` and marked estimated.

A deal closed at `as_of` keeps its current stage, entered per rule 1's dates. An entry date
after `as_of` (inconsistent source data) falls back to `created_date`, estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from config.models import StageConfig
from config.schema import SOURCE_COLUMN


@dataclass(frozen=True)
class PreparedHistory:
    """History rows matched to deal positions, sorted by (deal, entered)."""

    deal: np.ndarray  # int64 position in the opportunities frame
    stage: np.ndarray  # int64 index into the configured stages (-1: unknown stage)
    entered: np.ndarray  # datetime64[D]
    current: np.ndarray  # int64 index into the configured stages of each deal's current stage

    @property
    def empty(self) -> bool:
        return len(self.deal) == 0


@dataclass(frozen=True)
class StageAsOf:
    stage: np.ndarray  # int64 index into the configured stages (-1: unknown)
    entered: np.ndarray  # datetime64[D]
    estimated: np.ndarray  # bool
    reached_open: np.ndarray  # int64: highest open-stage ordinal in history on or before as_of, -1 none


def to_days(values: pd.Series) -> np.ndarray:
    """A datetime column as datetime64[D] (NaT kept)."""
    return pd.to_datetime(values).to_numpy(dtype="datetime64[D]")


def stage_codes(names: pd.Series | np.ndarray, stages: list[StageConfig]) -> np.ndarray:
    """Stage names -> index into `stages` (-1 for unknown or missing)."""
    return pd.Index([s.name for s in stages], dtype=object).get_indexer(np.asarray(names, dtype=object)).astype(np.int64)


def _last_in_runs(groups: np.ndarray) -> np.ndarray:
    """Indices of the last element of each run of equal values in a sorted array."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[groups[1:] != groups[:-1], True])


def _match_deals(opps: pd.DataFrame, history: pd.DataFrame) -> np.ndarray:
    """Position in `opps` of each history row's deal (-1 when unknown), by (source, opportunity_id)."""
    n = len(opps)
    ids = np.concatenate([opps["opportunity_id"].to_numpy(dtype=object), history["opportunity_id"].to_numpy(dtype=object)])
    id_codes, id_uniq = pd.factorize(ids)
    src = (np.concatenate([opps[SOURCE_COLUMN].to_numpy(dtype=object), history[SOURCE_COLUMN].to_numpy(dtype=object)])
           if SOURCE_COLUMN in history.columns and SOURCE_COLUMN in opps.columns else None)
    if src is not None and not (len(src) and (src == src[0]).all()):
        src_codes, src_uniq = pd.factorize(src)
    else:  # one source (the usual case) or no source column: the id alone is the key
        src_codes, src_uniq = np.zeros(len(ids), dtype=np.int64), [None]
    key = src_codes.astype(np.int64) * len(id_uniq) + id_codes
    valid = (id_codes >= 0) & (src_codes >= 0)
    lookup = np.full(len(src_uniq) * len(id_uniq), -1, dtype=np.int64)
    own, where = key[:n][valid[:n]], np.flatnonzero(valid[:n])
    lookup[own] = where
    if not np.array_equal(lookup[own], where):  # a repeated key kept only its last position
        raise ValueError("opportunities must be unique per (source, opportunity_id) to join stage history")
    return np.where(valid[n:], lookup[np.where(valid[n:], key[n:], 0)], -1).astype(np.int64)


def prepare_history(opps: pd.DataFrame, history: pd.DataFrame | None, stages: list[StageConfig]) -> PreparedHistory:
    """Match history rows to deals on (source, opportunity_id); rows of unknown deals are dropped."""
    current = stage_codes(opps["stage"].to_numpy(dtype=object), stages)
    if history is None or history.empty or opps.empty:
        return PreparedHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, "datetime64[D]"), current)
    pos = _match_deals(opps, history)
    entered = to_days(history["entered_date"])
    keep = (pos >= 0) & ~np.isnat(entered)
    pos, entered = pos[keep], entered[keep]
    stage = stage_codes(history["stage"].to_numpy()[keep], stages)
    # sort by (deal, entered) through one int64 key: much faster than lexsort on millions of rows
    days = entered.astype(np.int64)
    lo = int(days.min()) if len(days) else 0
    span = (int(days.max()) - lo + 1) if len(days) else 1
    order = np.argsort(pos * span + (days - lo), kind="stable")
    return PreparedHistory(pos[order], stage[order], entered[order], current)


def stage_as_of(opps: pd.DataFrame, hist: PreparedHistory, stages: list[StageConfig], as_of: date) -> StageAsOf:
    """The stage of every deal at `as_of` (see the module docstring for the rules)."""
    n = len(opps)
    day = np.datetime64(as_of, "D")
    is_open_stage = np.array([s.status == "open" for s in stages] + [False])  # [-1] -> False
    open_ord = np.full(len(stages) + 1, -1, dtype=np.int64)
    for i, k in enumerate(k for k, s in enumerate(stages) if s.status == "open"):
        open_ord[k] = i
    last_open = max(k for k, s in enumerate(stages) if s.status == "open")

    cur = hist.current
    status = opps["status"].to_numpy(dtype=object)
    created = to_days(opps["created_date"])
    close = to_days(opps["close_date"])
    field_entered = to_days(opps["stage_entered_date"])

    # latest history entry of the deal's current stage (any date)
    cur_hist = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    changed_after = np.zeros(n, dtype=bool)
    hist_stage = np.full(n, -1, dtype=np.int64)
    hist_entered = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    reached = np.full(n, -1, dtype=np.int64)
    if not hist.empty:
        same = np.flatnonzero(hist.stage == cur[hist.deal])
        last = same[_last_in_runs(hist.deal[same])]
        cur_hist[hist.deal[last]] = hist.entered[last]
        changed_after[hist.deal[hist.entered > day]] = True
        usable = np.flatnonzero((hist.entered <= day) & is_open_stage[hist.stage])
        last = usable[_last_in_runs(hist.deal[usable])]
        hist_stage[hist.deal[last]] = hist.stage[last]
        hist_entered[hist.deal[last]] = hist.entered[last]
        np.maximum.at(reached, hist.deal[usable], open_ord[hist.stage[usable]])

    cur_entered = np.where(np.isnat(field_entered), cur_hist, field_entered)
    changed_after |= cur_entered > day
    closed_at = np.isin(status, ["won", "lost"]) & (close <= day)
    open_now = status == "open"

    keep = closed_at | (open_now & ~changed_after)
    from_hist = ~keep & (hist_stage >= 0)
    stage = np.where(keep, cur, np.where(from_hist, hist_stage, np.where(open_now, cur, last_open)))
    entered = np.where(keep, cur_entered, np.where(from_hist, hist_entered, np.datetime64("NaT", "D")))
    entered = np.where(entered > day, np.datetime64("NaT", "D"), entered)  # inconsistent dates: fall back
    estimated = np.isnat(entered) | (~keep & ~from_hist)
    entered = np.where(np.isnat(entered), created, entered)
    return StageAsOf(stage.astype(np.int64), entered.astype("datetime64[D]"), estimated, reached)


def reached_level(status_at: np.ndarray, stage_at: np.ndarray, reached_hist: np.ndarray,
                  stages: list[StageConfig]) -> np.ndarray:
    """How far each deal got through the open stages, as an open-stage ordinal.

    Open deals reached every open stage up to their stage at as_of; won deals reached every
    open stage and won (= number of open stages); lost deals reached every open stage up to the
    furthest their history shows on or before as_of. -1 = unknown (a lost deal without
    history, or a deal in a stage that is not open): such deals are left out of conversion.
    """
    open_ord = np.full(len(stages) + 1, -1, dtype=np.int64)
    opens = [k for k, s in enumerate(stages) if s.status == "open"]
    for i, k in enumerate(opens):
        open_ord[k] = i
    level = np.full(len(status_at), -1, dtype=np.int64)
    is_open = status_at == "open"
    level[is_open] = open_ord[stage_at[is_open]]
    level[status_at == "won"] = len(opens)
    lost = status_at == "lost"
    level[lost] = reached_hist[lost]
    return level


def deals_as_of(opps: pd.DataFrame, hist: PreparedHistory, stages: list[StageConfig], as_of: date,
                columns: list[str] | None = None) -> pd.DataFrame:
    """The deals existing at `as_of` (created on or before it), as they stood that day.

    `status` and `stage` are replaced by their values at `as_of`; `stage_entered_date` by the
    date the deal entered that stage (see the module docstring); added: `days_in_stage`,
    `age_days`, `stage_entered_estimated`, and the internal `_stage_code` / `_level` (conversion
    level, see `reached_level`) that the metrics use.
    """
    day = np.datetime64(as_of, "D")
    created = to_days(opps["created_date"])
    exists = created <= day
    state = stage_as_of(opps, hist, stages, as_of)
    out = (opps if columns is None else opps[columns]).loc[exists]
    status = opps["status"].to_numpy(dtype=object)[exists]
    close = to_days(opps["close_date"])[exists]
    closed_at = np.isin(status, ["won", "lost"]) & (close <= day)
    status_at = np.where(closed_at, status, "open").astype(object)
    code = state.stage[exists]
    names = np.array([s.name for s in stages] + [None], dtype=object)
    entered = state.entered[exists]
    out["status"] = status_at
    out["stage"] = names[code]
    out["stage_entered_date"] = entered.astype("datetime64[ns]")
    out["days_in_stage"] = (day - entered).astype(np.int64)
    out["age_days"] = (day - created[exists]).astype(np.int64)
    out["stage_entered_estimated"] = state.estimated[exists]
    out["_stage_code"] = code
    out["_level"] = reached_level(status_at, code, state.reached_open[exists], stages)
    return out.reset_index(drop=True)
