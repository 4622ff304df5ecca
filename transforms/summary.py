"""The Summary sheet in words: what period it is, what it is compared with, the key numbers (like
for like, coloured better / worse), the forecast (when the report has forecast categories) with
the period's quota, attainment and coverage beside it (when targets.quota has the period), the
eight mistakes by name, the top deals at risk, and charts.

Labels come from `transforms.labels`. Currency shows whole units from 1,000 up, ratios as %,
changes with their sign (ratio changes in percentage points).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from config.models import AppConfig
from config.workbook import ChartSpec, ColumnFormat, SummaryBlock, SummaryData, SummaryTable
from transforms.flags import DEAL_CHECKS, SEVERITY_ORDER
from transforms.labels import MISTAKES, better, check_label, currency_symbol, metric_label
from transforms.metrics import TEAM_METRICS, UNITS
from transforms.periods import Calendar, MonthCalendar, Period, month_label, period_of

KPI_ORDER: tuple[str, ...] = (
    "open_value", "weighted_value", "open_deals", "new_value", "new_deals", "lead_gen_per_day", "won_value",
    "won_deals", "win_rate", "avg_deal_size", "avg_sales_cycle_days", "sales_velocity_per_day", "lost_value",
    "lost_deals", "revenue_growth_pct", "cac", "clv",
)
TOP_DEALS = 10
# Summary columns: A names; B-E numbers (this period, same point last period, change, whole last
# period / owner, stage, amount, close date); F, G words (note, why, next step, what was found).
WIDTHS = (36.0, 19.0, 19.0, 14.0, 16.0, 44.0, 58.0)
SEVERITY_COLOURS = {"high": "#C0504D", "medium": "#F2B134", "low": "#8EB4E3"}


@dataclass
class SummaryInputs:
    cfg: AppConfig
    as_of: date
    period: Period
    prev_like: Period
    prev_full: Period
    team: dict[str, float | None]
    prev_team: dict[str, float | None]
    prev_full_team: dict[str, float | None]
    metrics: pd.DataFrame  # the long metrics table (note column: why a value is empty)
    flags: pd.DataFrame
    counts: pd.DataFrame  # rule, check, severity, count
    actions: pd.DataFrame
    open_deals: int
    won: int
    lost: int
    excluded: int
    stale: list[str]
    estimated: int
    funnel_note: str
    trend_points: int
    won_by_month_sheet: str
    flags_by_mistake_sheet: str
    deal_bits: np.ndarray | None = None
    calendar: Calendar = field(default_factory=MonthCalendar)  # the run's (transforms.fiscal.calendar_for)
    forecast: SummaryBlock | None = None  # the team's forecast metrics, when the report has forecast categories
    quota: SummaryBlock | None = None  # issue 22: the team's quota, attainment and coverage, when the period has a quota


def counted(n: int, noun: str) -> str:
    """`1 open deal`, `2 open deals`."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def day_words(d: date, year: bool = True, short: bool = False) -> str:
    """`20 May 2026` (or `20 May`, or `19 Feb`)."""
    return f"{d.day} {d:%b}" if short else f"{d.day} {d:%B}" + (f" {d.year}" if year else "")


def value_format(unit: str, value: float | None) -> ColumnFormat:
    """How a KPI value of `unit` is shown: whole currency from 1,000 up, else cents."""
    if unit in ("currency", "currency_per_day"):
        return "currency_whole" if value is not None and not np.isnan(value) and abs(value) >= 1000 else "currency"
    return {"count": "int", "ratio": "ratio", "pct": "pct", "days": "days"}.get(unit, "number")


def money(value: float | None, code: str) -> str:
    """Currency in words-friendly text: $12.3M, $456K, $789."""
    if value is None or np.isnan(value):
        return "-"
    sym = currency_symbol(code)
    a = abs(value)
    text = f"{a / 1e6:,.1f}M" if a >= 1e6 else f"{a / 1e3:,.0f}K" if a >= 1e4 else f"{a:,.0f}"
    return ("-" if value < 0 else "") + sym + text


def _nan(v: float | None) -> float:
    return np.nan if v is None else float(v)


