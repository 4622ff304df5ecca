"""Salesforce source: OAuth (client credentials or JWT bearer), SOQL paging, stage history, incremental.

Modules: client (sign-in, REST calls), query (fields, SOQL, window, cursor), rows (records ->
frames), extractor (`extract`, `from_state`). This package keeps the names the former
`connectors.sources.salesforce` module had, so `connectors.sources.salesforce:extract` and
`from_state` resolve as before.
"""

from connectors.sources.salesforce.client import JWT_LIFETIME, SalesforceAPI, jwt_audience
from connectors.sources.salesforce.extractor import extract, from_state
from connectors.sources.salesforce.query import (
    BASE_FIELDS,
    ID_BATCH,
    make_cursor,
    opportunity_soql,
    parse_cursor,
    query_fingerprint,
    select_fields,
    window,
)
from connectors.sources.salesforce.rows import (
    CANONICAL,
    DEFAULT_TYPE_MAP,
    HISTORY_KEY,
    PRODUCT_KEY,
    flatten,
    main_product,
    stage_entries,
    status_of,
    to_frames,
)

__all__ = [
    "BASE_FIELDS", "CANONICAL", "DEFAULT_TYPE_MAP", "HISTORY_KEY", "ID_BATCH", "JWT_LIFETIME", "PRODUCT_KEY",
    "SalesforceAPI", "extract", "flatten", "from_state", "jwt_audience", "main_product", "make_cursor",
    "opportunity_soql", "parse_cursor", "query_fingerprint", "select_fields", "stage_entries", "status_of",
    "to_frames", "window",
]
