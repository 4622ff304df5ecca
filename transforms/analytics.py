"""Entry point of the pipeline analytics: metrics, flags, sheets, summary and snapshot for one as_of.

Pure and vectorised: `build_analytics` takes the canonical opportunities and stage history and
returns everything the workbook and the snapshot store need. The rules are those of shared
docs/metrics.md. Choices where the spec leaves room (each documented where it is made):

- a past `as_of`: see `transforms.history` (a deal closed after `as_of` without history is shown
  open in the last open stage, entered on `created_date`, `stage_entered_estimated` = True);
- Opportunities: `status`, `stage` and `stage_entered_date` are the values at `as_of` (the last
  one is the date `days_in_stage` counts from);
- `avg_deal_size` averages the won deals that have an amount (the missing-amount rule);
- owner / product rows group deals without one under "(no owner)" / "(no product)";
- point-in-time metrics (open_*, clv, stage metrics) have an empty `period_start`;
- the Summary's "previous" is the team metric of the whole previous period, as of its last day;
- two small extra data sheets feed Summary charts: "Won by month" and "Flags by rule".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from config.models import AppConfig
from config.schema import FIELD_NAMES, ROW_ID_COLUMN, SOURCE_COLUMN
from config.snapshot_types import SNAPSHOT_DEAL_COLUMNS, SnapshotHistory, SnapshotRecord
from config.workbook import ChartSpec, ColumnFormat, SheetData, SummaryData

# issue 22: movement, slippage, targets (their modules; the hooks below are marked "issue 22")
from transforms import movement as movement_mod
from transforms import slippage as slippage_mod
from transforms import targets as targets_mod
from transforms.changes import classify_changes
from transforms.field_history import values_as_of
from transforms.flags import (
    ADVICE,
    DEAL_CHECKS,
    FLAG_COLUMNS,
    SEVERITY_ORDER,
    FlagResult,
    compute_flags,
)
from transforms.history import deals_as_of, prepare_history, to_days
from transforms.metrics import (
    METRIC_COLUMNS,
    NO_OWNER,
    NO_PRODUCT,
    TEAM_METRICS,
    UNITS,
    compute_metrics,
    team_values,
)
from transforms.periods import Period, last_months, month_label, previous_period, reporting_period

DERIVED_COLUMNS = ["days_in_stage", "age_days", "stage_entered_estimated", "push_count", "flags"]
OPPORTUNITY_COLUMNS = [*FIELD_NAMES, SOURCE_COLUMN, ROW_ID_COLUMN, *DERIVED_COLUMNS]
# Extra data sheets for the Summary charts (after Changes; not in config.workbook.SHEET_ORDER).
WON_BY_MONTH_SHEET = "Won by month"
FLAGS_BY_RULE_SHEET = "Flags by rule"
RULE_TITLES = {
    "M1": "Not prospecting", "M2": "Unqualified leads kept", "M3": "Pipeline out of balance",
    "M4": "Clinging to dead deals", "M5": "Not tracking data", "M6": "Ignoring existing customers",
    "M7": "Wrong metrics", "M8": "Product mix out of balance",
}
# the input columns compute_metrics reads
_METRIC_INPUTS = ["owner", "product", "account_id", "stage", "status", "amount", "created_date", "close_date",
                  "stage_entered_date", "deal_type"]
_UNIT_FORMAT: dict[str, ColumnFormat] = {
    "count": "int", "currency": "currency", "currency_per_day": "currency", "ratio": "ratio",
    "pct": "pct", "days": "days",
}


@dataclass
class Analytics:
    """What one run shows and stores (see the module docstring)."""

    opportunities: pd.DataFrame
    excluded_future: int
    metrics: pd.DataFrame
    flags: pd.DataFrame
    sheets: list[SheetData]
    summary: SummaryData
    snapshot: SnapshotRecord
    movement: movement_mod.Movement | None = None  # issue 22: None without an earlier snapshot


def build_analytics(opps: pd.DataFrame, history: pd.DataFrame, cfg: AppConfig, as_of: date,
                    *, stale_sources: Sequence[str] = (), snapshots: SnapshotHistory | None = None,
                    field_history: pd.DataFrame | None = None) -> Analytics:
    """Every metric, flag, sheet and the snapshot for `as_of` (see the module docstring).

    `field_history`: the sources' close_date / amount history (transforms.field_history), if any."""
    stages = cfg.pipeline.stages
    snapshots = snapshots or SnapshotHistory()
    hist = prepare_history(opps, history, stages)
    period = reporting_period(as_of, cfg.period, cfg.fiscal_year_start_month)
    deals = deals_as_of(opps, hist, stages, as_of)
    deals = values_as_of(deals, field_history, as_of)  # issue 22: close_date / amount at a past as_of
    rows_index = slippage_mod.row_index(deals)  # issue 22: one hash table of row ids for every lookup
    prev_at = slippage_mod.previous_positions(rows_index, snapshots.previous_deals)
    deals["push_count"] = slippage_mod.push_counts(deals, snapshots, field_history, as_of, rows_index, prev_at)
    full = compute_metrics(deals, cfg, as_of, period)
    # issue 22: slippage and target metrics, appended in catalogue order
    owner_keys = sorted(full.loc[full["scope"] == "owner", "key"].unique().tolist())
    target_rows = targets_mod.target_rows(deals, full, cfg, period)
    full = pd.concat([full, slippage_mod.slippage_metrics(deals, snapshots, as_of, owner_keys, prev_at),
                      targets_mod.target_metrics(target_rows, cfg, period)], ignore_index=True)
    previous = snapshots.previous_metrics() if snapshots.previous_as_of and snapshots.previous_as_of < as_of else {}
    fr = compute_flags(deals, full, cfg, as_of, period, stale_sources=stale_sources, previous=previous,
                       previous_as_of=snapshots.previous_as_of,
                       extra_rows=targets_mod.coverage_flags(target_rows, cfg, as_of, period))
    deals["flags"] = fr.deal_flags.to_numpy()

    prev_period = previous_period(period, cfg.fiscal_year_start_month)
    prev_deals = deals_as_of(opps, hist, stages, prev_period.end, columns=_METRIC_INPUTS)
    prev_team = team_values(compute_metrics(prev_deals, cfg, prev_period.end, prev_period, scopes=("team",)))
    team = team_values(full)

    opportunities = deals[OPPORTUNITY_COLUMNS].copy()
    metrics = full[METRIC_COLUMNS].copy()
    open_mask = deals["status"].to_numpy(dtype=object) == "open"
    snap_deals = deals.loc[open_mask, ["row_id", "owner", "product", "stage", "amount", "close_date"]]
    snap_deals = snap_deals.rename(columns={"row_id": "deal_id"})[list(SNAPSHOT_DEAL_COLUMNS)].reset_index(drop=True)
    snapshot = SnapshotRecord(as_of=as_of, metrics=team, deals=snap_deals)

    funnel, funnel_note = _funnel(deals, full, cfg)
    changes = classify_changes(deals, snapshots.previous_deals, snapshots.previous_as_of if previous else None, stages)
    # issue 22: the movement since the previous snapshot, and the quota sheet
    window = (period.start, period.full_end)
    movement = (movement_mod.compute_movement(deals, snapshots.previous_deals, snapshots.previous_as_of, as_of, window,
                                              prev_at)
                if snapshots.previous_as_of is not None and snapshots.previous_as_of < as_of else None)
    movement_sheet, waterfall = movement_mod.movement_sheet(movement, as_of, window, period.label)
    sheets = [
        SheetData("Flags", fr.flags, {"value": "number", "threshold": "number"}, highlight="severity"),
        SheetData("Metrics", full[[*METRIC_COLUMNS, "note"]].copy(),
                  {"value": "number", "period_start": "date", "period_end": "date"},
                  notes=["value is in the row's unit: count, currency, ratio (0-1), pct (already x100), days, "
                         "currency_per_day. An empty value has its reason in note."]),
        SheetData("Funnel", funnel, {"order": "int", "open_deals": "int", "open_value": "currency",
                                     "weighted_value": "currency", "reached": "int", "advanced": "int",
                                     "conversion_rate": "ratio", "avg_days_in_stage": "days"}, notes=[funnel_note]),
        SheetData("Owners", *_owners(full, fr, deals)),
        SheetData("Products", *_products(deals, full, cfg, period)),
        SheetData("Trends", *_trends(snapshots, as_of, team)),
        SheetData("Changes", changes, {"old_amount": "currency", "new_amount": "currency",
                                       "old_close_date": "date", "new_close_date": "date"},
                  notes=[f"Compared with the snapshot of {snapshots.previous_as_of.isoformat()}." if previous
                         else "No earlier snapshot of this report: nothing to compare."]),
        movement_sheet,  # issue 22
        targets_mod.targets_sheet(target_rows, period, as_of),  # issue 22
        SheetData(WON_BY_MONTH_SHEET, _won_by_month(deals, as_of),
                  {"month_start": "date", "won_deals": "int", "won_value": "currency"}),
        SheetData(FLAGS_BY_RULE_SHEET, _flags_by_rule(fr.counts),
                  {"high": "int", "medium": "int", "low": "int", "total": "int"}),
    ]
    summary = _summary(cfg, as_of, period, prev_period, team, prev_team, fr.counts, deals, len(opps) - len(deals),
                       stale_sources, funnel_note)
    summary.lines.append(movement_mod.summary_line(movement, as_of))  # issue 22
    if waterfall is not None:
        summary.charts.insert(0, waterfall)
    return Analytics(opportunities.reset_index(drop=True), len(opps) - len(deals), metrics, fr.flags, sheets,
                     summary, snapshot, movement)


