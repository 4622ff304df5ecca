"""The Definitions sheet: every metric and flag of the workbook with its formula in words and the
thresholds in force for this run (from config), so a reader can recompute any number."""

from __future__ import annotations

import pandas as pd

from config.models import AppConfig
from config.workbook import SheetData
from transforms.flags import ADVICE
from transforms.labels import (
    METRIC_DEFINITIONS,
    MISTAKES,
    check_definitions,
    check_label,
    currency_symbol,
    metric_label,
)
from transforms.metrics import CATALOGUE
from transforms.periods import Period

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


def definitions_frame(cfg: AppConfig, period: Period, previous: Period) -> pd.DataFrame:
    rows: list[tuple[str, ...]] = [
        ("Period", "Reporting period", "period", "", "", "",
         f"The {cfg.period} containing as_of, from its first day to as_of (both counted). Fiscal years start in month "
         f"{cfg.fiscal_year_start_month}.", f"{period.label}: {period.start.isoformat()} to {period.end.isoformat()}", ""),
        ("Period", "Previous, like for like", "previous", "", "", "",
         "The previous period to the same day: its first day plus as many days as this period has run (clamped to its "
         "last day). Open pipeline, weighted pipeline and CLV are their values on that day.",
         f"{previous.label}: {previous.start.isoformat()} to {previous.end.isoformat()}", ""),
        ("Period", "Previous, whole period", "previous_full", "", "", "",
         "The whole previous period, as of its last day.",
         f"{previous.label}: {previous.start.isoformat()} to {previous.full_end.isoformat()}", ""),
    ]
    for metric, unit, scopes in CATALOGUE:
        rows.append(("Metric", metric_label(metric, cfg), metric, ", ".join(scopes), unit, "",
                     METRIC_DEFINITIONS[metric], _metric_in_force(metric, cfg, period), ""))
    for rule, check, scope, severity, when, in_force in check_definitions(cfg):
        rows.append(("Flag", f"{MISTAKES[rule]}: {check_label(check)}", f"{rule} {check}", scope, "", severity, when,
                     in_force, ADVICE[rule]))
    for s in cfg.pipeline.stages:
        rows.append(("Stage", s.name, s.name, "", "", "", f"status {s.status}",
                     "; ".join(x for x in (f"probability {s.probability:g}" if s.probability is not None else "",
                                           f"max {s.max_days} days in stage" if s.max_days is not None else "") if x),
                     ""))
    return pd.DataFrame(rows, columns=DEFINITION_COLUMNS).astype(object)


def definitions_sheet(cfg: AppConfig, period: Period, previous: Period) -> SheetData:
    frame = definitions_frame(cfg, period, previous)
    return SheetData(DEFINITIONS_SHEET, frame, {c: "text" for c in DEFINITION_COLUMNS},
                     widths={"name": 40, "scope": 14, "definition": 64, "in_force": 40, "remedy": 48},
                     wrap={"name", "scope", "definition", "in_force", "remedy"},
                     notes=["Every metric and flag with its formula in words and the thresholds in force this run; "
                            "the full contract is docs/metrics.md."])
