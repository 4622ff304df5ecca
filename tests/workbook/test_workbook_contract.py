"""The workbook a manager reads (issue 18): sheet order from config.workbook, formats by unit, the
Summary's like-for-like comparison in words and its better / worse colours, the Definitions
sheet, print settings on every sheet."""

from __future__ import annotations

from datetime import date

import openpyxl
import pandas as pd
import pytest

from config.workbook import SHEET_ORDER, SheetData, order_sheets, sheet_rank
from connectors.workbook.xlsx_writer import write_workbook
from tests.analytics_support import make_cfg, run
from transforms.flags import DEAL_CHECKS
from transforms.labels import CHECKS
from transforms.metrics import CATALOGUE
from transforms.periods import like_for_like, reporting_period

# As of 2026-12-06: Q4, day 67 -> like for like is Q3 to 2026-09-05 (docs/metrics.md "Comparisons").
AS_OF = "2026-12-06"
ROWS = [
    dict(opportunity_id="s3", owner="ann", stage="Won", amount=1_500, created_date="2026-08-01", close_date="2026-09-03",
         account_id="X"),
    dict(opportunity_id="s20", owner="ann", stage="Won", amount=40_000, created_date="2026-08-01",
         close_date="2026-09-20", account_id="Y"),
    dict(opportunity_id="n10", owner="bob", stage="Won", amount=2_500, created_date="2026-10-01", close_date="2026-11-10",
         account_id="Z"),
    dict(opportunity_id="l1", owner="bob", stage="Lost", amount=900, created_date="2026-08-01", close_date="2026-08-30"),
    dict(opportunity_id="o1", owner="ann", stage="Proposal", amount=12_000, created_date="2026-09-10",
         close_date="2027-01-15", stage_entered_date="2026-11-30"),
]
UNIT_FORMATS = {"count": "#,##0", "ratio": "0.0%", "pct": '0.0"%"', "days": "#,##0.0"}


@pytest.fixture(scope="module")
def analytics():
    return run(ROWS, AS_OF, make_cfg(targets={"max_inactive_days": 45}, inputs={"spend": {"2026-Q4": 900}}))


