"""Reporting periods: bounds, labels, fiscal years, complete months."""

from __future__ import annotations

from datetime import date

import pytest

from transforms.periods import (
    fiscal_year_label,
    last_months,
    latest_complete_month,
    previous_period,
    reporting_period,
)


@pytest.mark.parametrize(
    ("as_of", "kind", "fy", "start", "full_end", "label"),
    [
        # calendar quarter: first and last day
        ("2026-04-01", "quarter", 1, "2026-04-01", "2026-06-30", "2026-Q2"),
        ("2026-06-30", "quarter", 1, "2026-04-01", "2026-06-30", "2026-Q2"),
        ("2026-03-31", "quarter", 1, "2026-01-01", "2026-03-31", "2026-Q1"),
        ("2026-12-31", "quarter", 1, "2026-10-01", "2026-12-31", "2026-Q4"),
        ("2026-06-15", "month", 1, "2026-06-01", "2026-06-30", "2026-06"),
        ("2024-02-29", "month", 1, "2024-02-01", "2024-02-29", "2024-02"),
        ("2026-06-15", "year", 1, "2026-01-01", "2026-12-31", "2026"),
        # fiscal year starting in April: labelled by the calendar year in which it ends
        ("2026-04-01", "year", 4, "2026-04-01", "2027-03-31", "2027"),
        ("2026-03-31", "year", 4, "2025-04-01", "2026-03-31", "2026"),
        ("2026-04-01", "quarter", 4, "2026-04-01", "2026-06-30", "2027-Q1"),
        ("2026-03-31", "quarter", 4, "2026-01-01", "2026-03-31", "2026-Q4"),
        ("2026-11-30", "quarter", 4, "2026-10-01", "2026-12-31", "2027-Q3"),
        # fiscal year starting in October (US federal style)
        ("2026-10-01", "year", 10, "2026-10-01", "2027-09-30", "2027"),
        ("2026-09-30", "quarter", 10, "2026-07-01", "2026-09-30", "2026-Q4"),
        ("2026-12-01", "quarter", 10, "2026-10-01", "2026-12-31", "2027-Q1"),
        # a fiscal year start month does not change month periods
        ("2026-05-31", "month", 4, "2026-05-01", "2026-05-31", "2026-05"),
    ],
)
def test_reporting_period(as_of: str, kind: str, fy: int, start: str, full_end: str, label: str) -> None:
    p = reporting_period(date.fromisoformat(as_of), kind, fy)  # type: ignore[arg-type]
    assert (p.start, p.end, p.full_end, p.label) == (
        date.fromisoformat(start), date.fromisoformat(as_of), date.fromisoformat(full_end), label)
    assert p.complete == (as_of == full_end)


@pytest.mark.parametrize(
    ("as_of", "kind", "fy", "start", "end", "label"),
    [
        ("2026-04-01", "quarter", 1, "2026-01-01", "2026-03-31", "2026-Q1"),
        ("2026-01-15", "quarter", 1, "2025-10-01", "2025-12-31", "2025-Q4"),
        ("2026-04-10", "quarter", 4, "2026-01-01", "2026-03-31", "2026-Q4"),
        ("2026-03-01", "month", 1, "2026-02-01", "2026-02-28", "2026-02"),
        ("2026-05-01", "year", 4, "2025-04-01", "2026-03-31", "2026"),
    ],
)
def test_previous_period_is_whole(as_of: str, kind: str, fy: int, start: str, end: str, label: str) -> None:
    p = previous_period(reporting_period(date.fromisoformat(as_of), kind, fy), fy)  # type: ignore[arg-type]
    assert (p.start, p.end, p.full_end, p.label) == (date.fromisoformat(start), date.fromisoformat(end),
                                                     date.fromisoformat(end), label)


@pytest.mark.parametrize(
    ("as_of", "first", "last"),
    [
        ("2026-06-30", "2026-06-01", "2026-06-30"),  # last day of the month: that month is complete
        ("2026-06-29", "2026-05-01", "2026-05-31"),  # not yet: the month before
        ("2026-06-01", "2026-05-01", "2026-05-31"),
        ("2026-01-15", "2025-12-01", "2025-12-31"),
        ("2024-02-29", "2024-02-01", "2024-02-29"),
    ],
)
def test_latest_complete_month(as_of: str, first: str, last: str) -> None:
    assert latest_complete_month(date.fromisoformat(as_of)) == (date.fromisoformat(first), date.fromisoformat(last))


@pytest.mark.parametrize(("d", "fy", "label"), [("2026-03-31", 4, "2026"), ("2026-04-01", 4, "2027"),
                                                ("2026-12-31", 1, "2026"), ("2026-01-01", 12, "2026"),
                                                ("2026-12-01", 12, "2027")])
def test_fiscal_year_label(d: str, fy: int, label: str) -> None:
    assert fiscal_year_label(date.fromisoformat(d), fy) == label


def test_last_months_end_with_month_to_date() -> None:
    months = last_months(date(2026, 6, 15), 12)
    assert len(months) == 12
    assert months[0] == (date(2025, 7, 1), date(2025, 7, 31))
    assert months[-1] == (date(2026, 6, 1), date(2026, 6, 15))
