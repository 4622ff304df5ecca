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
- the Summary's "previous" is like for like: the previous period to the same day
  (`periods.like_for_like`, in the configured calendar: `fiscal.calendar_for`); "previous_full"
  is the whole previous period, as of its last day; both convert the deals open then at that
  day's rates;
- Definitions and About say which calendar, fiscal period and rate rule the numbers used;
- two small extra data sheets feed Summary charts: "Won by month" and "Flags by mistake";
- on Actions, a source's `record_url_template` fills `record_url` where the source gave none
  (Opportunities keeps what the source gave).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from config.models import AppConfig
from config.schema import FIELD_NAMES, FX_COLUMNS, ROW_ID_COLUMN, SOURCE_COLUMN
from config.snapshot_types import SNAPSHOT_DEAL_COLUMNS, SnapshotHistory, SnapshotRecord
from config.workbook import ColumnFormat, SheetData, SummaryBlock, SummaryData

# issue 22: movement, slippage, targets (their modules; the hooks below are marked "issue 22")
from transforms import movement as movement_mod
from transforms import slippage as slippage_mod
from transforms import targets as targets_mod
from transforms.actions import actions_frame, actions_sheet
from transforms.changes import classify_changes
from transforms.currency import (
    RateTable,
    amounts_from_original,
    rate_table,
    reconvert,
    with_fx_columns,
)
from transforms.definitions import definitions_sheet
from transforms.field_history import values_as_of
from transforms.fiscal import calendar_for
from transforms.flags import (
    ADVICE,
    DEAL_CHECKS,
    FLAG_COLUMNS,
    SEVERITY_ORDER,
    FlagResult,
    compute_flags,
)
from transforms.forecast import FORECAST_METRICS, categories_at, forecast_metrics
from transforms.forecast import in_use as forecast_in_use
from transforms.history import deals_as_of, prepare_history, to_days
from transforms.labels import MISTAKES, check_format, metric_label
from transforms.labels import THRESHOLD_FORMATS as _THRESHOLD_FORMATS
from transforms.metrics import (
    METRIC_COLUMNS,
    NO_OWNER,
    NO_PRODUCT,
    TEAM_METRICS,
    UNITS,
    compute_metrics,
    team_values,
)
from transforms.periods import (
    Calendar,
    MonthCalendar,
    Period,
    like_for_like,
    previous_period,
    recent_months,
    reporting_period,
)
from transforms.provenance import provenance_rows
from transforms.summary import SummaryInputs, build_summary

DERIVED_COLUMNS = ["days_in_stage", "age_days", "stage_entered_estimated", "push_count", "flags"]
OPPORTUNITY_COLUMNS = [*FIELD_NAMES, *FX_COLUMNS, SOURCE_COLUMN, ROW_ID_COLUMN, *DERIVED_COLUMNS]
# Extra data sheets for the Summary charts (near the end of config.workbook.SHEET_ORDER).
WON_BY_MONTH_SHEET = "Won by month"
FLAGS_BY_MISTAKE_SHEET = "Flags by mistake"
RULE_TITLES = MISTAKES
# the input columns compute_metrics reads
_METRIC_INPUTS = ["owner", "product", "account_id", "stage", "status", "amount", "created_date", "close_date",
                  "stage_entered_date", "deal_type", "forecast_category", SOURCE_COLUMN, *FX_COLUMNS]
UNIT_FORMAT: dict[str, ColumnFormat] = {
    "count": "int", "currency": "currency_whole", "currency_per_day": "currency", "ratio": "ratio",
    "pct": "pct", "days": "days",
}
_UNIT_FORMAT = UNIT_FORMAT


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
    actions: pd.DataFrame | None = None
    about: list[tuple[str, str]] = field(default_factory=list)  # which calendar and rates the numbers used
    movement: movement_mod.Movement | None = None  # issue 22: None without an earlier snapshot


def _by_magnitude(formats: pd.Series, values: pd.Series) -> pd.Series:
    """`currency` (cents) becomes `currency_whole` where the value is 1,000 or more."""
    fmt = formats.astype(object).to_numpy(copy=True)
    big = (fmt == "currency") & (np.abs(np.nan_to_num(values.to_numpy(dtype=float))) >= 1000)
    fmt[big] = "currency_whole"
    return pd.Series(fmt, index=formats.index, dtype=object)


def value_formats(units: pd.Series, values: pd.Series) -> pd.Series:
    """The format of each value by its unit: counts whole, currency (and currency per day) without
    cents from 1,000 up, ratios as %, pct with a % sign, days with one decimal."""
    fmt = units.map(UNIT_FORMAT).astype(object).to_numpy(copy=True)
    money = units.isin(["currency", "currency_per_day"]).to_numpy()
    big = np.abs(np.nan_to_num(values.to_numpy(dtype=float))) >= 1000
    fmt[money & big] = "currency_whole"
    fmt[money & ~big] = "currency"
    return pd.Series(fmt, index=units.index, dtype=object).where(pd.notna(fmt), "number")