@pytest.fixture(scope="module")
def book(analytics, tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "book.xlsx"
    write_workbook(path, sheets=list(reversed(analytics.sheets)), summary=analytics.summary)  # any order in
    return openpyxl.load_workbook(path)


def test_like_for_like_is_the_previous_period_to_the_same_day(analytics) -> None:
    period = reporting_period(date(2026, 12, 6), "quarter")
    prev = like_for_like(period)
    assert (prev.label, prev.start, prev.end) == ("2026-Q3", date(2026, 7, 1), date(2026, 9, 5))
    assert like_for_like(reporting_period(date(2026, 9, 30))).end == date(2026, 6, 30)  # clamped to Q2's last day
    assert like_for_like(reporting_period(date(2026, 3, 31), "month")).end == date(2026, 2, 28)
    k = analytics.summary.kpis.set_index("metric")
    # won: this period n10; Q3 to 09-05 only s3; the whole of Q3 s3 + s20
    assert k.loc["won_value", ["value", "previous", "previous_full"]].tolist() == [2_500.0, 1_500.0, 41_500.0]
    assert k.loc["win_rate", ["previous", "previous_full"]].tolist() == [0.5, 2 / 3]
    # open on 09-05: s20 (won on 09-20; o1 did not exist yet); on 09-30: o1
    assert k.loc["open_value", ["value", "previous", "previous_full"]].tolist() == [12_000.0, 40_000.0, 12_000.0]
    assert ("Compared with 2026-Q3 to the same day: 1 July 2026 to 5 September 2026 (the last column is all of "
            "2026-Q3, to 30 September 2026).") in analytics.summary.lines
    assert analytics.summary.lines[0] == "2026-Q4 to date: 1 October 2026 to 6 December 2026, day 67 of 92 of the quarter."
    kpi = analytics.summary.tables[0]
    assert list(kpi.frame.columns) == ["Measure", "2026-Q4 to 6 Dec", "2026-Q3 to 5 Sep", "Change", "All of 2026-Q3",
                                       "Note"]


def test_sheets_follow_sheet_order(book) -> None:
    names = book.sheetnames
    assert names == [n for n in SHEET_ORDER if n in names]
    assert names[:3] == ["Summary", "Actions", "Flags"]
    frames = [SheetData(n, pd.DataFrame({"x": [1]})) for n in ("About", "CRM raw", "Opportunities (2)", "Definitions",
                                                                "Opportunities", "Actions", "Partner raw")]
    assert [s.name for s in order_sheets(frames)] == ["Actions", "Opportunities (2)", "Opportunities", "CRM raw",
                                                      "Partner raw", "Definitions", "About"]
    assert sheet_rank("Opportunities (2)") == sheet_rank("Opportunities")


def test_every_sheet_prints_landscape_one_page_wide_with_its_header(book) -> None:
    for ws in book.worksheets:
        assert ws.page_setup.orientation == "landscape", ws.title
        assert ws.sheet_properties.pageSetUpPr.fitToPage and ws.page_setup.fitToHeight == 0, ws.title
        assert ws.print_title_rows == "$1:$1", ws.title


def test_metrics_values_formatted_by_unit(book) -> None:
    ws = book["Metrics"]
    header = [c.value for c in ws[1]]
    v, u = header.index("value"), header.index("unit")
    seen = set()
    for row in ws.iter_rows(min_row=2):
        value, unit = row[v].value, row[u].value
        if value is None:
            continue
        if unit in ("currency", "currency_per_day"):
            want = '"$"#,##0' if abs(value) >= 1000 else '"$"#,##0.00'
        else:
            want = UNIT_FORMATS[unit]
        assert row[v].number_format == want, (row[0].value, row[1].value, unit, value)
        seen.add((unit, want))
    assert {"count", "ratio", "days", "currency", "currency_per_day"} <= {x for x, _ in seen}
    assert ("currency", '"$"#,##0') in seen and ("currency", '"$"#,##0.00') in seen


def test_flag_values_formatted_by_check(book) -> None:
    ws = book["Flags"]
    header = [c.value for c in ws[1]]
    check, value, thr = header.index("check"), header.index("value"), header.index("threshold")
    got = {r[check].value: (r[value].number_format, r[thr].number_format) for r in ws.iter_rows(min_row=2)
           if r[value].value is not None}
    assert got["stage_share"] == ("0.0%", "0.0%")
    assert got["low_lead_gen"] == ('"$"#,##0.00', '"$"#,##0.00')  # 72 a day against 250: under 1,000, with cents


def test_summary_kpis_formats_and_direction_colours(book) -> None:
    ws = book["Summary"]
    rows = {r[0].value: r for r in ws.iter_rows() if isinstance(r[0].value, str)}
    assert rows["Open pipeline"][1].number_format == '"$"#,##0' and rows["Open pipeline"][1].value == 12_000
    assert rows["Won revenue"][1].number_format == '"$"#,##0' and rows["Won revenue"][2].number_format == '"$"#,##0'
    assert rows["Win rate"][1].number_format == "0.0%"
    assert rows["Win rate"][3].number_format == '+0.0" pts";-0.0" pts";0.0" pts"' and rows["Win rate"][3].value == 50.0
    assert rows["Open deals"][1].number_format == "#,##0"
    assert rows["Avg sales cycle (days)"][1].number_format == "#,##0.0"
    assert rows["Sales velocity ($/day)"][0].value == "Sales velocity ($/day)"
    colours = {}
    for cf in ws.conditional_formatting:
        for rule in cf.rules:
            colours[(str(cf.sqref), rule.operator)] = rule.dxf.font.color.rgb
    good, bad = "FF006100", "FF9C0006"
    won = rows["Won revenue"][3].coordinate
    lost = rows["Lost value"][3].coordinate
    cycle = rows["Avg sales cycle (days)"][3].coordinate
    assert (colours[(won, "greaterThan")], colours[(won, "lessThan")]) == (good, bad)
    assert (colours[(lost, "greaterThan")], colours[(lost, "lessThan")]) == (bad, good)  # more lost value is worse
    assert colours[(cycle, "greaterThan")] == bad  # a longer cycle is worse


def test_summary_speaks_words(book, analytics) -> None:
    ws = book["Summary"]
    text = " ".join(str(c.value) for row in ws.iter_rows() for c in row if isinstance(c.value, str))
    for code in ("sales_velocity_per_day", "currency_per_day", "M4 past_due", "after as_of are not shown", "_days"):
        assert code not in text
    mistakes = next(t for t in analytics.summary.tables if t.title == "The eight pipeline mistakes").frame
    assert mistakes["Mistake"].tolist() == ["M1 Not prospecting", "M2 Unqualified leads kept", "M3 Pipeline out of balance",
                                            "M4 Clinging to dead deals", "M5 Not tracking data",
                                            "M6 Ignoring existing customers", "M7 Wrong metrics",
                                            "M8 Product mix out of balance"]
    assert int(mistakes["Flags"].sum()) == len(analytics.flags)


def test_charts_one_measure_or_a_line_over_bars(analytics) -> None:
    charts = {c.title.split(" (")[0]: c for c in analytics.summary.charts}
    stage = charts["Open pipeline by stage"]
    assert stage.values == ["open_value"] and stage.lines == ["open_deals"] and stage.secondary == ["open_deals"]
    assert stage.y_title == "Open value ($)" and stage.y2_title == "Open deals" and stage.y_format.startswith("[>=1000000]")
    won = charts["Won revenue by month"]
    assert won.title == "Won revenue by month (December to date)" and won.muted_last and won.category == "label"
    flags = charts["Flags by mistake"]
    assert flags.category == "mistake" and flags.stacked
    months = next(s for s in analytics.sheets if s.name == "Won by month").frame
    assert months["label"].iloc[-1] == "Dec 2026 (to date)"


def test_definitions_name_every_metric_and_check_with_thresholds_in_force(analytics) -> None:
    d = next(s for s in analytics.sheets if s.name == "Definitions").frame
    metrics = d[d["section"] == "Metric"]
    assert metrics["id"].tolist() == [m for m, _, _ in CATALOGUE]
    assert (metrics["definition"].str.len() > 10).all()
    flag_ids = set(d.loc[d["section"] == "Flag", "id"])
    assert {f"{rule} {check}" for check, (rule, _, _) in CHECKS.items()} == flag_ids
    assert {f"{r} {c}" for c, r, _ in DEAL_CHECKS} <= flag_ids
    in_force = dict(zip(d["id"], d["in_force"], strict=True))
    assert in_force["M4 no_activity"] == "45 days (targets.max_inactive_days)"  # this config's threshold
    assert in_force["M3 stalled"].startswith("days per stage: Lead generation 14, Qualification 21")
    assert in_force["cac"] == "spend 2026-Q4: $900 (inputs.spend)"
    assert in_force["previous"] == "2026-Q3: 2026-07-01 to 2026-09-05"
