"""Reporting periods: bounds, labels and fiscal years (shared docs/metrics.md, "Inputs").

The reporting period is the calendar (or fiscal) month, quarter or year containing `as_of`,
from its first day to `as_of`, both inclusive. Fiscal years start on the first day of
`fiscal_year_start_month` and are labelled by the calendar year in which they end; fiscal
quarters count from that month (with start month 4, April-June is Q1 of the year ending next
March). Months are calendar months, labelled `YYYY-MM`.

The calendar is one object passed around (`Calendar`): `MonthCalendar` (a start month; an int
given where a calendar is expected stands for it) or `transforms.fiscal.WeekCalendar` (4-4-5,
4-5-4, 5-4-4 weeks, months labelled `YYYY-P05`). `transforms.fiscal.calendar_for(cfg)` picks the
configured one; every period-based number takes its bounds and labels from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal, Protocol

PeriodKind = Literal["month", "quarter", "year"]


class Calendar(Protocol):
    """Period bounds and labels: (first day, last day, label) of the `kind` period containing a day."""

    def bounds(self, kind: PeriodKind, d: date) -> tuple[date, date, str]: ...

    def week_end(self, d: date) -> date: ...

    def describe(self) -> str: ...


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


@dataclass(frozen=True)
class MonthCalendar:
    """Calendar months; fiscal years (and quarters) start on the first of `start_month`."""

    start_month: int = 1

    def bounds(self, kind: PeriodKind, d: date) -> tuple[date, date, str]:
        return _bounds(kind, d, self.start_month)

    def week_end(self, d: date) -> date:
        """The Sunday ending the ISO week of `d`."""
        return d + timedelta(days=6 - d.weekday())

    def describe(self) -> str:
        if self.start_month == 1:
            return "calendar months, quarters and years"
        return (f"calendar months; fiscal years from {date(2000, self.start_month, 1):%B} 1, "
                "labelled by the calendar year they end in")


CalendarLike = Calendar | int


def as_calendar(calendar: CalendarLike | None) -> Calendar:
    """`calendar` itself, or the month calendar an int (a fiscal year start month) stands for."""
    if calendar is None:
        return MonthCalendar()
    return MonthCalendar(calendar) if isinstance(calendar, int) else calendar


def period_of(d: date, kind: PeriodKind, calendar: CalendarLike | None = None) -> Period:
    """The whole period of `kind` containing `d`."""
    start, full_end, label = as_calendar(calendar).bounds(kind, d)
    return Period(kind, start, full_end, full_end, label)


def reporting_period(as_of: date, kind: PeriodKind = "quarter", calendar: CalendarLike = 1) -> Period:
    """The period containing `as_of`, from its first day to `as_of` (period to date)."""
    start, full_end, label = as_calendar(calendar).bounds(kind, as_of)
    return Period(kind, start, as_of, full_end, label)


def previous_period(period: Period, calendar: CalendarLike = 1) -> Period:
    """The whole period before `period` (ending on its last day)."""
    return period_of(period.start - timedelta(days=1), period.kind, calendar)


def latest_complete_month(as_of: date, calendar: CalendarLike | None = None) -> tuple[date, date]:
    """(first, last day) of the latest month (of the calendar) complete on `as_of` (its last day or later)."""
    month = period_of(as_of, "month", calendar)
    if as_of >= month.full_end:
        return month.start, month.full_end
    before = period_of(month.start - timedelta(days=1), "month", calendar)
    return before.start, before.full_end


def month_before(first_day: date, calendar: CalendarLike | None = None) -> tuple[date, date]:
    """(first, last day) of the month (of the calendar) before the month starting on `first_day`."""
    before = period_of(first_day - timedelta(days=1), "month", calendar)
    return before.start, before.full_end


def recent_months(as_of: date, n: int = 12, calendar: CalendarLike | None = None) -> list[Period]:
    """The `n` months (of the calendar) ending with the month of `as_of`, oldest first; the last one
    ends on `as_of` (to date)."""
    out = [reporting_period(as_of, "month", as_calendar(calendar))]
    while len(out) < n:
        out.insert(0, period_of(out[0].start - timedelta(days=1), "month", calendar))
    return out


def last_months(as_of: date, n: int = 12) -> list[tuple[date, date]]:
    """The `n` calendar months ending with the month of `as_of`, oldest first (last one to date)."""
    out = []
    for k in range(n - 1, -1, -1):
        y, m = _add_months(as_of.year, as_of.month, -k)
        first = date(y, m, 1)
        out.append((first, min(month_end(first), as_of)))
    return out


def like_for_like(period: Period, calendar: CalendarLike = 1) -> Period:
    """The previous period to the same day (shared docs/metrics.md, "Comparisons"): its first day
    plus as many days as `period` has run, clamped to its last day (Q4 to 2026-12-06 -> Q3 to 2026-09-05).
    The previous period is the calendar's (`transforms.fiscal.calendar_for(cfg)`: with a 4-4-5
    calendar, the previous 13-week quarter; a 14-week one clamps to its 13-week predecessor's end)."""
    prev = previous_period(period, calendar)
    day = min(prev.start + (period.end - period.start), prev.full_end)
    return Period(prev.kind, prev.start, day, prev.full_end, prev.label)
