"""Week-based fiscal calendars (shared docs/metrics.md, "Fiscal calendars") and the configured calendar.

`WeekCalendar`: a 52-week year of four 13-week quarters from `fiscal_calendar.year_start`; each
quarter's three months are 4, 4 and 5 weeks (or as the pattern says). The next year starts 364
days later, or 371 when `week53_years` lists that year's label; the extra week goes to the year's
last month (P12) and so to Q4. A year is labelled by the calendar year its last day is in:
quarters `2027-Q2`, months `2027-P05`, years `2027`. Days before `year_start` belong to the
years before it, counted back the same way.

`calendar_for(cfg)` is the one calendar of a run: this one with `fiscal_calendar:`, else
calendar months with fiscal years from `fiscal_year_start_month`.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, timedelta

from config.models import AppConfig
from config.models.finance import PATTERNS, FiscalCalendarConfig
from transforms.periods import Calendar, MonthCalendar, PeriodKind

MIN_DAY, MAX_DAY = date(1900, 1, 1), date(2200, 12, 31)  # the dates canonicalize accepts


@dataclass(frozen=True)
class WeekCalendar:
    """A 4-4-5 style calendar; `bounds` answers for any day from 1900 to 2200."""

    config: FiscalCalendarConfig = field(hash=False)

    @property
    def weeks(self) -> tuple[int, int, int]:
        return PATTERNS[self.config.pattern]

    def year_start(self, d: date) -> date:
        """The first day of the fiscal year containing `d` (counted from `year_start`, back or on)."""
        if not MIN_DAY <= d <= MAX_DAY:
            raise ValueError(f"{d.isoformat()} is outside the fiscal calendar's range (1900-2200)")
        c = self.config
        start = c.year_start
        while start > d:
            start = c.previous_start(start)
        while start + timedelta(days=c.year_length(start)) <= d:
            start += timedelta(days=c.year_length(start))
        return start

    def month_starts(self, year_start: date) -> list[date]:
        """The first days of the year's 12 months, then the first day of the next year."""
        days = [year_start]
        for m in range(12):
            days.append(days[-1] + timedelta(weeks=self.weeks[m % 3]))
        days[-1] = year_start + timedelta(days=self.config.year_length(year_start))  # week 53: into P12
        return days

    def bounds(self, kind: PeriodKind, d: date) -> tuple[date, date, str]:
        ys = self.year_start(d)
        label = str(self.config.label_of(ys))
        months = self.month_starts(ys)
        if kind == "year":
            return ys, months[12] - timedelta(days=1), label
        m = bisect_right(months, d) - 1
        if kind == "month":
            return months[m], months[m + 1] - timedelta(days=1), f"{label}-P{m + 1:02d}"
        q = m // 3
        return months[3 * q], months[3 * q + 3] - timedelta(days=1), f"{label}-Q{q + 1}"

    def week_end(self, d: date) -> date:
        """The last day of the fiscal week of `d` (weeks start on year_start's weekday)."""
        ys = self.year_start(d)
        return ys + timedelta(days=((d - ys).days // 7) * 7 + 6)

    def describe(self) -> str:
        c = self.config
        extra = f"; 53-week years: {', '.join(map(str, c.week53_years))}" if c.week53_years else ""
        return (f"{c.pattern} fiscal calendar (weeks per month {c.pattern} in each 13-week quarter) from "
                f"{c.year_start.isoformat()}, a {c.year_start:%A}; years labelled by the calendar year they end in, "
                f"months P01-P12{extra}")


def calendar_for(cfg: AppConfig) -> Calendar:
    """The configured calendar: `fiscal_calendar` when set, else months from `fiscal_year_start_month`."""
    if cfg.fiscal_calendar is not None:
        return WeekCalendar(cfg.fiscal_calendar)
    return MonthCalendar(cfg.fiscal_year_start_month)