def _funnel(deals: pd.DataFrame, metrics: pd.DataFrame, cfg: AppConfig) -> tuple[pd.DataFrame, str]:
    opens = cfg.pipeline.open_stages
    st = metrics[metrics["scope"] == "stage"].pivot(index="key", columns="metric", values="value")
    level = deals["_level"].to_numpy()
    k = np.arange(len(opens))
    reached = (level[:, None] >= k[None, :]).sum(axis=0) if len(level) else np.zeros(len(opens), int)
    advanced = (level[:, None] >= k[None, :] + 1).sum(axis=0) if len(level) else np.zeros(len(opens), int)
    names = [s.name for s in opens]
    frame = pd.DataFrame({
        "stage": pd.Series(names, dtype=object), "order": np.arange(1, len(opens) + 1),
        "open_deals": st.loc[names, "open_deals"].to_numpy().astype(np.int64),
        "open_value": st.loc[names, "open_value"].to_numpy(), "weighted_value": st.loc[names, "weighted_value"].to_numpy(),
        "reached": reached.astype(np.int64), "advanced": advanced.astype(np.int64),
        "conversion_rate": st.loc[names, "stage_conversion_rate"].to_numpy(),
        "avg_days_in_stage": st.loc[names, "avg_days_in_stage"].to_numpy(),
    })
    status = deals["status"].to_numpy(dtype=object)
    no_hist = int(((status == "lost") & (level < 0)).sum())
    note = (f"{no_hist} lost deal(s) without stage history are left out of reached/advanced/conversion "
            "(how far they got is unknown)." if no_hist else "Every lost deal has stage history: none left out of conversion.")
    return frame, note


