"""The one catalogue of words the workbook shows: metric labels, mistake names, check names,
their definitions (formulas in words, as shared docs/metrics.md gives them) and the thresholds
in force (from config).

Every sheet that names a metric, a mistake or a check for a person takes the words from here.
"""

from __future__ import annotations

from config.models import AppConfig
from config.workbook import ColumnFormat

CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "KRW": "₩"}

MISTAKES: dict[str, str] = {
    "M1": "Not prospecting", "M2": "Unqualified leads kept", "M3": "Pipeline out of balance",
    "M4": "Clinging to dead deals", "M5": "Not tracking data", "M6": "Ignoring existing customers",
    "M7": "Wrong metrics", "M8": "Product mix out of balance",
}

# metric -> (label, +1 when higher is better / -1 when lower is better)
METRICS: dict[str, tuple[str, int]] = {
    "open_deals": ("Open deals", 1),
    "open_value": ("Open pipeline", 1),
    "weighted_value": ("Weighted pipeline", 1),
    "new_deals": ("New deals", 1),
    "new_value": ("New pipeline", 1),
    "won_deals": ("Deals won", 1),
    "won_value": ("Won revenue", 1),
    "lost_deals": ("Deals lost", -1),
    "lost_value": ("Lost value", -1),
    "avg_deal_size": ("Avg deal size (won)", 1),
    "win_rate": ("Win rate", 1),
    "avg_sales_cycle_days": ("Avg sales cycle (days)", -1),
    "sales_velocity_per_day": ("Sales velocity ({sym}/day)", 1),
    "lead_gen_per_day": ("New pipeline per day ({sym}/day)", 1),
    "revenue_growth_pct": ("Revenue growth (last full month)", 1),
    "cac": ("Customer acquisition cost (CAC)", -1),
    "clv": ("Customer lifetime value (CLV)", 1),
    "stage_conversion_rate": ("Stage conversion rate", 1),
    "avg_days_in_stage": ("Avg days in stage", -1),
    "commit_value": ("Commit", 1),
    "best_case_value": ("Best case", 1),
    "pipeline_value": ("Pipeline (not yet commit or best case)", 1),
    "forecast_commit": ("Forecast: won + commit", 1),
    "forecast_best_case": ("Forecast: won + commit + best case", 1),
    "slipped_deals": ("Deals slipped (close date pushed)", -1),
    "slipped_value": ("Slipped pipeline", -1),
    "quota": ("Quota", 0),
    "attainment": ("Quota attainment", 1),
    "gap_to_quota": ("Gap to quota", -1),
    "period_pipeline_value": ("Pipeline closing this period", 1),
    "coverage": ("Pipeline coverage", 1),
    "weighted_coverage": ("Weighted pipeline coverage", 1),
}

METRIC_DEFINITIONS: dict[str, str] = {
    "open_deals": "Deals open at as_of.",
    "open_value": "Sum of amount over the deals open at as_of.",
    "weighted_value": "Sum of amount x stage probability over the deals open at as_of.",
    "new_deals": "Deals with created_date in the period (first day to as_of).",
    "new_value": "Sum of amount of the deals created in the period.",
    "won_deals": "Deals won with close_date in the period.",
    "won_value": "Sum of amount of the deals won in the period.",
    "lost_deals": "Deals lost with close_date in the period.",
    "lost_value": "Sum of amount of the deals lost in the period.",
    "avg_deal_size": "won_value / won_deals (won deals with an amount).",
    "win_rate": "won_deals / (won_deals + lost_deals) over the period's closed deals.",
    "avg_sales_cycle_days": "Mean of close_date - created_date over the deals won in the period.",
    "sales_velocity_per_day": "open_deals x avg_deal_size x win_rate / avg_sales_cycle_days.",
    "lead_gen_per_day": "Sum of amount of the deals created in the last N days (up to as_of), divided by N.",
    "revenue_growth_pct": "(won_value(M) - won_value(M-1)) / won_value(M-1) x 100, M = the latest complete "
                          "month of the fiscal calendar on or before as_of.",
    "cac": "spend(period) / new customers (distinct account_id with a deal of type new won in the period).",
    "clv": "Mean, over accounts with a won deal on or before as_of, of their total won amount.",
    "stage_conversion_rate": "Per open stage: deals that reached a later stage (won counts as every stage) / "
                             "deals that reached the stage.",
    "avg_days_in_stage": "Per open stage: mean days_in_stage (as_of - stage entry) of the deals open in it.",
    "commit_value": "Sum of amount of the open deals in forecast category commit with close_date in the whole period.",
    "best_case_value": "Sum of amount of the open deals in forecast category best_case with close_date in the whole "
                       "period.",
    "pipeline_value": "Sum of amount of the open deals in forecast category pipeline with close_date in the whole "
                      "period (omitted deals are in none).",
    "forecast_commit": "won_value + commit_value.",
    "forecast_best_case": "forecast_commit + best_case_value.",
    "slipped_deals": "Deals open at the previous snapshot (D0) and at as_of whose close_date at as_of is later than "
                     "it was at D0 (a push since the previous snapshot).",
    "slipped_value": "Sum of amount at as_of of the slipped deals.",
    "quota": "The period's quota from config (targets.quota, targets.quota_by_owner); editable on Targets.",
    "attainment": "won_value / quota.",
    "gap_to_quota": "max(quota - won_value, 0).",
    "period_pipeline_value": "Sum of amount of the open deals whose close_date is in the whole period (first to "
                             "last day).",
    "coverage": "period_pipeline_value / gap_to_quota (empty when the gap is 0 or there is no quota).",
    "weighted_coverage": "Sum of amount x stage probability of the open deals closing in the period / gap_to_quota.",
}