def build_analytics(opps: pd.DataFrame, history: pd.DataFrame, cfg: AppConfig, as_of: date,
                    *, stale_sources: Sequence[str] = (), snapshots: SnapshotHistory | None = None,
                    rates: Mapping[str, RateTable] | None = None,
                    field_history: pd.DataFrame | None = None) -> Analytics:
    """Every metric, flag, sheet and the snapshot for `as_of` (see the module docstring).

    `rates`: per source, the rates its amounts converted with (default: `inputs.rates`); with
    dated rates, deals are converted again at each as_of looked at (open deals take that day's rate).
    `field_history`: the sources' close_date / amount history (transforms.field_history), if any."""
    stages = cfg.pipeline.stages
    snapshots = snapshots or SnapshotHistory()
    opps = with_fx_columns(opps)
    if rates is None:
        rates = {str(s): rate_table(cfg.inputs.currency, cfg.inputs.rates) for s in pd.unique(opps[SOURCE_COLUMN])} \
            if cfg.inputs.dated and SOURCE_COLUMN in opps else {}
    hist = prepare_history(opps, history, stages)
    calendar = calendar_for(cfg)
    period = reporting_period(as_of, cfg.period, calendar)
    deals = deals_as_of(opps, hist, stages, as_of)
    deals = _values_at(deals, field_history, as_of, cfg)  # issue 22: close_date / amount at a past as_of
    deals, no_rate = reconvert(deals, rates, as_of)
    deals["forecast_category"] = categories_at(deals, stages)
    rows_index = slippage_mod.row_index(deals)  # issue 22: one hash table of row ids for every lookup
    prev_at = slippage_mod.previous_positions(rows_index, snapshots.previous_deals)
    deals["push_count"] = slippage_mod.push_counts(deals, snapshots, field_history, as_of, rows_index, prev_at)
    full = compute_metrics(deals, cfg, as_of, period)
    # issue 22: slippage and target metrics, appended in catalogue order
    owner_keys = sorted(full.loc[full["scope"] == "owner", "key"].unique().tolist())
    target_rows = targets_mod.target_rows(deals, full, cfg, period)
    full = pd.concat([full, slippage_mod.slippage_metrics(deals, snapshots, as_of, owner_keys, prev_at),
                      targets_mod.target_metrics(target_rows, cfg, period)], ignore_index=True)
    forecasting = forecast_in_use(opps, stages)
    if forecasting:
        full = pd.concat([full, forecast_metrics(deals, cfg, period, full)], ignore_index=True)
    previous = snapshots.previous_metrics() if snapshots.previous_as_of and snapshots.previous_as_of < as_of else {}
    fr = compute_flags(deals, full, cfg, as_of, period, stale_sources=stale_sources, previous=previous,
                       previous_as_of=snapshots.previous_as_of,
                       extra_rows=targets_mod.coverage_flags(target_rows, cfg, as_of, period))
    deals["flags"] = fr.deal_flags.to_numpy()
    team = team_values(full)

    prev_full_period = previous_period(period, calendar)
    prev_like = like_for_like(period, calendar)
    inputs = [c for c in _METRIC_INPUTS if c in opps.columns]

    def team_at(p: Period) -> dict[str, float | None]:
        """The team's values as of `p.end`, deals open then converted at that day's rates."""
        d, _ = reconvert(deals_as_of(opps, hist, stages, p.end, columns=inputs), rates, p.end)
        return team_values(compute_metrics(d, cfg, p.end, p, scopes=("team",)))

    prev_team = team_at(prev_like)
    prev_full = prev_team if prev_like.end == prev_full_period.end else team_at(prev_full_period)

    opportunities = deals[OPPORTUNITY_COLUMNS]  # shares the columns (copy on write): no second million-row copy
    metrics = full[METRIC_COLUMNS].copy()
    open_mask = deals["status"].to_numpy(dtype=object) == "open"
    snap_deals = deals.loc[open_mask, ["row_id", "owner", "product", "stage", "amount", "close_date"]]
    snap_deals = snap_deals.rename(columns={"row_id": "deal_id"})[list(SNAPSHOT_DEAL_COLUMNS)].reset_index(drop=True)
    snapshot = SnapshotRecord(as_of=as_of, metrics=team, deals=snap_deals)

    actions = actions_frame(deals, fr.deal_bits, cfg, as_of, team.get("avg_sales_cycle_days"))
    funnel, funnel_note = _funnel(deals, full, cfg)
    changes = classify_changes(deals, snapshots.previous_deals, snapshots.previous_as_of if previous else None, stages)
    metrics_sheet = full[[*METRIC_COLUMNS, "note"]].copy()
    metrics_sheet["label"] = metrics_sheet["metric"].map({m: metric_label(m, cfg) for m in (*UNITS, *FORECAST_METRICS)}).astype(object)
    checks = pd.Categorical(fr.flags["check"])  # a handful of checks over millions of rows: map each once
    value_fmt = [check_format(c) for c in checks.categories]
    thr_fmt = [_THRESHOLD_FORMATS.get(c, check_format(c)) for c in checks.categories]
    flag_value_fmt = _by_magnitude(pd.Series(np.array(value_fmt + [None], dtype=object)[checks.codes]), fr.flags["value"])
    flag_thr_fmt = _by_magnitude(pd.Series(np.array(thr_fmt + [None], dtype=object)[checks.codes]), fr.flags["threshold"])
    trends = _trends(snapshots, as_of, team)
    about = provenance_rows(cfg, calendar, period, prev_full_period, rates, deals)
    # issue 22: the movement since the previous snapshot (W: the whole period of the run's calendar)
    window = (period.start, period.full_end)
    movement = (movement_mod.compute_movement(deals, snapshots.previous_deals, snapshots.previous_as_of, as_of, window,
                                              prev_at)
                if snapshots.previous_as_of is not None and snapshots.previous_as_of < as_of else None)
    movement_sheet, waterfall = movement_mod.movement_sheet(movement, as_of, window, period.label)
    sheets = [
        actions_sheet(actions),
        SheetData("Flags", fr.flags, {"amount": "currency_whole", "value": "number", "threshold": "number"},
                  highlight="severity", row_formats={"value": flag_value_fmt, "threshold": flag_thr_fmt},
                  widths={"message": 70, "advice": 50}),
        SheetData("Metrics", metrics_sheet,
                  {"value": "number", "period_start": "date", "period_end": "date"},
                  row_formats={"value": value_formats(metrics_sheet["unit"], metrics_sheet["value"])},
                  notes=["value is in the row's unit and formatted by it: count, currency, ratio (shown as %), pct "
                         "(already x100), days, currency_per_day. An empty value has its reason in note."]),
        SheetData("Funnel", funnel, {"order": "int", "open_deals": "int", "open_value": "currency_whole",
                                     "weighted_value": "currency_whole", "reached": "int", "advanced": "int",
                                     "conversion_rate": "ratio", "avg_days_in_stage": "days"}, notes=[funnel_note]),
        SheetData("Owners", *_owners(full, fr, deals)),
        SheetData("Products", *_products(deals, full, cfg, period)),
        SheetData("Trends", *trends),
        SheetData("Changes", changes, {"old_amount": "currency_whole", "new_amount": "currency_whole",
                                       "old_close_date": "date", "new_close_date": "date"},
                  notes=[f"Compared with the snapshot of {snapshots.previous_as_of.isoformat()}." if previous
                         else "No earlier snapshot of this report: nothing to compare."]),
        movement_sheet,  # issue 22
        targets_mod.targets_sheet(target_rows, period, as_of),  # issue 22
        definitions_sheet(cfg, period, prev_like, calendar=calendar, provenance=about, forecast=forecasting),
        SheetData(WON_BY_MONTH_SHEET, _won_by_month(deals, as_of, calendar),
                  {"month_start": "date", "won_deals": "int", "won_value": "currency_whole"}),
        SheetData(FLAGS_BY_MISTAKE_SHEET, _flags_by_rule(fr.counts),
                  {"high": "int", "medium": "int", "low": "int", "total": "int"}),
    ]
    status = deals["status"].to_numpy(dtype=object)
    summary = build_summary(SummaryInputs(
        cfg=cfg, as_of=as_of, period=period, prev_like=prev_like, prev_full=prev_full_period, team=team,
        prev_team=prev_team, prev_full_team=prev_full, metrics=full, flags=fr.flags, counts=fr.counts,
        actions=actions, open_deals=int((status == "open").sum()), won=int((status == "won").sum()),
        lost=int((status == "lost").sum()), excluded=len(opps) - len(deals), stale=list(stale_sources),
        estimated=int((deals["stage_entered_estimated"].to_numpy(dtype=bool) & (status == "open")).sum()),
        funnel_note=funnel_note, trend_points=len(trends[0]), deal_bits=fr.deal_bits,
        won_by_month_sheet=WON_BY_MONTH_SHEET, flags_by_mistake_sheet=FLAGS_BY_MISTAKE_SHEET, calendar=calendar,
        forecast=_forecast_block(full, period) if forecasting else None, quota=_quota_block(full, period)))
    if no_rate:
        summary.lines.append(f"{no_rate} deals have no rate for their currency on their rate date at this as_of: "
                             "their amount is left out of the sums.")
    summary.lines.append(movement_mod.summary_line(movement, as_of))  # issue 22
    if waterfall is not None:
        summary.charts.append(waterfall)
    return Analytics(opportunities.reset_index(drop=True), len(opps) - len(deals), metrics, fr.flags, sheets,
                     summary, snapshot, actions, about, movement)


