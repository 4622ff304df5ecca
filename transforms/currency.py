"""Currency conversion with dated rates (shared docs/metrics.md, "Currencies").

A `RateTable` holds, per currency, the reporting-currency rate in force from each date on (one
undated number holds from any date). It is built from `inputs.rates` (numbers, dated lists, the
rates CSV merged in by the config) and, for a CRM source that reads them, the CRM's own rates
(`SourceRates`), which win for that source's deals: they are the rates the CRM itself converts
with. A CRM's rates are against its corporate currency; when that is not the reporting currency
they are crossed through the reporting currency's own rate in the CRM (or the corporate
currency's rate in `inputs.rates`).

The rate date of a deal is its `close_date` when it is won or lost at `as_of`, else `as_of`
(closed deals keep the rate of the day they closed, open deals move). `amount` = original amount
x the rate in force on the rate date; a deal whose currency has no rate that day is rejected
with the currency and the date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from config.models.finance import DatedRate, RateValue, SourceRates
from config.schema import FX_COLUMNS

_EVER = np.datetime64("1000-01-01", "D")  # "from" of an undated rate


@dataclass(frozen=True)
class RateTable:
    """Reporting-currency rates per currency, each a step function of the date."""

    reporting: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # CUR -> (from days, rates)
    origin: dict[str, str] = field(default_factory=dict)  # CUR -> where its rates come from
    notes: tuple[str, ...] = ()

    @property
    def dated(self) -> bool:
        """Whether a rate depends on the date."""
        return any(len(days) > 1 or days[0] != _EVER for days, _ in self.series.values())

    def knows(self, currency: str) -> bool:
        return currency == self.reporting or currency in self.series

    def first_day(self, currency: str) -> date | None:
        days = self.series.get(currency, (np.array([], "datetime64[D]"),))[0]
        return None if not len(days) or days[0] == _EVER else days[0].astype(date)

    def rates_on(self, currency: np.ndarray, days: np.ndarray) -> np.ndarray:
        """The rate of each (currency, day); NaN where the currency has none that day (or the day is NaT).
        The reporting currency and '' (no currency: the reporting one) are 1."""
        currency = np.asarray(currency, dtype=object)
        out = np.full(len(currency), np.nan)
        out[(currency == self.reporting) | (currency == "")] = 1.0
        for cur in pd.unique(currency):
            if cur in ("", self.reporting) or cur not in self.series:
                continue
            froms, rates = self.series[cur]
            rows = np.flatnonzero(currency == cur)
            d = days[rows]
            pos = np.searchsorted(froms, d, side="right") - 1
            ok = (pos >= 0) & ~np.isnat(d)
            out[rows[ok]] = rates[pos[ok]]
            if len(froms) == 1 and froms[0] == _EVER:  # undated: any day, even unknown
                out[rows] = rates[0]
        return out

    def describe(self) -> list[str]:
        """One line per currency: where its rate comes from and its values, for Definitions/About."""
        lines = []
        for cur in sorted(self.series):
            froms, rates = self.series[cur]
            if len(froms) == 1 and froms[0] == _EVER:
                values = f"{rates[0]:g}"
            else:
                values = ", ".join(f"{r:g} from {d.astype(date).isoformat()}" for d, r in zip(froms, rates, strict=True))
            lines.append(f"{cur} -> {self.reporting}: {values} ({self.origin.get(cur, 'inputs.rates')})")
        return lines


def _steps(pairs: list[tuple[date | None, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(from days, rates) sorted by day; an undated pair is a rate from any day; a later pair on the same day wins."""
    by_day: dict[np.datetime64, float] = {}
    for day, rate in pairs:
        by_day[_EVER if day is None else np.datetime64(day, "D")] = float(rate)
    days = sorted(by_day)
    return np.array(days, dtype="datetime64[D]"), np.array([by_day[d] for d in days], dtype=float)