# check -> (rule, words for a person, Flags value format)
CHECKS: dict[str, tuple[str, str, ColumnFormat]] = {
    "low_lead_gen": ("M1", "Too little new pipeline", "currency"),
    "low_coverage": ("M1", "Too little pipeline for the quota", "number"),
    "unqualified": ("M2", "Not qualified (BANT)", "int"),
    "stalled": ("M3", "Stalled in its stage", "int"),
    "stage_share": ("M3", "Too many deals in one stage", "ratio"),
    "past_due": ("M4", "Past its close date", "int"),
    "aged": ("M4", "Older than usual", "int"),
    "overdue_follow_up": ("M4", "Follow-up overdue", "int"),
    "no_activity": ("M4", "No recent activity", "int"),
    "pushed_repeatedly": ("M4", "Close date pushed repeatedly", "int"),
    "missing_fields": ("M5", "Missing amount, close date or owner", "int"),
    "missing_share": ("M5", "Too many deals with missing fields", "ratio"),
    "source_stale": ("M5", "Source not refreshed this run", "number"),
    "low_existing_share": ("M6", "Too little from existing customers", "ratio"),
    "metric_unavailable": ("M7", "A metric cannot be computed", "number"),
    "volume_over_value": ("M7", "More deals, less value", "int"),
    "open_mix": ("M8", "Open deals off the product mix", "ratio"),
    "won_mix": ("M8", "Won deals off the product mix", "ratio"),
}
THRESHOLD_FORMATS: dict[str, ColumnFormat] = {"aged": "days"}  # else the value's format


def currency_symbol(code: str) -> str:
    return CURRENCY_SYMBOLS.get(code.upper(), code.upper() + " ")


def metric_label(metric: str, cfg: AppConfig | None = None) -> str:
    """The words for a metric id (`win_rate` -> 'Win rate'); an unknown id is returned as it is."""
    if metric not in METRICS:
        return metric
    sym = currency_symbol(cfg.inputs.currency).strip() if cfg is not None else "$"
    window = cfg.targets.prospecting_window_days if cfg is not None else 30
    return METRICS[metric][0].format(sym=sym, window=window)


def better(metric: str) -> int:
    """+1 when a higher value of `metric` is better, -1 when lower is better, 0 unknown."""
    return METRICS.get(metric, ("", 0))[1]


def check_label(check: str) -> str:
    return CHECKS[check][1] if check in CHECKS else check


def check_format(check: str) -> ColumnFormat:
    return CHECKS[check][2] if check in CHECKS else "number"


def _pct(x: float) -> str:
    return f"{x:.0%}" if abs(x * 100 - round(x * 100)) < 1e-9 else f"{x:.1%}"