def _values_at(deals: pd.DataFrame, field_history: pd.DataFrame | None, as_of: date, cfg: AppConfig) -> pd.DataFrame:
    """issue 22 with issue 23: close_date / amount as the sources' history has them at `as_of`. A
    recorded amount is in the deal's own currency: it replaces original_amount and converts at the
    deal's rate (sources with dated rates convert again at `as_of` in `reconvert`)."""
    if not all(c in deals.columns for c in FX_COLUMNS):
        return values_as_of(deals, field_history, as_of)
    out = values_as_of(deals, field_history, as_of, amount_column="original_amount")
    return deals if out is deals else amounts_from_original(deals, out, cfg.inputs.currency)


def _team_block(metrics: pd.DataFrame, names: Sequence[str], title: str, lines: list[str]) -> SummaryBlock:
    """The team's values of `names` (in the metrics' order) as a Summary block."""
    team = metrics[(metrics["scope"] == "team") & metrics["metric"].isin(names)]
    frame = pd.DataFrame({"metric": pd.Series(list(team["metric"]), dtype=object),
                          "value": team["value"].to_numpy(dtype=float),
                          "unit": pd.Series(list(team["unit"]), dtype=object),
                          "note": pd.Series(list(team["note"].fillna("")), dtype=object)})
    return SummaryBlock(title, frame, lines)