def _kpi_note(metric: str, s: SummaryInputs, notes: dict[str, str]) -> str:
    t = s.cfg.targets
    sym = currency_symbol(s.cfg.inputs.currency).strip()
    if s.team.get(metric) is None and notes.get(metric):
        return "Empty: " + notes[metric]
    if metric == "lead_gen_per_day":
        v = s.team.get(metric)
        gap = ", below it" if v is not None and v < t.new_pipeline_per_day else ""
        return f"last {t.prospecting_window_days} days; target {sym}{t.new_pipeline_per_day:,.0f} a day{gap}"
    if metric == "revenue_growth_pct":
        row = s.metrics[(s.metrics["metric"] == metric) & (s.metrics["scope"] == "team")]
        if len(row) and pd.notna(row["period_start"].iloc[0]):
            m = row["period_start"].iloc[0].date()
            before = period_of(m - timedelta(days=1), "month", s.calendar)
            if isinstance(s.calendar, MonthCalendar):
                return f"{m:%B %Y} vs {before.start:%B %Y}"
            return f"{period_of(m, 'month', s.calendar).label} vs {before.label}"
    if metric in ("open_value", "weighted_value", "open_deals"):
        return f"open on {day_words(s.as_of, False)} vs on {day_words(s.prev_like.end, False)}"
    if metric == "clv":
        return "won deals up to each date"
    return ""


def kpi_frame(s: SummaryInputs) -> pd.DataFrame:
    """The machine-readable KPIs: metric id, label, value, previous (like for like), change,
    previous_full, unit, better (+1 higher is better, -1 lower is better)."""
    metrics = list(TEAM_METRICS)
    val = np.array([_nan(s.team[m]) for m in metrics])
    prev = np.array([_nan(s.prev_team.get(m)) for m in metrics])
    return pd.DataFrame({
        "metric": pd.Series(metrics, dtype=object),
        "label": pd.Series([metric_label(m, s.cfg) for m in metrics], dtype=object),
        "value": val, "previous": prev, "change": val - prev,
        "previous_full": np.array([_nan(s.prev_full_team.get(m)) for m in metrics]),
        "unit": pd.Series([UNITS[m] for m in metrics], dtype=object),
        "better": np.array([better(m) for m in metrics], dtype=np.int64),
    })


def _kpi_table(s: SummaryInputs, kpis: pd.DataFrame) -> SummaryTable:
    k = kpis.set_index("metric")
    team_notes = s.metrics[s.metrics["scope"] == "team"]
    notes = dict(zip(team_notes["metric"], team_notes["note"], strict=True))
    p, q = s.period, s.prev_like
    this_h = f"{p.label} to {day_words(s.as_of, short=True)}"
    prev_h = f"{q.label} to {day_words(q.end, short=True)}"
    full_h = f"All of {q.label}"
    rows = [m for m in KPI_ORDER if m in k.index]
    change = []
    change_fmt: list[ColumnFormat | None] = []
    for m in rows:
        c = k.loc[m, "change"]
        if UNITS[m] == "ratio":
            change.append(c * 100)
            change_fmt.append("points")
        else:
            change.append(c)
            change_fmt.append(value_format(UNITS[m], c))
    frame = pd.DataFrame({
        "Measure": [k.loc[m, "label"] for m in rows],
        this_h: [k.loc[m, "value"] for m in rows],
        prev_h: [k.loc[m, "previous"] for m in rows],
        "Change": change,
        full_h: [k.loc[m, "previous_full"] for m in rows],
        "Note": [_kpi_note(m, s, notes) for m in rows],
    })
    fmts = {col: [value_format(UNITS[m], k.loc[m, src]) for m in rows]
            for col, src in ((this_h, "value"), (prev_h, "previous"), (full_h, "previous_full"))}
    fmts["Change"] = change_fmt
    return SummaryTable("Key numbers", frame, row_formats=fmts,
                        better={"Change": [int(k.loc[m, "better"]) for m in rows]},
                        signed={"Change"})


FORECAST_HOW: dict[str, str] = {
    "commit_value": "Open deals in Commit closing in the period.",
    "best_case_value": "Open deals in Best case closing in the period.",
    "pipeline_value": "Open deals in Pipeline closing in the period.",
    "forecast_commit": "Won revenue + Commit.",
    "forecast_best_case": "Forecast (commit) + Best case.",
}


QUOTA_HOW: dict[str, str] = {
    "quota": "targets.quota for the period (editable on the Targets sheet).",
    "attainment": "Won revenue to date / quota.",
    "gap_to_quota": "Quota - won revenue to date (0 once reached).",
    "period_pipeline_value": "Open deals closing in the period.",
    "coverage": "Pipeline closing this period / gap to quota.",
    "weighted_coverage": "The same, with amount x stage probability.",
}


