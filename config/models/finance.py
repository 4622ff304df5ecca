"""Money and calendar keys (shared docs/metrics.md "Currencies", "Fiscal calendars"): dated rates,
the rates CSV and the 4-4-5 style fiscal calendar."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CURRENCY_CODE = re.compile(r"^[A-Za-z]{3}$")
RATES_FILE_MAX_BYTES = 10 * 1024 * 1024  # a rates table is small; a bigger file is a wrong path
RATES_FILE_MAX_ROWS = 200_000
RATES_FILE_COLUMNS = ("currency", "from", "rate")


class _Strict(BaseModel):  # config.models.base.StrictModel's settings (base imports this module)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DatedRate(_Strict):
    """One rate of a dated list: `rate` (reporting currency per 1 unit) holds from `from` until the next one."""

    from_: date = Field(alias="from")
    rate: float = Field(gt=0, allow_inf_nan=False)


RateValue = float | list[DatedRate]


def rate_list_problem(currency: str, value: RateValue) -> str | None:
    """Why one `inputs.rates` entry is unusable, or None."""
    if not CURRENCY_CODE.match(currency):
        return f"rates: '{currency}' is not a three-letter ISO 4217 code (e.g. EUR)"
    if isinstance(value, list):
        if not value:
            return f"rates.{currency}: the dated list is empty; give at least one {{from: 2026-01-01, rate: 1.1}}"
        days = [r.from_ for r in value]
        repeated = sorted({d for d in days if days.count(d) > 1})
        if repeated:
            return (f"rates.{currency}: two rates start on {repeated[0].isoformat()}; "
                    "keep one rate per date")
    elif not value > 0 or value != value or value == float("inf"):
        return f"rates.{currency}: the rate must be a number above 0 (got {value})"
    return None


def read_rates_file(path: str) -> dict[str, list[DatedRate]]:
    """The CSV of rates (`currency,from,rate`, one rate a line, header first) as dated lists.

    Raises ValueError with the line and the fix for anything unusable (the loader reports it
    under `inputs.rates_file`)."""
    p = Path(path)
    try:
        if not p.is_file():
            raise ValueError(f"'{path}' is not a file; point inputs.rates_file at a CSV of currency,from,rate")
        size = p.stat().st_size
        if size > RATES_FILE_MAX_BYTES:
            raise ValueError(f"'{path}' is {size:,} bytes; a rates table stays under {RATES_FILE_MAX_BYTES:,}")
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ValueError(f"'{path}' cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"'{path}' is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if header != list(RATES_FILE_COLUMNS):
        raise ValueError(f"'{path}': the header must be {','.join(RATES_FILE_COLUMNS)} (got {','.join(header) or 'nothing'})")
    out: dict[str, list[DatedRate]] = {}
    for line, row in enumerate(reader, start=2):
        if line - 1 > RATES_FILE_MAX_ROWS:
            raise ValueError(f"'{path}' has more than {RATES_FILE_MAX_ROWS:,} rates")
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ValueError(f"'{path}' line {line}: expected 3 values (currency,from,rate), got {len(row)}")
        cur, day, rate = (c.strip() for c in row)
        if not CURRENCY_CODE.match(cur):
            raise ValueError(f"'{path}' line {line}: '{cur}' is not a three-letter currency code")
        try:
            start = date.fromisoformat(day)
        except ValueError:
            raise ValueError(f"'{path}' line {line}: '{day}' is not a date (YYYY-MM-DD)") from None
        try:
            value = float(rate)
        except ValueError:
            raise ValueError(f"'{path}' line {line}: '{rate}' is not a number") from None
        if not value > 0 or value == float("inf"):
            raise ValueError(f"'{path}' line {line}: the rate must be above 0 (got {rate})")
        out.setdefault(cur.upper(), []).append(DatedRate.model_validate({"from": start, "rate": value}))
    for cur, rows in out.items():
        if problem := rate_list_problem(cur, rows):
            raise ValueError(f"'{path}': {problem.removeprefix('rates.')}")
    return out


PATTERNS: dict[str, tuple[int, int, int]] = {"4-4-5": (4, 4, 5), "4-5-4": (4, 5, 4), "5-4-4": (5, 4, 4)}
CHECK_YEARS = 10  # labels are checked for repeats this many years around year_start


class FiscalCalendarConfig(_Strict):
    """`fiscal_calendar:` a 52/53-week year of four 13-week quarters from `year_start`."""

    pattern: Literal["4-4-5", "4-5-4", "5-4-4"] = "4-4-5"
    year_start: date  # the first day of one fiscal year; the others follow (364 or 371 days)
    week53_years: list[int] = Field(default_factory=list)  # labels of the 53-week years (e.g. 2028)

    @field_validator("week53_years")
    @classmethod
    def _check_years(cls, value: list[int]) -> list[int]:
        bad = [y for y in value if not 1900 <= y <= 2200]
        if bad:
            raise ValueError(f"week53_years: {bad[0]} is not a year label (1900-2200), e.g. 2028")
        return sorted(set(value))

    @model_validator(mode="after")
    def _check_labels(self) -> FiscalCalendarConfig:
        starts = [self.year_start]
        for _ in range(CHECK_YEARS):
            starts.append(starts[-1] + timedelta(days=self.year_length(starts[-1])))
        for _ in range(CHECK_YEARS):
            starts.insert(0, self.previous_start(starts[0]))
        labels = [self.label_of(s) for s in starts]
        for a, b in zip(labels, labels[1:], strict=False):
            if b != a + 1:
                what = f"two fiscal years would both be labelled {a}" if a == b else \
                    f"the fiscal year after {a} would be labelled {b}"
                raise ValueError(f"fiscal_calendar: {what} (a year is labelled by the calendar year it ends in); "
                                 "check week53_years and year_start")
        return self

    def year_length(self, start: date) -> int:
        """Days of the fiscal year starting on `start`: 371 when week53_years lists its label (the
        calendar year its 53rd week, or its 52nd, ends in), else 364."""
        ends = {(start + timedelta(days=363)).year, (start + timedelta(days=370)).year}
        return 371 if ends & set(self.week53_years) else 364

    def previous_start(self, start: date) -> date:
        """The first day of the fiscal year before the one starting on `start`."""
        long = start - timedelta(days=371)
        return long if self.year_length(long) == 371 else start - timedelta(days=364)

    def label_of(self, start: date) -> int:
        """The label of the fiscal year starting on `start`: the calendar year its last day is in."""
        return (start + timedelta(days=self.year_length(start) - 1)).year


@dataclass(frozen=True)
class SourceRates:
    """Exchange rates a CRM keeps (Salesforce CurrencyType / DatedConversionRate, HubSpot's
    exchange rates): `rates` holds (currency, first day or None for an undated rate, units of
    `base` per 1 unit of the currency); `base` is the CRM's corporate / company currency."""

    base: str
    rates: tuple[tuple[str, date | None, float], ...]
    origin: str  # where they come from, for Definitions (e.g. "Salesforce DatedConversionRate")
