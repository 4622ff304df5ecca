"""Tableau source (REST API view data through tableauserverclient, or the VizQL Data Service).

`extract` is the entry point (connectors.registry: "connectors.sources.tableau:extract").
Modules: connector (entry, view lookup), session (TSC sign-in and retries), token_lock (one
session per token across processes), filters (wire forms of `filters`), vds (datasource mode),
values (CSV, formatted numbers and dates), pulled (what a mode returns).
"""

from connectors.sources.tableau.connector import extract, find_view
from connectors.sources.tableau.filters import (
    csv_request_options,
    filter_value,
    name_filterable,
    vds_query,
)
from connectors.sources.tableau.session import TableauSession, retry_after_text
from connectors.sources.tableau.values import (
    map_columns,
    parse_formatted,
    parse_tableau_number,
    read_view_csv,
)

__all__ = [
    "TableauSession", "csv_request_options", "extract", "filter_value", "find_view", "map_columns",
    "name_filterable", "parse_formatted", "parse_tableau_number", "read_view_csv", "retry_after_text", "vds_query",
]