def _forecast_table(s: SummaryInputs, forecast: SummaryBlock | None, quota: SummaryBlock | None) -> SummaryTable:
    """The forecast and the quota in words, in one table (the forecast beside the quota it is
    measured against): one row per metric, its value over the whole period (attainment: to date)."""
    blocks = [b for b in (forecast, quota) if b is not None]
    f = pd.concat([b.frame for b in blocks], ignore_index=True)
    metrics = [str(m) for m in f["metric"]]
    values = f["value"].to_numpy(dtype=float)
    notes = f["note"].tolist() if "note" in f.columns else [""] * len(f)
    units = [str(u) for u in f["unit"]]
    value_h = f"All of {s.period.label}"
    how = [("Empty: " + str(n)) if np.isnan(v) and n else FORECAST_HOW.get(m, QUOTA_HOW.get(m, ""))
           for m, v, n in zip(metrics, values, notes, strict=True)]
    frame = pd.DataFrame({"Measure": [metric_label(m, s.cfg) for m in metrics], value_h: values,
                          "How it is counted": pd.Series(how, dtype=object)})
    p = s.period
    closing = f"Deals closing {day_words(p.start)} to {day_words(p.full_end)}"
    if forecast is None:
        title, note = blocks[0].title, f"{closing}; per owner on the Targets sheet."
    else:
        title = forecast.title if quota is None else forecast.title.replace("Forecast for", "Forecast and quota for", 1)
        note = f"{closing}, by forecast category; per owner on the Metrics sheet" + (
            "." if quota is None else " (quota and coverage per owner on the Targets sheet).")
    return SummaryTable(title, frame,
                        row_formats={value_h: [value_format(u, v) for u, v in zip(units, values, strict=True)]},
                        note=note)


def _mistakes_table(s: SummaryInputs) -> SummaryTable:
    counts = s.counts
    found: dict[str, list[str]] = {r: [] for r in MISTAKES}
    others = s.flags[s.flags["scope"] != "deal"] if len(s.flags) else s.flags
    deal_checks = {c for c, _, _ in DEAL_CHECKS}
    for (rule, check), group in counts.groupby(["rule", "check"], sort=False):
        n = int(group["count"].sum())
        if check in deal_checks:
            found[rule].append(f"{check_label(check)}: {n:,} deal{'s' if n != 1 else ''}.")
            continue
        rows = others[others["check"] == check]
        if len(rows) == 1:
            found[rule].append(str(rows["message"].iloc[0]))
        else:
            scope = str(rows["scope"].iloc[0]) if len(rows) else "team"
            found[rule].append(f"{check_label(check)}: {n:,} {scope}s.")
    bits = s.deal_bits if s.deal_bits is not None else np.zeros(0, dtype=np.int64)
    deals = {}
    for rule in MISTAKES:
        mask = sum(1 << i for i, (_, r, _) in enumerate(DEAL_CHECKS) if r == rule)
        deals[rule] = int(((bits & mask) != 0).sum()) if mask else 0
    has_deal_checks = {r: any(rule == r for _, rule, _ in DEAL_CHECKS) for r in MISTAKES}
    by_rule = counts.groupby("rule")["count"].sum()
    worst = {}
    for rule in MISTAKES:
        sev = counts.loc[counts["rule"] == rule, "severity"].tolist()
        worst[rule] = next((x for x in SEVERITY_ORDER if x in sev), "")
    rules = list(MISTAKES)
    frame = pd.DataFrame({
        "Mistake": [f"{r} {MISTAKES[r]}" for r in rules],
        "Flags": [int(by_rule.get(r, 0)) for r in rules],
        "Deals": [deals[r] if has_deal_checks[r] else np.nan for r in rules],
        "Worst": [worst[r] or "-" for r in rules],
        "Open deals hit": [deals[r] / s.open_deals if s.open_deals and deals[r] else np.nan for r in rules],
        "What was found": [" ".join(found[r]) or "Nothing." for r in rules],
    })
    return SummaryTable("The eight pipeline mistakes", frame,
                        formats={"Flags": "int", "Deals": "int", "Open deals hit": "ratio"},
                        note="Every flag is on the Flags sheet; the Definitions sheet says when each one fires.",
                        highlight="Worst", page_break=True)


def _top_deals(s: SummaryInputs) -> SummaryTable:
    top = s.actions.head(TOP_DEALS)
    name = top["name"].where(top["name"].notna(), top["opportunity_id"])
    frame = pd.DataFrame({
        "Deal": name.astype(object).tolist(),
        "Owner": top["owner"].where(top["owner"].notna(), "(no owner)").tolist(),
        "Stage": top["stage"].tolist(),
        "Amount": top["amount"].to_numpy(dtype=float),
        "Close date": pd.to_datetime(top["close_date"]).tolist(),
        "Why": top["flags"].tolist(),
        "Next step": top["next_step"].tolist(),
        "_url": top["record_url"].tolist(),
    })
    n = len(s.actions)
    share = n / s.open_deals if s.open_deals else 0.0
    note = (f"{n:,} of {s.open_deals:,} open deals ({share:.0%}) have something to act on; the {min(n, TOP_DEALS)} "
            "below come first (most severe, then the largest). All of them are on the Actions sheet."
            if n else "No open deal has a flag to act on.")
    return SummaryTable("Top deals at risk", frame, formats={"Amount": "currency_whole", "Close date": "date"},
                        links={"Deal": "_url"}, note=note)


