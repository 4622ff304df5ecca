"""A multi-currency org's exchange rates (`currency_rates: static | dated`).

- CurrencyType (every multi-currency org): the corporate currency (`IsCorporate`) and each active
  currency's `ConversionRate`, "the conversion rate of this currency type against the corporate
  currency" (units of the currency per 1 unit of the corporate one; Salesforce Object Reference,
  CurrencyType).
- DatedConversionRate (advanced currency management only; "not available in single-currency
  organizations, nor if advanced currency management is not enabled"): one rate per `IsoCode`
  from `StartDate` until `NextStartDate` (Salesforce Object Reference, DatedConversionRate).

Rates are handed on as units of the corporate currency per 1 unit (1 / ConversionRate). Which
rate a deal takes follows docs/metrics.md, not Salesforce's own ACM rule (which converts open
opportunities at their close date's rate too): closed deals at their close date, open deals at
`as_of`.
"""

from __future__ import annotations

from datetime import date

from config.models import SalesforceSourceConfig
from config.models.finance import SourceRates
from connectors.errors import FatalAPIError
from connectors.sources.salesforce.client import SalesforceAPI

CURRENCY_TYPES = "SELECT IsoCode, ConversionRate, IsCorporate FROM CurrencyType WHERE IsActive = true"
DATED_RATES = "SELECT IsoCode, ConversionRate, StartDate, NextStartDate FROM DatedConversionRate ORDER BY IsoCode, StartDate"


def read_rates(api: SalesforceAPI, cfg: SalesforceSourceConfig) -> SourceRates:
    """The org's rates as units of its corporate currency per 1 unit of each currency."""
    types = _rows(api, cfg, CURRENCY_TYPES, "a multi-currency org (CurrencyType)")
    corporate = [r.get("IsoCode") for r in types if r.get("IsCorporate") is True]
    if len(corporate) != 1 or not isinstance(corporate[0], str):
        raise FatalAPIError(f"Salesforce source '{cfg.name}': CurrencyType names {len(corporate)} corporate "
                            "currencies (IsCorporate); expected exactly one")
    rates: list[tuple[str, date | None, float]] = []
    if cfg.currency_rates == "static":
        rates = [(r["IsoCode"], None, 1.0 / float(r["ConversionRate"])) for r in types if _usable(r)]
        origin = "Salesforce CurrencyType"
    else:
        for r in _rows(api, cfg, DATED_RATES, "advanced currency management (DatedConversionRate)"):
            if _usable(r) and isinstance(r.get("StartDate"), str):
                rates.append((r["IsoCode"], date.fromisoformat(r["StartDate"][:10]), 1.0 / float(r["ConversionRate"])))
        origin = "Salesforce DatedConversionRate"
    return SourceRates(corporate[0], tuple(rates), origin)


def _usable(r: dict) -> bool:
    rate = r.get("ConversionRate")
    return isinstance(r.get("IsoCode"), str) and isinstance(rate, int | float) and rate > 0


def _rows(api: SalesforceAPI, cfg: SalesforceSourceConfig, soql: str, needs: str) -> list[dict]:
    try:
        return [rec for page in api.query(soql) for rec in page]
    except FatalAPIError as exc:
        raise FatalAPIError(f"Salesforce source '{cfg.name}': currency_rates: {cfg.currency_rates} needs {needs} "
                            f"and read access to it ({exc}); set currency_rates: none for a single-currency org") from None
