"""Reporting periods: bounds, labels and fiscal years (shared docs/metrics.md, "Inputs").

The reporting period is the calendar (or fiscal) month, quarter or year containing `as_of`,
from its first day to `as_of`, both inclusive. Fiscal years start on the first day of
`fiscal_year_start_month` and are labelled by the calendar year in which they end; fiscal
quarters count from that month (with start month 4, April-June is Q1 of the year ending next
March). Months are always calendar months, labelled `YYYY-MM`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

PeriodKind = Literal["month", "quarter", "year"]


@dataclass(frozen=True)
class Period:
    kind: PeriodKind
    start: date  # first day
    end: date  # last day counted (as_of for the reporting period)
    full_end: date  # last day of the whole period
    label: str

    @property
    def complete(self) -> bool:
        return self.end >= self.full_end


def _add_months(year: int, month: int, delta: int) -> tuple[int, int]:
    total = year * 12 + (month - 1) + delta
    return total // 12, total % 12 + 1


def month_start(d: date) -> date:
    return d.replace(day=1)


def month_end(d: date) -> date:
    y, m = _add_months(d.year, d.month, 1)
    return date(y, m, 1) - timedelta(days=1)


def month_label(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}"


def fiscal_year_start(d: date, start_month: int = 1) -> date:
    """First day of the fiscal year containing `d`."""
    year = d.year if d.month >= start_month else d.year - 1
    return date(year, start_month, 1)


def fiscal_year_label(d: date, start_month: int = 1) -> str:
    """The calendar year in which the fiscal year containing `d` ends."""
    start = fiscal_year_start(d, start_month)
    return str(start.year if start_month == 1 else start.year + 1)


def _bounds(kind: PeriodKind, d: date, start_month: int) -> tuple[date, date, str]:
    if kind == "month":
        return month_start(d), month_end(d), month_label(d)
    fy_start = fiscal_year_start(d, start_month)
    fy = fiscal_year_label(d, start_month)
    if kind == "year":
        y, m = _add_months(fy_start.year, fy_start.month, 12)
        return fy_start, date(y, m, 1) - timedelta(days=1), fy
    offset = (d.year * 12 + d.month) - (fy_start.year * 12 + fy_start.month)
    q = offset // 3
    sy, sm = _add_months(fy_start.year, fy_start.month, 3 * q)
    ey, em = _add_months(sy, sm, 3)
    return date(sy, sm, 1), date(ey, em, 1) - timedelta(days=1), f"{fy}-Q{q + 1}"


def reporting_period(as_of: date, kind: PeriodKind = "quarter", fiscal_year_start_month: int = 1) -> Period:
    """The period containing `as_of`, from its first day to `as_of` (period to date)."""
    start, full_end, label = _bounds(kind, as_of, fiscal_year_start_month)
    return Period(kind, start, as_of, full_end, label)


def previous_period(period: Period, fiscal_year_start_month: int = 1) -> Period:
    """The whole period before `period` (ending on its last day)."""
    before = period.start - timedelta(days=1)
    start, full_end, label = _bounds(period.kind, before, fiscal_year_start_month)
    return Period(period.kind, start, full_end, full_end, label)


def latest_complete_month(as_of: date) -> tuple[date, date]:
    """(first, last day) of the latest calendar month complete on `as_of` (its last day or later)."""
    last = month_end(as_of)
    if as_of >= last:
        return month_start(as_of), last
    prev_last = month_start(as_of) - timedelta(days=1)
    return month_start(prev_last), prev_last


def month_before(first_day: date) -> tuple[date, date]:
    """(first, last day) of the calendar month before the month starting on `first_day`."""
    last = first_day - timedelta(days=1)
    return month_start(last), last


def last_months(as_of: date, n: int = 12) -> list[tuple[date, date]]:
    """The `n` calendar months ending with the month of `as_of`, oldest first (last one to date)."""
    out = []
    for k in range(n - 1, -1, -1):
        y, m = _add_months(as_of.year, as_of.month, -k)
        first = date(y, m, 1)
        out.append((first, min(month_end(first), as_of)))
    return out


def like_for_like(period: Period, fiscal_year_start_month: int = 1) -> Period:
    """The previous period to the same day (shared docs/metrics.md, "Comparisons"): its first day
    plus as many days as `period` has run, clamped to its last day (Q4 to 2026-12-06 -> Q3 to 2026-09-05)."""
    prev = previous_period(period, fiscal_year_start_month)
    day = min(prev.start + (period.end - period.start), prev.full_end)
    return Period(prev.kind, prev.start, day, prev.full_end, prev.label)
