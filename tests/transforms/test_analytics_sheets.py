"""The sheets, summary and snapshot record that build_analytics hands to the writer and the store."""

from __future__ import annotations

import pandas as pd

from config.snapshot_types import SNAPSHOT_DEAL_COLUMNS
from config.workbook import SHEET_ORDER
from tests.analytics_support import make_cfg, make_history, run
from transforms.analytics import (
    FLAGS_BY_MISTAKE_SHEET,
    OPPORTUNITY_COLUMNS,
    WON_BY_MONTH_SHEET,
    build_analytics,
)
from transforms.canonical import empty_opportunities
from transforms.metrics import TEAM_METRICS

ROWS = [
    dict(opportunity_id="a", owner="ann", product="P", stage="Proposal", amount=1000, created_date="2026-05-01",
         close_date="2026-05-02"),
    dict(opportunity_id="w", owner="bob", product="Q", stage="Won", amount=500, created_date="2026-01-01",
         close_date="2026-03-15", account_id="X"),
    dict(opportunity_id="v", owner="bob", product="Q", stage="Won", amount=700, created_date="2026-04-01",
         close_date="2026-05-15", account_id="Y"),
]


def test_sheet_list_order_and_formats() -> None:
    a = run(ROWS, "2026-06-15", make_cfg(targets={"product_mix": {"P": 0.5, "Q": 0.5}}))
    names = [s.name for s in a.sheets]
    assert names == ["Actions", "Flags", "Metrics", "Funnel", "Owners", "Products", "Trends", "Changes", "Movement",
                     "Targets", "Definitions", WON_BY_MONTH_SHEET, FLAGS_BY_MISTAKE_SHEET]
    assert [n for n in names if n in SHEET_ORDER] == [n for n in SHEET_ORDER if n in names]
    by = {s.name: s for s in a.sheets}
    for s in a.sheets:
        assert set(s.formats) <= set(s.frame.columns), s.name
        assert all(len(n) <= 31 for n in [s.name])
    assert by["Flags"].highlight == "severity"
    assert by["Funnel"].formats["conversion_rate"] == "ratio"
    assert by["Trends"].formats["revenue_growth_pct"] == "pct"
    assert by["Trends"].formats["open_value"] == "currency_whole" and by["Trends"].formats["as_of"] == "date"
    assert by["Changes"].formats["old_close_date"] == "date"
    assert list(a.opportunities.columns) == OPPORTUNITY_COLUMNS
    products = by["Products"].frame.set_index("product")
    assert products.loc["P", ["open_deals", "open_share", "target_share"]].tolist() == [1, 1.0, 0.5]
    assert products.loc["Q", ["won_deals", "won_share"]].tolist() == [1, 1.0]
    won = by[WON_BY_MONTH_SHEET].frame
    assert won["month"].tolist()[-4:] == ["2026-03", "2026-04", "2026-05", "2026-06"]
    assert won["won_value"].tolist()[-4:] == [500.0, 0.0, 700.0, 0.0]
    assert won["label"].tolist()[-2:] == ["May 2026", "Jun 2026 (to date)"]  # the current month is partial


def test_summary_kpis_previous_period_and_charts() -> None:
    a = run(ROWS, "2026-06-15")
    kpis = a.summary.kpis.set_index("metric")
    assert list(kpis.index) == list(TEAM_METRICS)
    assert list(a.summary.kpis.columns) == ["metric", "label", "value", "previous", "change", "previous_full", "unit",
                                            "better"]
    # previous = 2026-Q1 to the same day (day 76: 2026-03-17): w won 500 on 03-15; previous_full the whole Q1
    assert kpis.loc["won_value", ["value", "previous", "change", "previous_full"]].tolist() == [700.0, 500.0, 200.0, 500.0]
    assert kpis.loc["open_deals", ["value", "previous"]].tolist() == [1.0, 0.0]  # a, v did not exist on 03-17
    assert kpis.loc["lost_value", "better"] == -1 and kpis.loc["won_value", "better"] == 1
    assert kpis.loc["sales_velocity_per_day", "label"] == "Sales velocity ($/day)"
    sheets = {s.name: s.frame for s in a.sheets}
    for chart in a.summary.charts:
        frame = sheets[chart.sheet]
        assert chart.category in frame.columns
        assert set(chart.values) <= set(frame.columns)
    counts = a.summary.flag_counts
    assert list(counts.columns) == ["rule", "check", "severity", "count"]
    assert counts["count"].sum() == len(a.flags)
    by_rule = sheets[FLAGS_BY_MISTAKE_SHEET].set_index("rule")
    assert by_rule["total"].sum() == len(a.flags)
    assert by_rule.loc["M4", "high"] == 1  # a is past due


def test_snapshot_record() -> None:
    a = run(ROWS, "2026-06-15")
    assert a.snapshot.as_of.isoformat() == "2026-06-15"
    assert list(a.snapshot.deals.columns) == list(SNAPSHOT_DEAL_COLUMNS)
    assert a.snapshot.deals["deal_id"].tolist() == ["crm:a"]
    assert set(a.snapshot.metrics) == set(TEAM_METRICS)
    assert a.snapshot.metrics["cac"] is None  # empty stays None, never 0


def test_no_deals_at_all() -> None:
    cfg = make_cfg()
    a = build_analytics(empty_opportunities(), make_history([]), cfg, pd.Timestamp("2026-06-15").date())
    assert a.opportunities.empty and a.excluded_future == 0
    team = a.metrics[a.metrics["scope"] == "team"].set_index("metric")["value"]
    assert team["open_deals"] == 0 and team["open_value"] == 0
    assert pd.isna(team["win_rate"])
    assert set(a.flags["check"]) == {"low_lead_gen", "metric_unavailable"}  # 0 new pipeline per day; no spend
    unavailable = a.flags[a.flags["check"] == "metric_unavailable"]["message"].tolist()
    assert unavailable == ["cac is empty because no spend for 2026-Q2: add inputs.spend['2026-Q2']."]
    assert a.snapshot.deals.empty


def test_inputs_are_not_modified_and_empty_values_have_notes() -> None:
    from tests.analytics_support import make_opps

    opps = make_opps(ROWS)
    hist = make_history([("a", "Contact", "2026-05-01")])
    before_o, before_h = opps.copy(deep=True), hist.copy(deep=True)
    a = build_analytics(opps, hist, make_cfg(), pd.Timestamp("2026-06-15").date())
    pd.testing.assert_frame_equal(opps, before_o)
    pd.testing.assert_frame_equal(hist, before_h)
    metrics_sheet = next(s for s in a.sheets if s.name == "Metrics").frame
    empty = metrics_sheet[metrics_sheet["value"].isna()]
    assert len(empty) > 0 and (empty["note"] != "").all()
    assert (metrics_sheet.loc[metrics_sheet["value"].notna(), "note"] == "").all()
    lg = metrics_sheet[(metrics_sheet["metric"] == "lead_gen_per_day") & (metrics_sheet["scope"] == "team")].iloc[0]
    assert (lg["period_start"], lg["period_end"]) == (pd.Timestamp("2026-05-17"), pd.Timestamp("2026-06-15"))
    # a: open, no stage_entered_date, its history lacks its current stage -> estimated (w, v are closed)
    assert "1 open deal without a stage entry date: days in stage count from creation (marked estimated on " \
           "Opportunities)." in a.summary.lines
