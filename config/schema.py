"""The canonical opportunity schema, declared once (see shared docs/metrics.md, "Canonical fields").

Connectors rename their source fields to these names; transforms only ever use these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FieldKind = Literal["text", "status", "amount", "currency", "date", "deal_type", "bool", "forecast_category"]


@dataclass(frozen=True)
class CanonicalField:
    name: str
    kind: FieldKind
    required: bool = False


CANONICAL_FIELDS: tuple[CanonicalField, ...] = (
    CanonicalField("opportunity_id", "text", required=True),
    CanonicalField("name", "text"),
    CanonicalField("account_id", "text"),
    CanonicalField("account_name", "text"),
    CanonicalField("owner", "text"),
    CanonicalField("team", "text"),
    CanonicalField("product", "text"),
    CanonicalField("stage", "text", required=True),
    CanonicalField("status", "status"),
    CanonicalField("amount", "amount"),
    CanonicalField("currency", "currency"),
    CanonicalField("created_date", "date", required=True),
    CanonicalField("close_date", "date"),
    CanonicalField("stage_entered_date", "date"),
    CanonicalField("last_activity_date", "date"),
    CanonicalField("next_step_date", "date"),
    CanonicalField("deal_type", "deal_type"),
    CanonicalField("lead_source", "text"),
    CanonicalField("record_url", "text"),  # the record's page in the source, for the Actions links
    CanonicalField("forecast_category", "forecast_category"),  # see FORECAST_CATEGORIES
    CanonicalField("budget", "bool"),
    CanonicalField("authority", "bool"),
    CanonicalField("need", "bool"),
    CanonicalField("timeline", "bool"),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in CANONICAL_FIELDS)
FIELDS_BY_NAME: dict[str, CanonicalField] = {f.name: f for f in CANONICAL_FIELDS}
DATE_FIELDS: tuple[str, ...] = tuple(f.name for f in CANONICAL_FIELDS if f.kind == "date")
BOOL_FIELDS: tuple[str, ...] = tuple(f.name for f in CANONICAL_FIELDS if f.kind == "bool")
TEXT_FIELDS: tuple[str, ...] = tuple(f.name for f in CANONICAL_FIELDS if f.kind == "text")
BANT_FIELDS: tuple[str, ...] = ("budget", "authority", "need", "timeline")

# Stage history rows (one per stage entry), as every source hands them over.
HISTORY_FIELDS: tuple[str, ...] = ("opportunity_id", "stage", "entered_date")

# Forecast categories (docs/metrics.md "Forecast categories"): open deals take one of the first
# four; a deal won or lost at as_of is "closed".
FORECAST_CATEGORIES: tuple[str, ...] = ("pipeline", "best_case", "commit", "omitted", "closed")

# A source's own field history (Salesforce OpportunityHistory, HubSpot propertiesWithHistory), raw:
# one row per recorded value; `field` is close_date or amount (transforms/field_history.py types them).
FIELD_HISTORY_COLUMNS: tuple[str, ...] = ("opportunity_id", "field", "changed_at", "value")

# Columns the pipeline adds to every loaded opportunity, after the canonical ones.
# The amount as the source gave it, its currency, the rate to the reporting currency and the rate's date.
FX_COLUMNS: tuple[str, ...] = ("original_amount", "original_currency", "fx_rate", "fx_rate_date")
SOURCE_COLUMN = "source"
ROW_ID_COLUMN = "row_id"  # "<source>:<opportunity_id>"

# Excel's hard limits.
EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_CELL_CHARS = 32_767
EXCEL_MAX_SHEET_NAME = 31
