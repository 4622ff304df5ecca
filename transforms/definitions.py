"""The Definitions sheet: every metric and flag of the workbook with its formula in words and the
thresholds in force for this run (from config), so a reader can recompute any number: which
fiscal calendar and period the numbers used, and which rate rule and rates converted the amounts."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from config.models import AppConfig
from config.workbook import SheetData
from transforms.currency import rate_table
from transforms.flags import ADVICE
from transforms.forecast import FORECAST_METRICS, SUM_OF
from transforms.labels import (
    METRIC_DEFINITIONS,
    MISTAKES,
    check_definitions,
    check_label,
    currency_symbol,
    metric_label,
)
from transforms.metrics import CATALOGUE
from transforms.periods import Calendar, Period, as_calendar
from transforms.provenance import RATE_RULE

DEFINITIONS_SHEET = "Definitions"
DEFINITION_COLUMNS = ["section", "name", "id", "scope", "unit", "severity", "definition", "in_force", "remedy"]


def _metric_in_force(metric: str, cfg: AppConfig, period: Period) -> str:
    sym = currency_symbol(cfg.inputs.currency).strip()
    if metric == "weighted_value":
        return "stage probabilities: " + ", ".join(f"{s.name} {s.probability:g}" for s in cfg.pipeline.open_stages
                                                   if s.probability is not None)
    if metric == "lead_gen_per_day":
        return (f"N = {cfg.targets.prospecting_window_days} days (targets.prospecting_window_days); target "
                f"{sym}{cfg.targets.new_pipeline_per_day:,.0f} a day")
    if metric == "cac":
        spend = cfg.inputs.spend.get(period.label)
        return (f"spend {period.label}: {sym}{spend:,.0f} (inputs.spend)" if spend is not None
                else f"no spend for {period.label} (inputs.spend)")
    if metric in ("new_deals", "new_value", "won_deals", "won_value", "lost_deals", "lost_value", "avg_deal_size",
                  "win_rate", "avg_sales_cycle_days", "sales_velocity_per_day"):
        return f"period {period.label}: {period.start.isoformat()} to {period.end.isoformat()}"
    if metric == "quota":
        quota = (cfg.targets.quota or {}).get(period.label)
        return (f"{period.label}: {sym}{quota:,.0f} (targets.quota)" if quota is not None
                else f"no team quota for {period.label} (targets.quota)")
    if metric in ("period_pipeline_value", "coverage", "weighted_coverage"):
        return f"closing in {period.label}: {period.start.isoformat()} to {period.full_end.isoformat()}"
    return ""


def _currency_row(cfg: AppConfig, provenance: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The rate rule and the rates in force (from the About rows of `transforms.provenance`)."""
    code = cfg.inputs.currency.upper()
    rates = [value for key, value in provenance if key == "rate"]
    if not rates and cfg.inputs.rates:
        rates = rate_table(code, cfg.inputs.rates).describe()
    in_force = "; ".join(rates) if rates else f"every amount is in {code}: nothing converted"
    return ("Currency", "Conversion rate", "fx_rate", "deal", "rate", "",
            f"Amounts are in {code}: {RATE_RULE}.", in_force, "")


def definitions_frame(cfg: AppConfig, period: Period, previous: Period, *, calendar: Calendar | None = None,
                      provenance: Sequence[tuple[str, str]] = (), forecast: bool = False) -> pd.DataFrame:
    """The sheet's rows; `calendar`: the run's (default: months from `fiscal_year_start_month`);
    `provenance`: the About rows that name the rates; `forecast`: the forecast metrics are shown."""
    cal = as_calendar(calendar if calendar is not None else cfg.fiscal_year_start_month)
    rows: list[tuple[str, ...]] = [
        ("Period", "Fiscal calendar", "calendar", "", "", "",
         "Every period-based number (the period, previous, Won by month, revenue growth's months, backfill --every) "
         "takes its bounds and labels from this calendar.", cal.describe(), ""),
        ("Period", "Reporting period", "period", "", "", "",
         f"The {cfg.period} of the fiscal calendar containing as_of, from its first day to as_of (both counted); "
         f"forecast metrics count deals closing in the whole {cfg.period}.",
         f"{period.label}: {period.start.isoformat()} to {period.end.isoformat()} (whole {cfg.period} to "
         f"{period.full_end.isoformat()})", ""),
        ("Period", "Previous, like for like", "previous", "", "", "",
         "The previous period to the same day: its first day plus as many days as this period has run (clamped to its "
         "last day). Open pipeline, weighted pipeline and CLV are their values on that day.",
         f"{previous.label}: {previous.start.isoformat()} to {previous.end.isoformat()}", ""),
        ("Period", "Previous, whole period", "previous_full", "", "", "",
         "The whole previous period, as of its last day.",
         f"{previous.label}: {previous.start.isoformat()} to {previous.full_end.isoformat()}", ""),
        _currency_row(cfg, provenance),
    ]
    for metric, unit, scopes in CATALOGUE:
        rows.append(("Metric", metric_label(metric, cfg), metric, ", ".join(scopes), unit, "",
                     METRIC_DEFINITIONS[metric], _metric_in_force(metric, cfg, period), ""))
    if forecast:
        window = f"deals closing {period.start.isoformat()} to {period.full_end.isoformat()} ({period.label})"
        stages = ", ".join(f"{s.name} {s.forecast_category}" for s in cfg.pipeline.stages if s.forecast_category)
        for metric in FORECAST_METRICS:
            in_force = window + (f"; stage categories: {stages}" if stages and metric in SUM_OF else "")
            rows.append(("Metric", metric_label(metric, cfg), metric, "team, owner", "currency", "",
                         METRIC_DEFINITIONS[metric], in_force, ""))
    for rule, check, scope, severity, when, in_force in check_definitions(cfg):
        rows.append(("Flag", f"{MISTAKES[rule]}: {check_label(check)}", f"{rule} {check}", scope, "", severity, when,
                     in_force, ADVICE[rule]))
    for s in cfg.pipeline.stages:
        rows.append(("Stage", s.name, s.name, "", "", "", f"status {s.status}",
                     "; ".join(x for x in (f"probability {s.probability:g}" if s.probability is not None else "",
                                           f"max {s.max_days} days in stage" if s.max_days is not None else "") if x),
                     ""))
    return pd.DataFrame(rows, columns=DEFINITION_COLUMNS).astype(object)


def definitions_sheet(cfg: AppConfig, period: Period, previous: Period, *, calendar: Calendar | None = None,
                      provenance: Sequence[tuple[str, str]] = (), forecast: bool = False) -> SheetData:
    frame = definitions_frame(cfg, period, previous, calendar=calendar, provenance=provenance, forecast=forecast)
    return SheetData(DEFINITIONS_SHEET, frame, {c: "text" for c in DEFINITION_COLUMNS},
                     widths={"name": 40, "scope": 14, "definition": 64, "in_force": 40, "remedy": 48},
                     wrap={"name", "scope", "definition", "in_force", "remedy"},
                     notes=["Every metric and flag with its formula in words and the thresholds in force this run; "
                            "the full contract is docs/metrics.md."])