def _forecast_block(metrics: pd.DataFrame, period: Period) -> SummaryBlock:
    """The team's forecast metrics (commit, best case, pipeline and the two forecasts)."""
    return _team_block(
        metrics, FORECAST_METRICS,
        f"Forecast for {period.label} (deals closing {period.start.isoformat()} to {period.full_end.isoformat()})",
        ["forecast_commit = won_value + commit_value; forecast_best_case = forecast_commit + best_case_value; "
         "commit/best case/pipeline: open deals with close_date in the period, by forecast category "
         "(per owner on the Metrics sheet)."])


def _quota_block(metrics: pd.DataFrame, period: Period) -> SummaryBlock | None:
    """issue 22 beside issue 23: the team's quota, attainment, gap and coverage for the period, when
    targets.quota has the period's label (None otherwise)."""
    quota = metrics[(metrics["scope"] == "team") & (metrics["metric"] == "quota")]["value"]
    if not len(quota) or pd.isna(quota.iloc[0]):
        return None
    return _team_block(
        metrics, targets_mod.TARGET_METRICS, f"Quota for {period.label}",
        ["attainment = won_value / quota; gap_to_quota = max(quota - won_value, 0); coverage = "
         "period_pipeline_value / gap_to_quota (per owner, with editable quotas, on the Targets sheet)."])


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
        "target_share": "ratio", "open_deals": "int", "open_share": "ratio", "open_diff": "ratio",
        "open_value": "currency_whole", "won_deals": "int", "won_share": "ratio", "won_diff": "ratio",
        "won_value": "currency_whole"}
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


def _won_by_month(deals: pd.DataFrame, as_of: date, calendar: Calendar) -> pd.DataFrame:
    """Won deals and value per month of the calendar, the last 12 (the current one to date).
    `month` is the calendar's label (`2026-05`, `2027-P05`); `label` is the chart's words
    (`May 2026`, or the fiscal label), with " (to date)" on a month still running."""
    periods = recent_months(as_of, 12, calendar)
    words = isinstance(calendar, MonthCalendar)
    won = deals["status"].to_numpy(dtype=object) == "won"
    close = to_days(deals["close_date"])
    amount = deals["amount"].to_numpy(dtype=float)
    counts, values = [], []
    for p in periods:
        m = won & (close >= np.datetime64(p.start, "D")) & (close <= np.datetime64(p.end, "D"))
        counts.append(int(m.sum()))
        values.append(float(np.nansum(amount[m])))
    labels = [(f"{p.start:%b %Y}" if words else p.label) + ("" if p.complete else " (to date)") for p in periods]
    return pd.DataFrame({"month": pd.Series([p.label for p in periods], dtype=object),
                         "label": pd.Series(labels, dtype=object),
                         "month_start": pd.to_datetime([p.start for p in periods]).astype("datetime64[ns]"),
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


__all__ = ["Analytics", "build_analytics", "DEAL_CHECKS", "FLAG_COLUMNS", "OPPORTUNITY_COLUMNS"]