def check_definitions(cfg: AppConfig) -> list[tuple[str, str, str, str, str, str]]:
    """(rule, check, scope, severity, fires when (in words), threshold in force) of every check."""
    t = cfg.targets
    p = cfg.pipeline
    sym = currency_symbol(cfg.inputs.currency).strip()
    limits = ", ".join(f"{s.name} {s.max_days}" for s in p.open_stages if s.max_days is not None) or "none set"
    owner_target = (f"{sym}{t.new_pipeline_per_day_per_owner:,.0f} a day" if t.new_pipeline_per_day_per_owner is not None
                    else "off (targets.new_pipeline_per_day_per_owner not set)")
    mix = (", ".join(f"{k} {_pct(v)}" for k, v in t.product_mix.items()) + f"; tolerance {_pct(t.product_mix_tolerance)}"
           if t.product_mix else "off (targets.product_mix not set)")
    w = t.prospecting_window_days
    return [
        ("M1", "low_lead_gen", "team", "high",
         f"New pipeline per day over the last {w} days (lead_gen_per_day) is below the target.",
         f"{sym}{t.new_pipeline_per_day:,.0f} a day (targets.new_pipeline_per_day)"),
        ("M1", "low_lead_gen", "owner", "medium",
         f"An active owner's own new pipeline per day over the last {w} days is below the owner target "
         "(active: owns a deal open at as_of or closed in the period).", owner_target),
        ("M1", "low_coverage", "team, owner", "high",
         "Pipeline coverage (open pipeline closing in the period / gap to quota) is below the minimum while more "
         "than the grace days of the period are left (owners only with targets.quota_by_owner).",
         f"{t.min_coverage:g}x with more than {t.coverage_grace_days} days left (targets.min_coverage, "
         "targets.coverage_grace_days)"),
        ("M2", "unqualified", "deal", "medium",
         f"An open deal in a stage after {p.qualification_stage} has a BANT score (budget, authority, need, "
         "timeline: how many are true) below the minimum.", f"score {p.qualification.min_score} of 4"),
        ("M3", "stalled", "deal", "medium",
         "An open deal has been in its stage longer than the stage's limit (days_in_stage > max_days).",
         f"days per stage: {limits}"),
        ("M3", "stage_share", "stage", "medium",
         "One open stage holds more than the maximum share of the open deals (by count).",
         f"{_pct(t.max_stage_share)} (targets.max_stage_share)"),
        ("M4", "past_due", "deal", "high", "An open deal's close date is before as_of.", "close date < as_of"),
        ("M4", "aged", "deal", "medium",
         "An open deal is older (as_of - created_date) than the factor x the average sales cycle of the period "
         "(skipped when that metric is empty).", f"{t.max_age_factor:g} x avg_sales_cycle_days (targets.max_age_factor)"),
        ("M4", "overdue_follow_up", "deal", "medium", "An open deal's next_step_date is before as_of (a promise not kept).",
         "next step date < as_of"),
        ("M4", "no_activity", "deal", "low", "An open deal has had no activity (as_of - last_activity_date) for longer "
         "than the limit.", f"{t.max_inactive_days} days (targets.max_inactive_days)"),
        ("M4", "pushed_repeatedly", "deal", "medium", "An open deal's close date has been pushed to a later date at "
         "least this often (push_count: pushes seen between stored snapshots and in the source's field history).",
         f"{t.max_pushes} pushes (targets.max_pushes)"),
        ("M5", "missing_fields", "deal", "medium", "An open deal misses its amount, close date or owner.",
         "any of the three missing"),
        ("M5", "missing_share", "team", "high", "The share of open deals with missing fields is above the maximum.",
         f"{_pct(t.max_missing_share)} (targets.max_missing_share)"),
        ("M5", "source_stale", "team", "high", "A configured source failed or returned no rows this run, so its data "
         "is from an earlier run.", "any source"),
        ("M6", "low_existing_share", "team", "medium", "Existing-customer deals (deal_type existing) hold less than "
         "the minimum share of the open value.", f"{_pct(t.min_existing_share)} (targets.min_existing_share)"),
        ("M7", "metric_unavailable", "team", "low", "A catalogue metric is empty because an input is missing; the "
         "message names the input to add.", "any metric"),
        ("M7", "volume_over_value", "team", "medium", "Open deals rose against the previous snapshot while the win "
         "rate or the sales velocity fell.", "previous snapshot"),
        ("M8", "open_mix", "product", "medium", "A product's share of the open deals (by count) differs from its "
         "target by more than the tolerance.", mix),
        ("M8", "won_mix", "product", "medium", "A product's share of the deals won in the period (by count) differs "
         "from its target by more than the tolerance.", mix),
    ]
