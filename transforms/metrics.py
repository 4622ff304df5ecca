"""The metric catalogue of shared docs/metrics.md, computed as one long table.

Input: the deals existing at `as_of` as they stood that day (`transforms.history.deals_as_of`).
Output columns: metric, scope, key, value, unit, period_start, period_end, plus `note` (why a
value is empty) and `missing_input` (the input to add, when the empty value comes from a missing
input; M7 `metric_unavailable` reports these).

Conventions (all from the spec):
- counts count every deal; sums and averages of value leave out deals without an amount
  (so `avg_deal_size` = `won_value` / number of won deals with an amount; the same as
  `won_value / won_deals` when no amount is missing);
- a sum over no deals is 0; a sum over deals none of which has an amount is empty;
- a ratio with a zero denominator is empty, never 0;
- deals without owner / product are grouped under "(no owner)" / "(no product)", so owner or
  product rows add up to the team row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from config.models import AppConfig
from transforms.fiscal import calendar_for
from transforms.history import to_days
from transforms.periods import Calendar, Period, latest_complete_month, month_before, period_of

NO_OWNER = "(no owner)"
NO_PRODUCT = "(no product)"
TOP = ("team", "owner", "product")
ALL4 = ("team", "owner", "product", "stage")

# (metric, unit, scopes), in the spec's order
CATALOGUE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("open_deals", "count", ALL4),
    ("open_value", "currency", ALL4),
    ("weighted_value", "currency", ALL4),
    ("new_deals", "count", TOP),
    ("new_value", "currency", TOP),
    ("won_deals", "count", TOP),
    ("won_value", "currency", TOP),
    ("lost_deals", "count", TOP),
    ("lost_value", "currency", TOP),
    ("avg_deal_size", "currency", TOP),
    ("win_rate", "ratio", TOP),
    ("avg_sales_cycle_days", "days", TOP),
    ("sales_velocity_per_day", "currency_per_day", TOP),
    ("lead_gen_per_day", "currency_per_day", TOP),
    ("revenue_growth_pct", "pct", ("team",)),
    ("cac", "currency", ("team",)),
    ("clv", "currency", ("team",)),
    ("stage_conversion_rate", "ratio", ("stage",)),
    ("avg_days_in_stage", "days", ("stage",)),
    # "Slippage" and "Targets, attainment and coverage": computed by transforms.slippage and
    # transforms.targets (build_analytics appends their rows), not by compute_metrics
    ("slipped_deals", "count", ("team", "owner")),
    ("slipped_value", "currency", ("team", "owner")),
    ("quota", "currency", ("team", "owner")),
    ("attainment", "ratio", ("team", "owner")),
    ("gap_to_quota", "currency", ("team", "owner")),
    ("period_pipeline_value", "currency", ("team", "owner")),
    ("coverage", "ratio", ("team", "owner")),
    ("weighted_coverage", "ratio", ("team", "owner")),
)
UNITS = {m: u for m, u, _ in CATALOGUE}
TEAM_METRICS: tuple[str, ...] = tuple(m for m, _, s in CATALOGUE if "team" in s)
METRIC_COLUMNS = ["metric", "scope", "key", "value", "unit", "period_start", "period_end"]
_POINT_IN_TIME = {"open_deals", "open_value", "weighted_value", "clv", "stage_conversion_rate", "avg_days_in_stage"}


@dataclass
class _Result:
    keys: list[str]
    value: np.ndarray
    note: np.ndarray  # object: "" or why the value is empty
    missing: np.ndarray  # object: None or the input to add


def _empty_notes(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(k, "", dtype=object), np.full(k, None, dtype=object)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(len(den), np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return np.where(np.isnan(den), np.nan, out)


class _Groups:
    """Bin counts and sums of deal arrays per key of one scope."""

    def __init__(self, codes: np.ndarray, keys: list[str]):
        self.codes = codes
        self.keys = keys
        self.k = len(keys)
        self.ok = codes >= 0

    def count(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes[mask & self.ok], minlength=self.k).astype(float)

    def total(self, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
        m = mask & self.ok
        return np.bincount(self.codes[m], weights=weights[m], minlength=self.k)


def _scope_groups(deals: pd.DataFrame, scope: str, open_stage_names: list[str], open_ord: np.ndarray) -> _Groups:
    n = len(deals)
    if scope == "team":
        return _Groups(np.zeros(n, dtype=np.int64), ["all"])
    if scope == "stage":
        return _Groups(open_ord[deals["_stage_code"].to_numpy()], list(open_stage_names))
    col, none = ("owner", NO_OWNER) if scope == "owner" else ("product", NO_PRODUCT)
    values = deals[col].astype(object).where(deals[col].notna(), none).to_numpy(dtype=object)
    codes, uniques = pd.factorize(values, sort=True)
    return _Groups(codes.astype(np.int64), [str(u) for u in uniques])


def compute_metrics(deals: pd.DataFrame, cfg: AppConfig, as_of: date, period: Period,
                    scopes: tuple[str, ...] = ALL4) -> pd.DataFrame:
    """Every catalogue metric for the requested scopes, as the long table (plus note, missing_input)."""
    stages = cfg.pipeline.stages
    opens = [k for k, s in enumerate(stages) if s.status == "open"]
    open_names = [stages[k].name for k in opens]
    open_ord = np.full(len(stages) + 1, -1, dtype=np.int64)
    open_ord[opens] = np.arange(len(opens))
    probs = np.array([np.nan if s.probability is None else s.probability for s in stages] + [np.nan])
    day = np.datetime64(as_of, "D")
    ps, pe = np.datetime64(period.start, "D"), np.datetime64(period.end, "D")
    window = cfg.targets.prospecting_window_days
    calendar = calendar_for(cfg)

    status = deals["status"].to_numpy(dtype=object)
    is_open, won, lost = status == "open", status == "won", status == "lost"
    amount = deals["amount"].to_numpy(dtype=float)
    has_amt = ~np.isnan(amount)
    amt0 = np.where(has_amt, amount, 0.0)
    created, close = to_days(deals["created_date"]), to_days(deals["close_date"])
    closed_in = (close >= ps) & (close <= pe)
    won_p, lost_p = won & closed_in, lost & closed_in
    new_p = (created >= ps) & (created <= pe)
    in_window = (created > day - np.timedelta64(window, "D")) & (created <= day)
    prob = probs[deals["_stage_code"].to_numpy()]
    has_prob = ~np.isnan(prob)
    cycle = np.where(won_p, (close - created).astype("timedelta64[D]").astype(float), 0.0)
    days_in_stage = deals["days_in_stage"].to_numpy(dtype=float)

    results: dict[tuple[str, str], _Result] = {}
    plabel = period.label

    def sum_metric(g: _Groups, mask: np.ndarray, what: str) -> _Result:
        cnt, nv = g.count(mask), g.count(mask & has_amt)
        val = np.where(nv > 0, g.total(mask & has_amt, amt0), np.where(cnt == 0, 0.0, np.nan))
        note, missing = _empty_notes(g.k)
        bad = (cnt > 0) & (nv == 0)
        note[bad] = [f"none of the {int(c)} {what} has an amount" for c in cnt[bad]]
        missing[bad] = "amount"
        return _Result(g.keys, val, note, missing)

    for scope in scopes:
        g = _scope_groups(deals, scope, open_names, open_ord)
        keys = g.keys
        open_n = g.count(is_open)
        results["open_deals", scope] = _Result(keys, open_n, *_empty_notes(g.k))
        results["open_value", scope] = sum_metric(g, is_open, "open deals")
        wv_ok = is_open & has_amt & has_prob
        nv = g.count(wv_ok)
        wv = np.where(nv > 0, g.total(wv_ok, np.where(wv_ok, amount * np.nan_to_num(prob), 0.0)),
                      np.where(open_n == 0, 0.0, np.nan))
        note, missing = _empty_notes(g.k)
        bad = (open_n > 0) & (nv == 0)
        if bad.any():
            no_amt = g.count(is_open & has_amt) == 0
            stage_names = sorted({stages[c].name for c in deals["_stage_code"].to_numpy()[is_open & ~has_prob] if c >= 0})
            prob_input = ", ".join(f"pipeline.stages '{s}' probability" for s in stage_names) or "probability"
            for i in np.flatnonzero(bad):
                note[i] = "no open deal has both an amount and a stage probability"
                missing[i] = "amount" if no_amt[i] else prob_input
        results["weighted_value", scope] = _Result(keys, wv, note, missing)

        if scope == "stage":
            level = deals["_level"].to_numpy()
            reached = np.array([(level >= k).sum() for k in range(len(opens))], dtype=float)
            advanced = np.array([(level >= k + 1).sum() for k in range(len(opens))], dtype=float)
            note, missing = _empty_notes(g.k)
            note[reached == 0] = "no deal reached this stage"
            results["stage_conversion_rate", scope] = _Result(keys, _ratio(advanced, reached), note, missing)
            dsum = g.total(is_open, np.where(is_open, days_in_stage, 0.0))
            note, missing = _empty_notes(g.k)
            note[open_n == 0] = "no open deals in this stage"
            results["avg_days_in_stage", scope] = _Result(keys, _ratio(dsum, open_n), note, missing)
            continue

        results["new_deals", scope] = _Result(keys, g.count(new_p), *_empty_notes(g.k))
        results["new_value", scope] = sum_metric(g, new_p, "deals created in the period")
        won_n, lost_n = g.count(won_p), g.count(lost_p)
        results["won_deals", scope] = _Result(keys, won_n, *_empty_notes(g.k))
        results["won_value", scope] = sum_metric(g, won_p, "deals won in the period")
        results["lost_deals", scope] = _Result(keys, lost_n, *_empty_notes(g.k))
        results["lost_value", scope] = sum_metric(g, lost_p, "deals lost in the period")

        won_nv = g.count(won_p & has_amt)
        ads = _ratio(g.total(won_p & has_amt, amt0), won_nv)
        note, missing = _empty_notes(g.k)
        note[won_n == 0] = f"no deals won in {plabel}"
        bad = (won_n > 0) & (won_nv == 0)
        note[bad] = f"none of the deals won in {plabel} has an amount"
        missing[bad] = "amount"
        results["avg_deal_size", scope] = _Result(keys, ads, note, missing.copy())
        ads_note, ads_missing = note, missing

        wr = _ratio(won_n, won_n + lost_n)
        note, missing = _empty_notes(g.k)
        note[(won_n + lost_n) == 0] = f"no deals won or lost in {plabel}"
        results["win_rate", scope] = _Result(keys, wr, note, missing)

        cyc = _ratio(g.total(won_p, cycle), won_n)
        note, missing = _empty_notes(g.k)
        note[won_n == 0] = f"no deals won in {plabel}"
        results["avg_sales_cycle_days", scope] = _Result(keys, cyc, note, missing)

        vel = _ratio(open_n * ads * wr, cyc)
        note, missing = _empty_notes(g.k)
        note[np.isnan(cyc) | np.isnan(wr) | np.isnan(ads)] = (
            "needs avg_deal_size, win_rate and avg_sales_cycle_days, and one of them is empty")
        note[np.isnan(ads) & (ads_note != "")] = "avg_deal_size is empty: " + ads_note[np.isnan(ads) & (ads_note != "")]
        missing[:] = ads_missing
        note[cyc == 0] = "avg_sales_cycle_days is 0"
        results["sales_velocity_per_day", scope] = _Result(keys, vel, note, missing)

        lg = sum_metric(g, in_window, f"deals created in the last {window} days")
        results["lead_gen_per_day", scope] = _Result(keys, lg.value / window, lg.note, lg.missing)

        if scope == "team":
            results["revenue_growth_pct", scope] = _revenue_growth(won, close, amount, as_of, calendar)
            results["cac", scope] = _cac(deals, won_p, cfg, period)
            results["clv", scope] = _clv(deals, won, amount)

    return _assemble(results, scopes, as_of, period, window, calendar)


def _revenue_growth(won: np.ndarray, close: np.ndarray, amount: np.ndarray, as_of: date, calendar: Calendar) -> _Result:
    m_start, m_end = latest_complete_month(as_of, calendar)
    p_start, p_end = month_before(m_start, calendar)
    vals, notes, missing = [], [], None

    def month_sum(a: date, b: date) -> tuple[float, int, int]:
        m = won & (close >= np.datetime64(a, "D")) & (close <= np.datetime64(b, "D"))
        valid = m & ~np.isnan(amount)
        return float(amount[valid].sum()), int(m.sum()), int(valid.sum())

    cur, cur_n, cur_v = month_sum(m_start, m_end)
    prev, prev_n, prev_v = month_sum(p_start, p_end)
    note = ""
    if prev_n > 0 and prev_v == 0 or cur_n > 0 and cur_v == 0:
        value, note, missing = np.nan, "the deals won in the compared months have no amount", "amount"
    elif prev == 0:
        value, note = np.nan, f"no revenue won in {period_of(p_start, 'month', calendar).label} (the base month)"
    else:
        value = (cur - prev) / prev * 100.0
    vals.append(value)
    notes.append(note)
    return _Result(["all"], np.array(vals, dtype=float), np.array(notes, dtype=object), np.array([missing], dtype=object))


def _cac(deals: pd.DataFrame, won_p: np.ndarray, cfg: AppConfig, period: Period) -> _Result:
    spend = cfg.inputs.spend.get(period.label)
    new_won = won_p & (deals["deal_type"].to_numpy(dtype=object) == "new")
    accounts = deals["account_id"].to_numpy(dtype=object)[new_won]
    accounts = accounts[pd.notna(accounts)]
    customers = len(pd.unique(accounts))
    note, missing = "", None
    if spend is None:
        value, note, missing = np.nan, f"no spend for {period.label}", f"inputs.spend['{period.label}']"
    elif customers == 0 and new_won.any():
        value, note, missing = np.nan, f"no deal of type new won in {period.label} has an account_id", "account_id"
    elif customers == 0:
        value, note = np.nan, f"no new customers won in {period.label}"
    else:
        value = float(spend) / customers
    return _Result(["all"], np.array([value]), np.array([note], dtype=object), np.array([missing], dtype=object))


def _clv(deals: pd.DataFrame, won: np.ndarray, amount: np.ndarray) -> _Result:
    acc = deals["account_id"].to_numpy(dtype=object)
    m = won & pd.notna(acc)
    valid = m & ~np.isnan(amount)
    note, missing = "", None
    if valid.any():
        codes, uniques = pd.factorize(acc[valid])
        totals = np.bincount(codes, weights=amount[valid], minlength=len(uniques))
        value = float(totals.mean())
    elif m.any():
        value, note, missing = np.nan, "none of the won deals with an account_id has an amount", "amount"
    elif won.any():
        value, note, missing = np.nan, "no won deal has an account_id", "account_id"
    else:
        value, note = np.nan, "no deals won on or before as_of"
    return _Result(["all"], np.array([value]), np.array([note], dtype=object), np.array([missing], dtype=object))


def _assemble(results: dict[tuple[str, str], _Result], scopes: tuple[str, ...], as_of: date,
              period: Period, window: int, calendar: Calendar) -> pd.DataFrame:
    m_start, m_end = latest_complete_month(as_of, calendar)
    bounds: dict[str, tuple[date | None, date]] = {m: (period.start, period.end) for m in UNITS}
    bounds.update({m: (None, as_of) for m in _POINT_IN_TIME})
    bounds["lead_gen_per_day"] = (as_of - timedelta(days=window - 1), as_of)
    bounds["revenue_growth_pct"] = (m_start, m_end)
    cols: dict[str, list] = {c: [] for c in (*METRIC_COLUMNS, "note", "missing_input")}
    for metric, unit, mscopes in CATALOGUE:
        for scope in scopes:
            if scope not in mscopes or (metric, scope) not in results:
                continue
            r = results[metric, scope]
            start, end = bounds[metric]
            k = len(r.keys)
            cols["metric"] += [metric] * k
            cols["scope"] += [scope] * k
            cols["key"] += list(r.keys)
            cols["value"] += np.asarray(r.value, dtype=float).tolist()
            cols["unit"] += [unit] * k
            cols["period_start"] += [pd.Timestamp(start) if start else pd.NaT] * k
            cols["period_end"] += [pd.Timestamp(end)] * k
            cols["note"] += list(r.note)
            cols["missing_input"] += list(r.missing)
    out = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in cols.items()})
    out["value"] = out["value"].astype(float)
    for c in ("period_start", "period_end"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    return out


def team_values(metrics: pd.DataFrame) -> dict[str, float | None]:
    """Team-scope metric -> value (None when empty), in catalogue order."""
    team = metrics[metrics["scope"] == "team"]
    vals = dict(zip(team["metric"], team["value"], strict=True))
    return {m: (None if pd.isna(vals.get(m, np.nan)) else float(vals[m])) for m in TEAM_METRICS}
