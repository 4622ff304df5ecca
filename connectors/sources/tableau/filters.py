"""What the config's `filters` become on the wire, under the rules Tableau documents.

- REST list filters (`filter=name:eq:<value>`): "Filter expressions can't contain ampersand (&)
  or comma (,) characters because these characters are used as field expression separators.
  This is true even if those characters are encoded" (Filtering and Sorting in the Tableau REST
  API, https://help.tableau.com/current/api/rest_api/en-us/REST/rest_api_concepts_filtering_and_sorting.htm).
  TSC's `Filter` (0.42) adds `:` (field/operator/value separator) and `[` `]` (the `in` list
  brackets), which the server has no escape for either. A name with any of these is looked up
  without a server-side filter, matched here.
- View filters (`vf_<field>=<value>`, Query View Data): commas separate alternatives; a literal
  comma is `\\,` (same page, "View query filters"), and TSC 0.42's `vf()` documents `\\\\` for
  a literal backslash. Every value is escaped, a single one too: a lone "Rock, Paper" must not
  turn into "Rock" OR " Paper".
- VizQL Data Service: "VDS doesn't support dates for set filters"
  (https://help.tableau.com/v0.0/api/vizql-data-service/en-us/docs/vds_limitations.html), so a
  date becomes a QUANTITATIVE_DATE RANGE filter (minDate = maxDate, RFC 3339 full dates, as in
  VizQLDataServiceOpenAPISchema.json); a list of dates cannot be said in one filter (one filter
  per field) and is refused with the form to use instead.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

import tableauserverclient as TSC

from config.models import TableauSourceConfig

UNFILTERABLE = frozenset(",&:[]")


class FilterConfigError(ValueError):
    """A `filters` entry that cannot be sent as configured; the message names the key and the fix."""


def name_filterable(name: str) -> bool:
    """Whether `name:eq:<name>` means exactly that name to Tableau."""
    return bool(name) and not set(name) & UNFILTERABLE


def csv_request_options(filters: dict[str, Any], max_age: int | None) -> TSC.CSVRequestOptions:
    """Query View Data options: `vf_<field>` filters, `Parameters.<name>` parameters, maxAge (minutes)."""
    opts = TSC.CSVRequestOptions(maxage=-1 if max_age is None else max_age)
    for key, value in filters.items():
        name = key.removeprefix("vf_")
        if name.startswith("Parameters."):
            opts.parameter(name, parameter_value(key, value))
        else:
            opts.vf(name, filter_value(value))
    return opts


def filter_value(value: Any) -> str:
    """A view filter value on the wire: alternatives joined by ',', each with ',' and '\\' escaped."""
    values = value if isinstance(value, list | tuple | set) else [value]
    return ",".join(_one_value(v).replace("\\", "\\\\").replace(",", "\\,") for v in values)


def parameter_value(key: str, value: Any) -> str:
    """A workbook parameter takes one value, sent as it is."""
    if isinstance(value, list | tuple | set):
        raise FilterConfigError(f"filters.{key}: a workbook parameter takes one value, not a list")
    return _one_value(value)


def _one_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def vds_filter(caption: str, spec: Any) -> dict[str, Any]:
    """One VizQL Data Service filter: a dict passes through; values become SET, a date QUANTITATIVE_DATE."""
    field = {"field": {"fieldCaption": caption}}
    if isinstance(spec, dict):
        return {**field, **spec}
    values = list(spec) if isinstance(spec, list | tuple | set) else [spec]
    if not any(isinstance(v, date) for v in values):
        return {**field, "filterType": "SET", "values": values, "exclude": False}
    range_form = ("{filterType: QUANTITATIVE_DATE, quantitativeFilterType: RANGE, minDate: 'YYYY-MM-DD', "
                  "maxDate: 'YYYY-MM-DD'}")
    if len(values) != 1:
        raise FilterConfigError(
            f"filters.{caption}: VizQL Data Service has no set filter on dates and allows one filter per "
            f"field, so a list of dates cannot be sent; give one date or a range: {range_form}")
    day = values[0]
    if isinstance(day, datetime):
        if day.time() != time() or day.tzinfo is not None:
            raise FilterConfigError(f"filters.{caption}: VizQL Data Service date filters take whole days "
                                    f"(got {day.isoformat()}); use {range_form}")
        day = day.date()
    return {**field, "filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "RANGE",
            "minDate": day.isoformat(), "maxDate": day.isoformat()}


def vds_query(cfg: TableauSourceConfig) -> dict[str, Any]:
    """The query-datasource body: `fields` (default: one per `columns` key) and `filters`."""
    fields = cfg.fields or [{"fieldCaption": src} for src in cfg.columns]
    filters = [vds_filter(caption, spec) for caption, spec in cfg.filters.items()]
    query: dict[str, Any] = {"fields": fields}
    if filters:
        query["filters"] = filters
    return {"datasource": {"datasourceLuid": cfg.datasource_luid}, "query": query,
            "options": {"returnFormat": "OBJECTS", "disaggregate": False}}
