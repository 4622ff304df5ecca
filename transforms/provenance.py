"""Which calendar and which rates the numbers used, as (key, value) rows for About / Definitions.

Shown only where they tell something: a fiscal calendar other than calendar months from January,
and the rates of every currency a deal was converted from (with the rule that picks the rate
date). A report in one currency on calendar months has none of these rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from config.models import AppConfig
from transforms.currency import RateTable
from transforms.periods import Calendar, MonthCalendar, Period

RATE_RULE = ("closed deals (won or lost at as_of) at the rate in force on their close_date, open deals at the rate "
             "of as_of; amount = original_amount x fx_rate (Opportunities: original_amount, original_currency, "
             "fx_rate, fx_rate_date)")


def provenance_rows(cfg: AppConfig, calendar: Calendar, period: Period, previous: Period,
                    rates: Mapping[str, RateTable], deals: pd.DataFrame) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if calendar != MonthCalendar(1):
        rows += [
            ("calendar", calendar.describe()),
            ("fiscal period", f"{period.label}: {period.start.isoformat()} to {period.full_end.isoformat()} "
                              f"(period sums to as_of {period.end.isoformat()}; forecast and movement over the whole "
                              "period)"),
            ("previous fiscal period", f"{previous.label}: {previous.start.isoformat()} to {previous.full_end.isoformat()}"),
        ]
    codes = pd.unique(deals["original_currency"].to_numpy(dtype=object)) if "original_currency" in deals.columns else []
    converted = sorted({str(c) for c in codes if isinstance(c, str)} - {cfg.inputs.currency.upper()})
    if converted or any(t.series for t in rates.values()):
        rows.append(("currency", f"amounts in {cfg.inputs.currency.upper()}; {RATE_RULE}"))
        lines: dict[str, None] = {}
        for name, table in rates.items():
            for line in table.describe():
                lines[f"{line} [source {name}]" if len(rates) > 1 else line] = None
            for note in table.notes:
                lines[note] = None
        rows += [("rate", line) for line in lines]
    return rows


__all__ = ["RATE_RULE", "provenance_rows"]
