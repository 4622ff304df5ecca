"""A HubSpot account's exchange rates (`exchange_rates: true`; scope settings.currencies.read).

HubSpot's currencies API (Settings API | Currencies, v3): GET
/settings/v3/currencies/company-currency names the company currency (`currencyCode`); GET
/settings/v3/currencies/exchange-rates lists every exchange rate, historical ones included, paged
by `limit` / `after` (`paging.next.after`). Each rate has `fromCurrencyCode`, `toCurrencyCode`
(the company currency), `conversionRate` ("the exchange rate from the additional currency to your
company currency": company units per 1 unit) and `effectiveAt` (when it takes effect). A rate
holds from its effectiveAt (a day in the run's time zone) until the next one of that currency.
HubSpot's own rule matches docs/metrics.md: open deals follow the current rate, a closed deal
keeps the rate in effect when it closed.
"""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from typing import Any

from config.models import HubSpotSourceConfig
from config.models.finance import SourceRates
from connectors.errors import FatalAPIError
from connectors.http.paging import paginate
from connectors.sources.hubspot.client import HubSpotApi, as_float, next_after

RATES_PAGE = 100


def read_rates(api: HubSpotApi, cfg: HubSpotSourceConfig, tz: tzinfo) -> SourceRates:
    try:
        company = api.get("/settings/v3/currencies/company-currency").get("currencyCode")
        if not isinstance(company, str) or len(company) != 3:
            raise FatalAPIError("the company-currency answer has no currencyCode")

        def page(after: Any) -> tuple[list[dict], Any]:
            body = api.get("/settings/v3/currencies/exchange-rates",
                           **{"limit": RATES_PAGE, **({"after": after} if after else {})})
            return body.get("results") or [], next_after(body)

        rows = [r for results in paginate(page) for r in results]
    except FatalAPIError as exc:
        raise FatalAPIError(f"HubSpot source '{cfg.name}': exchange_rates: true needs the scope "
                            f"settings.currencies.read ({exc}); or set exchange_rates: false and give inputs.rates") from None
    rates: list[tuple[str, date | None, float]] = []
    for r in rows:
        rate, cur = as_float(r.get("conversionRate")), r.get("fromCurrencyCode")
        if not isinstance(cur, str) or rate is None or rate <= 0 or r.get("toCurrencyCode") not in (None, company):
            continue
        rates.append((cur, _day(r.get("effectiveAt"), tz), rate))
    return SourceRates(company, tuple(rates), "HubSpot exchange rates")


def _day(value: Any, tz: tzinfo) -> date | None:
    """effectiveAt (ISO 8601 or epoch ms) as a day in `tz`; None (from any day) when missing."""
    if value in (None, ""):
        return None
    try:
        if str(value).lstrip("-").isdigit():
            when = datetime.fromtimestamp(int(value) / 1000, tz)
        else:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(tz)
    except (ValueError, OverflowError, OSError):
        return None
    return when.date()