def _owners(metrics: pd.DataFrame, fr: FlagResult, deals: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    cols = ["open_deals", "open_value", "weighted_value", "won_deals", "won_value", "lost_deals", "win_rate",
            "avg_deal_size", "avg_sales_cycle_days", "sales_velocity_per_day", "lead_gen_per_day"]
    own = metrics[metrics["scope"] == "owner"].pivot(index="key", columns="metric", values="value")
    own = own.reindex(columns=cols)
    own = own[own["open_deals"].notna()]  # issue 22: owners known only from quota_by_owner are on Targets
    keys = pd.Index(own.index, dtype=object)
    owner = deals["owner"].astype(object).to_numpy(dtype=object)
    codes = keys.get_indexer(np.where(pd.isna(owner), NO_OWNER, owner))
    ok = codes >= 0
    sev_counts = {s: np.zeros(len(keys), dtype=np.int64) for s in SEVERITY_ORDER}
    for i, (_, _, sev) in enumerate(DEAL_CHECKS):
        fired = ok & ((fr.deal_bits >> i) & 1).astype(bool)
        sev_counts[sev] += np.bincount(codes[fired], minlength=len(keys))
    owner_rows = fr.flags[fr.flags["scope"] == "owner"]
    for key, sev in zip(owner_rows["key"], owner_rows["severity"], strict=True):
        if key in keys:
            sev_counts[sev][keys.get_loc(key)] += 1
    frame = own.reset_index().rename(columns={"key": "owner"})
    frame.columns.name = None
    frame["owner"] = frame["owner"].astype(object)
    for c in ("open_deals", "won_deals", "lost_deals"):
        frame[c] = frame[c].astype(np.int64)
    for s in SEVERITY_ORDER:
        frame[f"flags_{s}"] = sev_counts[s]
    frame["flags_total"] = sum(sev_counts.values()) if len(keys) else np.zeros(0, np.int64)
    formats: dict[str, ColumnFormat] = {c: _UNIT_FORMAT[UNITS[c]] for c in cols}
    formats.update({f"flags_{s}": "int" for s in (*SEVERITY_ORDER, "total")})
    return frame, formats


def _products(deals: pd.DataFrame, metrics: pd.DataFrame, cfg: AppConfig, period: Period) -> tuple[pd.DataFrame, dict, list[str]]:
    prod = metrics[metrics["scope"] == "product"].pivot(index="key", columns="metric", values="value")
    prod = prod.reindex(columns=["open_deals", "open_value", "won_deals", "won_value"])
    mix = cfg.targets.product_mix or {}
    prod = prod.reindex(prod.index.union(pd.Index(list(mix), dtype=object)), fill_value=0.0)
    frame = prod.reset_index().rename(columns={"index": "product", "key": "product"})
    frame.columns.name = None
    frame["product"] = frame["product"].astype(object)
    open_total, won_total = frame["open_deals"].sum(), frame["won_deals"].sum()
    frame["open_share"] = frame["open_deals"] / open_total if open_total else np.nan
    frame["won_share"] = frame["won_deals"] / won_total if won_total else np.nan
    frame["target_share"] = frame["product"].map(mix).astype(float)
    frame["open_diff"] = frame["open_share"] - frame["target_share"]
    frame["won_diff"] = frame["won_share"] - frame["target_share"]
    for c in ("open_deals", "won_deals"):
        frame[c] = frame[c].astype(np.int64)
    frame = frame[["product", "target_share", "open_deals", "open_share", "open_diff", "open_value",
                   "won_deals", "won_share", "won_diff", "won_value"]]
    formats: dict[str, ColumnFormat] = {
        "target_share": "ratio", "open_deals": "int", "open_share": "ratio", "open_diff": "ratio", "open_value": "currency",
        "won_deals": "int", "won_share": "ratio", "won_diff": "ratio", "won_value": "currency"}
    notes = [f"Shares by count: open deals at as_of, and deals won in {period.label}; deals without a product "
             f"are '{NO_PRODUCT}'. M8 fires when |share - target| > {cfg.targets.product_mix_tolerance}."
             if mix else "No targets.product_mix configured: shares shown without targets."]
    return frame, formats, notes


def _trends(snapshots: SnapshotHistory, as_of: date, team: dict[str, float | None]) -> tuple[pd.DataFrame, dict]:
    hist = snapshots.metrics
    hist = hist[pd.to_datetime(hist["as_of"]) != pd.Timestamp(as_of)] if len(hist) else hist
    now = pd.DataFrame({"as_of": pd.Timestamp(as_of), "metric": list(team), "value": [np.nan if v is None else v for v in team.values()]})
    rows = pd.concat([hist.assign(as_of=pd.to_datetime(hist["as_of"])) if len(hist) else None, now], ignore_index=True)
    wide = rows.pivot_table(index="as_of", columns="metric", values="value", aggfunc="last", dropna=False)
    wide = wide.reindex(columns=list(TEAM_METRICS)).sort_index().reset_index()
    wide.columns.name = None
    wide["as_of"] = pd.to_datetime(wide["as_of"]).astype("datetime64[ns]")
    formats: dict[str, ColumnFormat] = {"as_of": "date", **{m: _UNIT_FORMAT[UNITS[m]] for m in TEAM_METRICS}}
    return wide, formats


def _won_by_month(deals: pd.DataFrame, as_of: date) -> pd.DataFrame:
    months = last_months(as_of, 12)
    won = deals["status"].to_numpy(dtype=object) == "won"
    close = to_days(deals["close_date"])
    amount = deals["amount"].to_numpy(dtype=float)
    counts, values = [], []
    for a, b in months:
        m = won & (close >= np.datetime64(a, "D")) & (close <= np.datetime64(b, "D"))
        counts.append(int(m.sum()))
        values.append(float(np.nansum(amount[m])))
    return pd.DataFrame({"month": pd.Series([month_label(a) for a, _ in months], dtype=object),
                         "month_start": pd.to_datetime([a for a, _ in months]).astype("datetime64[ns]"),
                         "won_deals": counts, "won_value": values})


def _flags_by_rule(counts: pd.DataFrame) -> pd.DataFrame:
    rules = sorted(ADVICE)
    frame = pd.DataFrame({"rule": pd.Series(rules, dtype=object),
                          "mistake": pd.Series([RULE_TITLES[r] for r in rules], dtype=object)})
    for s in SEVERITY_ORDER:
        per_rule = counts[counts["severity"] == s].groupby("rule")["count"].sum()
        frame[s] = per_rule.reindex(rules, fill_value=0).to_numpy().astype(np.int64)
    frame["total"] = frame[list(SEVERITY_ORDER)].sum(axis=1).astype(np.int64)
    return frame


def _summary(cfg: AppConfig, as_of: date, period: Period, prev_period: Period, team: dict, prev_team: dict,
             counts: pd.DataFrame, deals: pd.DataFrame, excluded: int, stale: Sequence[str], funnel_note: str) -> SummaryData:
    val = [np.nan if team[m] is None else team[m] for m in TEAM_METRICS]
    prev = [np.nan if prev_team.get(m) is None else prev_team[m] for m in TEAM_METRICS]
    kpis = pd.DataFrame({"metric": pd.Series(TEAM_METRICS, dtype=object), "value": val, "previous": prev,
                         "change": np.array(val, dtype=float) - np.array(prev, dtype=float),
                         "unit": pd.Series([UNITS[m] for m in TEAM_METRICS], dtype=object)})
    fc = counts.copy()
    status = deals["status"].to_numpy(dtype=object)
    lines = [
        f"As of {as_of.isoformat()}; period {period.label} ({period.start.isoformat()} to {period.end.isoformat()}); "
        f"'previous' = {prev_period.label} as of its last day ({prev_period.end.isoformat()}).",
        f"{len(deals)} deals existed at as_of: {int((status == 'open').sum())} open, {int((status == 'won').sum())} won, "
        f"{int((status == 'lost').sum())} lost; {excluded} created after as_of are not shown.",
        f"{int(counts['count'].sum())} flags: "
        + ", ".join(f"{int(counts.loc[counts['severity'] == s, 'count'].sum())} {s}" for s in SEVERITY_ORDER) + ".",
    ]
    est = int((deals["stage_entered_estimated"].to_numpy(dtype=bool) & (status == "open")).sum())
    if est:
        lines.append(f"{est} open deals have an estimated stage (entry date): no stage_entered_date or stage history.")
    if stale:
        lines.append("Stale sources (data from an earlier run): " + ", ".join(stale) + ".")
    lines.append(funnel_note)
    charts = [
        ChartSpec("Open pipeline by stage", "column", "Funnel", "stage", ["open_deals", "open_value"],
                  secondary=["open_value"]),
        ChartSpec("Won revenue by month (last 12 months)", "column", WON_BY_MONTH_SHEET, "month", ["won_value"]),
        ChartSpec("Flags by rule", "column", FLAGS_BY_RULE_SHEET, "rule", list(SEVERITY_ORDER)),
    ]
    return SummaryData(f"Pipeline report '{cfg.report}' as of {as_of.isoformat()}", kpis, fc, charts, lines)


__all__ = ["Analytics", "build_analytics", "DEAL_CHECKS", "FLAG_COLUMNS", "OPPORTUNITY_COLUMNS"]