def _config_series(rates: Mapping[str, RateValue]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for cur, value in rates.items():
        if isinstance(value, list):
            out[cur.upper()] = _steps([(r.from_ if isinstance(r, DatedRate) else r["from"],
                                        r.rate if isinstance(r, DatedRate) else r["rate"]) for r in value])
        else:
            out[cur.upper()] = _steps([(None, float(value))])
    return out


def _divide(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The step function a / b on the union of their steps (from the first day both have a rate)."""
    days = np.union1d(a[0], b[0])
    ia = np.searchsorted(a[0], days, side="right") - 1
    ib = np.searchsorted(b[0], days, side="right") - 1
    ok = (ia >= 0) & (ib >= 0)
    return days[ok], a[1][ia[ok]] / b[1][ib[ok]]


def rate_table(reporting: str, rates: Mapping[str, RateValue] | None = None,
               source: SourceRates | None = None) -> RateTable:
    """The rates one source's deals convert with: `inputs.rates`, overridden by the source's own."""
    reporting = reporting.upper()
    series = _config_series(rates or {})
    origin = {c: "inputs.rates" for c in series}
    notes: list[str] = []
    if source is not None and source.rates:
        base = source.base.upper()
        own: dict[str, list[tuple[date | None, float]]] = {}
        for cur, day, rate in source.rates:
            if rate and rate > 0:
                own.setdefault(cur.upper(), []).append((day, rate))
        to_base = {c: _steps(p) for c, p in own.items()}
        to_base[base] = _steps([(None, 1.0)])
        if base == reporting:
            divisor = None
        elif reporting in to_base:
            divisor = to_base[reporting]
        elif base in series:  # the corporate currency's rate from inputs.rates
            divisor = (series[base][0], 1.0 / series[base][1])
        else:
            divisor = False
            notes.append(f"{source.origin}: rates are against {base}, which has no rate to {reporting} "
                         f"(in the CRM or inputs.rates); they are not used")
        if divisor is not False:
            for cur, steps in to_base.items():
                if cur == reporting:
                    continue
                series[cur] = steps if divisor is None else _divide(steps, divisor)
                origin[cur] = source.origin + ("" if divisor is None else f", crossed through {reporting}")
    series.pop(reporting, None)
    return RateTable(reporting, series, origin, tuple(notes))


def rate_dates(status: np.ndarray, close: np.ndarray, as_of: date | None) -> np.ndarray:
    """close_date for deals won or lost at `as_of` (closed on or before it), else `as_of` (NaT when None)."""
    day = np.datetime64(as_of, "D") if as_of is not None else np.datetime64("NaT", "D")
    status = np.asarray(status, dtype=object)
    closed = np.isin(status, ["won", "lost"]) & ~np.isnat(close) & (close <= day if as_of is not None else True)
    return np.where(closed, close, day).astype("datetime64[D]")


@dataclass(frozen=True)
class Converted:
    amount: np.ndarray  # reporting currency; NaN without an amount or a rate
    rate: np.ndarray  # the rate used (NaN: none)
    rate_date: np.ndarray  # datetime64[D]; NaT for deals in the reporting currency
    reason: np.ndarray  # object: "" or why the row has no rate


def convert(original: np.ndarray, currency: np.ndarray, status: np.ndarray, close: np.ndarray,
            as_of: date | None, table: RateTable) -> Converted:
    """Each deal's amount in the reporting currency at `as_of` (see the module docstring)."""
    currency = np.asarray(currency, dtype=object)
    if as_of is None and table.dated:
        raise ValueError("dated rates need the run's as_of to pick each open deal's rate")
    days = rate_dates(status, close, as_of)
    rate = table.rates_on(currency, days)
    foreign = (currency != "") & (currency != table.reporting)
    reason = np.full(len(currency), "", dtype=object)
    missing = foreign & np.isnan(rate)
    for cur in pd.unique(currency[missing]):
        rows = np.flatnonzero(missing & (currency == cur))
        first = table.first_day(cur)
        for day in pd.unique(days[rows]):
            at = rows[days[rows] == day] if not np.isnat(day) else rows[np.isnat(days[rows])]
            when = "" if np.isnat(day) else f" on {day.astype(date).isoformat()}"
            if table.knows(cur) and first is not None:
                reason[at] = (f"currency '{cur}' has no rate to {table.reporting}{when} (its rates start "
                              f"{first.isoformat()}; add an earlier rate to inputs.rates)")
            else:
                reason[at] = f"currency '{cur}' has no rate to {table.reporting}{when} (add it to inputs.rates)"
    return Converted(np.asarray(original, dtype=float) * rate, rate,
                     np.where(foreign, days, np.datetime64("NaT", "D")).astype("datetime64[D]"), reason)


def reconvert(deals: pd.DataFrame, tables: Mapping[str, RateTable], as_of: date) -> tuple[pd.DataFrame, int]:
    """`deals` (as they stood at `as_of`: their `status` is the one at `as_of`) with amount, fx_rate and
    fx_rate_date at `as_of` for the sources whose rates are dated; (deals, how many lost their rate).

    The run validated every deal at its own as_of; a backfill date or the previous period's
    comparison looks at another day, where open deals take that day's rate. A deal whose currency
    has no rate that day keeps no amount (it counts, and is left out of the sums)."""
    if not len(deals) or not all(c in deals.columns for c in FX_COLUMNS) or "source" not in deals.columns:
        return deals, 0
    dated = [s for s, t in tables.items() if t.dated]
    if not dated:
        return deals, 0
    out = deals.copy()
    lost = 0
    src = out["source"].to_numpy(dtype=object)
    for name in dated:
        rows = np.flatnonzero(src == name)
        if not len(rows):
            continue
        part = out.iloc[rows]
        cur = part["original_currency"].astype(object).where(part["original_currency"].notna(), "").to_numpy(dtype=object)
        close = pd.to_datetime(part["close_date"]).to_numpy(dtype="datetime64[D]")
        conv = convert(part["original_amount"].to_numpy(dtype=float), cur, part["status"].to_numpy(dtype=object),
                       close, as_of, tables[name])
        lost += int((conv.reason != "").sum())
        out.iloc[rows, out.columns.get_loc("amount")] = conv.amount
        out.iloc[rows, out.columns.get_loc("fx_rate")] = conv.rate
        out.iloc[rows, out.columns.get_loc("fx_rate_date")] = conv.rate_date.astype("datetime64[ns]")
    return out, lost


def amounts_from_original(before: pd.DataFrame, after: pd.DataFrame, reporting: str) -> pd.DataFrame:
    """`after` (= `before` with some `original_amount`s replaced, e.g. by a field history's value at
    an earlier as_of) with `amount` = original_amount x the row's fx_rate where it changed (a row
    without a rate in the reporting currency, or none, takes 1). Sources with dated rates convert
    again in `reconvert`, which reads original_amount."""
    old = before["original_amount"].to_numpy(dtype=float)
    new = after["original_amount"].to_numpy(dtype=float)
    moved = np.flatnonzero(~((old == new) | (np.isnan(old) & np.isnan(new))))
    if not len(moved):
        return after
    rate = after["fx_rate"].to_numpy(dtype=float)[moved]
    cur = after["original_currency"].to_numpy(dtype=object)[moved]
    home = pd.Series(cur, dtype=object).fillna("").isin(["", reporting.upper()]).to_numpy()
    rate = np.where(np.isnan(rate) & home, 1.0, rate)
    out = after if after is not before else after.copy()
    out.iloc[moved, out.columns.get_loc("amount")] = new[moved] * rate
    return out


def with_fx_columns(opps: pd.DataFrame) -> pd.DataFrame:
    """`opps` with the FX columns; rows typed elsewhere without them are in the reporting currency
    as given (original = amount, rate 1, no rate date)."""
    if all(c in opps.columns for c in FX_COLUMNS):
        return opps
    out = opps.copy()
    out["original_amount"] = out["amount"].astype(float) if "amount" in out else np.nan
    out["original_currency"] = out["currency"].astype(object) if "currency" in out else None
    out["fx_rate"] = np.where(out["original_amount"].notna(), 1.0, np.nan)
    out["fx_rate_date"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns]")
    return out


__all__ = ["Converted", "RateTable", "amounts_from_original", "convert", "rate_dates", "rate_table", "reconvert", "with_fx_columns"]
