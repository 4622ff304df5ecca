"""Week-based fiscal calendars (docs/metrics.md "Fiscal calendars"): a 4-4-5 year with a 53rd week,
by hand, and every period-based number taking its bounds and labels from the configured calendar."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from pydantic import ValidationError

from config.models import AppConfig
from config.models.finance import FiscalCalendarConfig
from flows.backfill import backfill_dates
from tests.analytics_support import make_cfg, make_opps
from transforms.analytics import WON_BY_MONTH_SHEET, build_analytics
from transforms.fiscal import WeekCalendar, calendar_for
from transforms.periods import (
    MonthCalendar,
    latest_complete_month,
    like_for_like,
    previous_period,
    reporting_period,
)

D = date.fromisoformat
# FY2027: 2026-02-01 (a Sunday) to 2027-01-30 (364 days); FY2028 has 53 weeks: 2027-01-31 to 2028-02-05.
CAL = WeekCalendar(FiscalCalendarConfig(pattern="4-4-5", year_start=D("2026-02-01"), week53_years=[2028]))


@pytest.mark.parametrize(("day", "kind", "start", "end", "label"), [
    # FY2027, a 52-week year: quarters of 13 weeks, months 4, 4 and 5 weeks
    ("2026-02-01", "year", "2026-02-01", "2027-01-30", "2027"),
    ("2026-02-01", "month", "2026-02-01", "2026-02-28", "2027-P01"),
    ("2026-03-28", "month", "2026-03-01", "2026-03-28", "2027-P02"),
    ("2026-03-29", "month", "2026-03-29", "2026-05-02", "2027-P03"),  # the 5-week month
    ("2026-05-02", "quarter", "2026-02-01", "2026-05-02", "2027-Q1"),
    ("2026-05-03", "quarter", "2026-05-03", "2026-08-01", "2027-Q2"),
    ("2026-06-15", "month", "2026-05-31", "2026-06-27", "2027-P05"),
    ("2027-01-30", "quarter", "2026-11-01", "2027-01-30", "2027-Q4"),
    # FY2028, the 53-week year: the extra week goes to P12 (6 weeks) and so to Q4 (14 weeks)
    ("2027-01-31", "year", "2027-01-31", "2028-02-05", "2028"),
    ("2027-10-31", "quarter", "2027-10-31", "2028-02-05", "2028-Q4"),
    ("2027-12-26", "month", "2027-12-26", "2028-02-05", "2028-P12"),
    ("2028-02-05", "month", "2027-12-26", "2028-02-05", "2028-P12"),
    ("2027-12-25", "month", "2027-11-28", "2027-12-25", "2028-P11"),
    # FY2029 starts the day after the 53rd week; FY2026 is counted back from year_start
    ("2028-02-06", "year", "2028-02-06", "2029-02-03", "2029"),
    ("2028-02-06", "month", "2028-02-06", "2028-03-04", "2029-P01"),
    ("2026-01-31", "year", "2025-02-02", "2026-01-31", "2026"),
    ("2026-01-31", "month", "2025-12-28", "2026-01-31", "2026-P12"),  # P12 is a 5-week month
])
def test_445_bounds_and_labels(day: str, kind: str, start: str, end: str, label: str) -> None:
    p = reporting_period(D(day), kind, CAL)  # type: ignore[arg-type]
    assert (p.start, p.full_end, p.label, p.end) == (D(start), D(end), label, D(day))


@pytest.mark.parametrize(("as_of", "kind", "label", "start", "end"), [
    ("2026-06-15", "quarter", "2027-Q1", "2026-02-01", "2026-03-16"),  # day 44 of 2027-Q2 -> day 44 of 2027-Q1
    ("2027-11-10", "quarter", "2028-Q3", "2027-08-01", "2027-08-11"),  # day 11 of the 14-week Q4
    ("2028-02-05", "quarter", "2028-Q3", "2027-08-01", "2027-10-30"),  # day 98 of Q4: clamped to Q3's 91st
    ("2026-04-10", "month", "2027-P02", "2026-03-01", "2026-03-13"),  # day 13 of the 5-week P03
    ("2026-05-02", "month", "2027-P02", "2026-03-01", "2026-03-28"),  # day 35 of P03: clamped to P02's 28th
])
def test_like_for_like_follows_the_week_calendar(as_of: str, kind: str, label: str, start: str, end: str) -> None:
    prev = like_for_like(reporting_period(D(as_of), kind, CAL), CAL)  # type: ignore[arg-type]
    assert (prev.label, prev.start, prev.end) == (label, D(start), D(end))


@pytest.mark.parametrize(("pattern", "p1", "p2", "p3"), [
    ("4-4-5", ("2026-02-01", "2026-02-28"), ("2026-03-01", "2026-03-28"), ("2026-03-29", "2026-05-02")),
    ("4-5-4", ("2026-02-01", "2026-02-28"), ("2026-03-01", "2026-04-04"), ("2026-04-05", "2026-05-02")),
    ("5-4-4", ("2026-02-01", "2026-03-07"), ("2026-03-08", "2026-04-04"), ("2026-04-05", "2026-05-02")),
])
def test_patterns_split_a_13_week_quarter(pattern: str, p1: tuple, p2: tuple, p3: tuple) -> None:
    cal = WeekCalendar(FiscalCalendarConfig(pattern=pattern, year_start=D("2026-02-01")))
    for n, (start, end) in enumerate((p1, p2, p3), start=1):
        assert cal.bounds("month", D(start)) == (D(start), D(end), f"2027-P{n:02d}")
        assert cal.bounds("month", D(end))[0] == D(start)


def test_previous_period_crosses_into_the_53_week_year() -> None:
    q1 = reporting_period(D("2028-03-01"), "quarter", CAL)
    assert q1.label == "2029-Q1"
    prev = previous_period(q1, CAL)
    assert (prev.start, prev.end, prev.label) == (D("2027-10-31"), D("2028-02-05"), "2028-Q4")
    assert (prev.full_end - prev.start).days + 1 == 98  # 14 weeks
    assert latest_complete_month(D("2028-02-05"), CAL) == (D("2027-12-26"), D("2028-02-05"))
    assert latest_complete_month(D("2028-02-04"), CAL) == (D("2027-11-28"), D("2027-12-25"))


@pytest.mark.parametrize(("every", "start", "end", "expected"), [
    ("quarter", "2027-06-01", "2028-06-01", ["2027-07-31", "2027-10-30", "2028-02-05", "2028-05-06"]),
    ("month", "2027-11-01", "2028-03-10", ["2027-11-27", "2027-12-25", "2028-02-05", "2028-03-04"]),
    ("week", "2028-01-25", "2028-02-12", ["2028-01-29", "2028-02-05", "2028-02-12"]),  # fiscal weeks end Saturday
])
def test_backfill_dates_follow_the_calendar(every: str, start: str, end: str, expected: list[str]) -> None:
    assert backfill_dates(D(start), D(end), every, CAL) == [D(x) for x in expected]


def test_month_calendar_is_the_default_and_an_int_stands_for_it() -> None:
    cfg = make_cfg(fiscal_year_start_month=4)
    assert calendar_for(cfg) == MonthCalendar(4)
    assert reporting_period(D("2026-05-10"), "quarter", 4) == reporting_period(D("2026-05-10"), "quarter", MonthCalendar(4))
    assert backfill_dates(D("2026-06-01"), D("2026-06-30"), "week") == [D("2026-06-07"), D("2026-06-14"),
                                                                         D("2026-06-21"), D("2026-06-28")]


@pytest.mark.parametrize(("calendar", "message"), [
    ({"pattern": "4-4-5", "year_start": "2026-02-01", "week53_years": [3000]}, "is not a year label"),
    # a year ending on Jan 1 and the next (52 weeks) on Dec 31 of the same year: both would be 2027
    ({"pattern": "4-4-5", "year_start": "2026-01-03"}, "both be labelled 2027"),
])
def test_calendar_config_problems(calendar: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_cfg(fiscal_calendar=calendar)


def test_fiscal_calendar_and_start_month_conflict() -> None:
    with pytest.raises(ValidationError, match="remove fiscal_year_start_month"):
        make_cfg(fiscal_calendar={"year_start": "2026-02-01"}, fiscal_year_start_month=2)


def _cfg(**kw) -> AppConfig:
    return make_cfg(fiscal_calendar={"pattern": "4-4-5", "year_start": "2026-02-01", "week53_years": [2028]},
                    **kw)


def test_every_period_number_uses_the_calendar() -> None:
    """as_of 2026-06-15 is in 2027-Q2 (2026-05-03..2026-08-01) and month 2027-P05 (2026-05-31..06-27)."""
    cfg = _cfg(period="quarter", inputs={"spend": {"2027-Q2": 900.0, "2026-Q2": 1.0}})
    opps = make_opps([
        # won in 2027-Q2 (from 2026-05-03): counted; won on 2026-05-02 is 2027-Q1 (the previous quarter)
        {"stage": "Won", "amount": 1000, "created_date": "2026-04-01", "close_date": "2026-05-03", "account_id": "A"},
        {"stage": "Won", "amount": 2000, "created_date": "2026-04-01", "close_date": "2026-06-10", "account_id": "B"},
        {"stage": "Won", "amount": 4000, "created_date": "2026-04-01", "close_date": "2026-05-02", "account_id": "C"},
        # month P04 (05-03..05-30) won 1000; P03 (03-29..05-02) won 4000: growth of P04 over P03 = -75 %
        {"stage": "Proposal", "amount": 500, "created_date": "2026-05-03", "close_date": "2026-07-30"},
    ])
    a = build_analytics(opps, None, cfg, D("2026-06-15"))
    m = a.metrics.set_index(["metric", "scope", "key"])
    assert m.loc[("won_value", "team", "all"), "value"] == 3000.0
    assert m.loc[("won_value", "team", "all"), "period_start"] == pd.Timestamp("2026-05-03")
    assert m.loc[("cac", "team", "all"), "value"] == 450.0  # inputs.spend['2027-Q2'] / 2 new customers
    assert m.loc[("new_deals", "team", "all"), "value"] == 1.0
    assert m.loc[("revenue_growth_pct", "team", "all"), "value"] == -75.0
    assert m.loc[("revenue_growth_pct", "team", "all"), "period_start"] == pd.Timestamp("2026-05-03")
    # like for like in the 4-4-5 calendar: day 44 of 2027-Q2 against day 44 of 2027-Q1 (2026-02-01 + 43 days)
    assert a.summary.lines[:2] == [
        "2027-Q2 to date: 3 May 2026 to 15 June 2026, day 44 of 91 of the quarter.",
        "Compared with 2027-Q1 to the same day: 1 February 2026 to 16 March 2026 (the last column is all of "
        "2027-Q1, to 2 May 2026)."]
    kpis = a.summary.kpis.set_index("metric")
    assert kpis.loc["won_value", "previous"] == 0.0  # the 4000 was won on 2026-05-02, after 2026-03-16
    assert kpis.loc["won_value", "previous_full"] == 4000.0  # all of 2027-Q1
    months = next(s for s in a.sheets if s.name == WON_BY_MONTH_SHEET).frame
    assert list(months["month"])[-3:] == ["2027-P03", "2027-P04", "2027-P05"]
    assert list(months["label"])[-2:] == ["2027-P04", "2027-P05 (to date)"]  # P05 runs to 2026-06-27
    assert list(months["won_value"])[-3:] == [4000.0, 1000.0, 2000.0]
    won_chart = next(c for c in a.summary.charts if c.sheet == WON_BY_MONTH_SHEET)
    assert won_chart.title == "Won revenue by month (2027-P05 to date)"
    growth_note = a.summary.tables[0].frame.set_index("Measure").loc["Revenue growth (last full month)", "Note"]
    assert growth_note == "2027-P04 vs 2027-P03"
    d = next(s for s in a.sheets if s.name == "Definitions").frame.set_index("id")["in_force"]
    assert d["calendar"].startswith("4-4-5 fiscal calendar") and "53-week years: 2028" in d["calendar"]
    assert d["period"] == "2027-Q2: 2026-05-03 to 2026-06-15 (whole quarter to 2026-08-01)"
    assert d["previous"] == "2027-Q1: 2026-02-01 to 2026-03-16"
    assert d["previous_full"] == "2027-Q1: 2026-02-01 to 2026-05-02"
    about = dict(a.about)
    assert about["fiscal period"].startswith("2027-Q2: 2026-05-03 to 2026-08-01")
    assert "4-4-5" in about["calendar"] and "53-week years: 2028" in about["calendar"]


def test_default_calendar_adds_no_about_rows() -> None:
    opps = make_opps([{"stage": "Won", "amount": 10, "created_date": "2026-04-01", "close_date": "2026-05-03"}])
    assert build_analytics(opps, None, make_cfg(), D("2026-06-15")).about == []