def _lines(s: SummaryInputs) -> list[str]:
    p, q, f = s.period, s.prev_like, s.prev_full
    total = (p.full_end - p.start).days + 1
    day = (p.end - p.start).days + 1
    kind = s.cfg.period
    lines = [f"{p.label} to date: {day_words(p.start)} to {day_words(p.end)}, day {day} of {total} of the {kind}."]
    if q.end >= f.full_end:
        lines.append(f"Compared with the whole of {q.label}: {day_words(q.start)} to {day_words(q.end)}.")
    else:
        lines.append(f"Compared with {q.label} to the same day: {day_words(q.start)} to {day_words(q.end)} "
                     f"(the last column is all of {q.label}, to {day_words(f.full_end)}).")
    open_value = s.team.get("open_value")
    lines.append(f"{counted(s.open_deals, 'open deal')} worth {money(open_value, s.cfg.inputs.currency)}; "
                 f"{len(s.actions):,} to act on (Actions sheet). {s.won:,} won and {s.lost:,} lost deals in the data.")
    if s.stale:
        lines.append("Not refreshed this run (its deals are from an earlier run): " + ", ".join(s.stale) + ".")
    if s.estimated:
        lines.append(f"{counted(s.estimated, 'open deal')} without a stage entry date: days in stage count from "
                     "creation (marked estimated on Opportunities).")
    if s.excluded:
        lines.append(f"{counted(s.excluded, 'deal')} created after {day_words(s.as_of)} left out (the report is as of "
                     "that day).")
    return lines


MONEY_AXIS = '[>=1000000]"{s}"0.0,,"M";[>=1000]"{s}"0,"K";"{s}"0'


def _charts(s: SummaryInputs) -> list[ChartSpec]:
    sym = currency_symbol(s.cfg.inputs.currency).strip()
    axis = MONEY_AXIS.format(s=sym)
    month = period_of(s.as_of, "month", s.calendar)
    partial = s.as_of < month.full_end
    month_words = f"{s.as_of:%B}" if isinstance(s.calendar, MonthCalendar) else month.label
    charts = [
        ChartSpec("Open pipeline by stage", "column", "Funnel", "stage", ["open_value"], lines=["open_deals"],
                  secondary=["open_deals"], x_title="Stage", y_title=f"Open value ({sym})", y_format=axis,
                  y2_title="Open deals", y2_format="#,##0", names={"open_value": "Open value", "open_deals": "Open deals"}),
        ChartSpec("Won revenue by month" + (f" ({month_words} to date)" if partial else ""), "column",
                  s.won_by_month_sheet,
                  "label", ["won_value"], y_title=f"Won revenue ({sym})", y_format=axis, muted_last=partial,
                  names={"won_value": "Won revenue"}),
        ChartSpec("Flags by mistake", "bar", s.flags_by_mistake_sheet, "mistake", list(SEVERITY_ORDER), stacked=True,
                  colours=dict(SEVERITY_COLOURS), y_title="Flags", y_format="#,##0",
                  names={x: x.capitalize() for x in SEVERITY_ORDER}),
    ]
    if s.trend_points >= 2:
        charts.append(ChartSpec("Open pipeline at each snapshot", "line", "Trends", "as_of", ["open_value"],
                                y_title=f"Open pipeline ({sym})", y_format=axis, x_title="Snapshot date",
                                x_format="d mmm", names={"open_value": "Open pipeline"}, x_unit_days=7))
    return charts


def build_summary(s: SummaryInputs) -> SummaryData:
    kpis = kpi_frame(s)
    title = f"Pipeline report '{s.cfg.report}', as of {day_words(s.as_of)}"
    tables = [_kpi_table(s, kpis)]
    if s.forecast is not None or s.quota is not None:
        tables.append(_forecast_table(s, s.forecast, s.quota))
    tables += [_top_deals(s), _mistakes_table(s)]
    blocks = [b for b in (s.forecast, s.quota) if b is not None]
    return SummaryData(title, kpis, s.counts.copy(), _charts(s), _lines(s), tables, list(WIDTHS), blocks)


__all__ = ["SummaryInputs", "build_summary", "day_words", "kpi_frame", "money", "month_label", "value_format"]
