"""Source configs: one model per built-in source `type` (CSV, Excel, HubSpot, Salesforce, Tableau)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from config.models.base import Delimiter, RelPath, StrictModel
from config.schema import FIELD_NAMES
from connectors.registry import typed_config


def _check_record_url_template(value: str | None) -> str | None:
    """An http(s) URL whose `{placeholders}` are canonical fields, e.g. https://crm.example.com/deals/{opportunity_id}."""
    if value is None:
        return value
    import string

    try:
        names = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(f"'{value}' is not a template ({exc}); write fields as {{opportunity_id}}") from None
    bad = sorted({n for n in names if n not in FIELD_NAMES})
    if bad:
        raise ValueError(f"'{value}': {', '.join('{' + b + '}' for b in bad)} is not a canonical field; use e.g. "
                         "{opportunity_id} or {account_id}")
    if not value.lower().startswith(("https://", "http://")):
        raise ValueError(f"'{value}' must start with https:// (or http://)")
    return value


class SourceBase(StrictModel):
    """What every source type's model has: the flow reads `name`, `stage_map` and `raw_sheet`;
    the Actions sheet reads `record_url_template`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    stage_map: dict[str, str] = Field(default_factory=dict)
    raw_sheet: str | None = Field(default=None, max_length=31)
    # the record's page in the source, for the Actions links, where the source gives no record_url
    record_url_template: Annotated[str | None, AfterValidator(_check_record_url_template)] = None


class ReadLimits(StrictModel):
    """How much of a source file is read (hostile or broken input ends in one error naming the limit).

    Excel: calamine allocates every cell from A1 to the farthest one, so `max_cells` bounds memory
    (about 32 bytes a cell, plus pandas); the archive is checked before it is parsed.
    """

    max_file_mb: float = Field(default=1024, gt=0)  # the file itself
    max_uncompressed_mb: float = Field(default=4096, gt=0)  # Excel: every part inflated
    max_compression_ratio: float = Field(default=100, gt=1)  # Excel: any part over 1 MB (real ones: 10-25:1)
    max_cells: int = Field(default=30_000_000, gt=0)  # Excel: rows x columns of the sheet's cells


class StageHistoryFileConfig(StrictModel):
    path: RelPath
    columns: dict[str, str] = Field(default_factory=dict)
    date_format: str | None = None
    delimiter: Delimiter = ","
    encoding: str = "utf-8"
    sheet: str | int | None = None
    limits: ReadLimits = Field(default_factory=ReadLimits)


class CsvSourceConfig(SourceBase):
    type: Literal["csv"]
    path: RelPath
    columns: dict[str, str] = Field(default_factory=dict)  # source header -> canonical field
    date_format: str | None = None
    delimiter: Delimiter = ","
    encoding: str = "utf-8"
    decimal: Literal[".", ","] = "."  # amounts: '.' reads 1,234.50; ',' reads 1.234,50
    stage_history: StageHistoryFileConfig | None = None
    limits: ReadLimits = Field(default_factory=ReadLimits)


class ExcelSourceConfig(SourceBase):
    type: Literal["excel"]
    path: RelPath
    sheet: str | int | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    date_format: str | None = None
    decimal: Literal[".", ","] = "."  # amounts stored as text: '.' reads 1,234.50; ',' reads 1.234,50
    stage_history: StageHistoryFileConfig | None = None
    limits: ReadLimits = Field(default_factory=ReadLimits)


# canonical field -> HubSpot deal property, used unless a source's `fields` says otherwise
HUBSPOT_DEFAULT_FIELDS: dict[str, str] = {
    "name": "dealname",
    "amount": "amount",
    "currency": "deal_currency_code",
    "created_date": "createdate",
    "close_date": "closedate",
    "last_activity_date": "notes_last_updated",
    "next_step_date": "notes_next_activity_date",
    "deal_type": "dealtype",
    "forecast_category": "hs_manual_forecast_category",  # OMIT, PIPELINE, BEST_CASE, COMMIT, CLOSED
}
# filled by the connector itself (ids, pipelines, owners, line items), not from `fields`
HUBSPOT_FIXED_FIELDS: frozenset[str] = frozenset(
    {"opportunity_id", "stage", "status", "owner", "team", "product", "stage_entered_date"}
)


class HubSpotSourceConfig(SourceBase):
    type: Literal["hubspot"]
    token: str = Field(min_length=1, repr=False)  # private-app token, normally ${HUBSPOT_TOKEN}
    base_url: str = "https://api.hubapi.com"
    ca_bundle: RelPath | None = None
    verify_tls: bool = True
    pipelines: list[str] | None = None  # pipeline ids or labels to load; default: all
    fields: dict[str, str | None] = Field(default_factory=dict)  # canonical field -> deal property (null: none)
    product_property: str | None = None  # a deal property holding the product
    product_from_line_items: bool = False  # else: the name of the deal's largest line item
    stage_entered_prefix: str = "hs_date_entered_"  # + stage id: when a deal entered that stage
    page_size: int = Field(default=100, ge=1, le=100)
    search_page_size: int = Field(default=200, ge=1, le=200)
    incremental: bool = True
    search_overlap_seconds: int = Field(default=60, ge=0)  # re-read this much before the cursor
    rate_limit_reserve: int = Field(default=5, ge=0)  # pause for the window when this few calls remain
    search_per_second: float = Field(default=4.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    # read the account's exchange rates (settings.currencies.read scope): deals in other currencies
    # convert at HubSpot's own rates, dated by effectiveAt
    exchange_rates: bool = False
    field_history: bool = False  # issue 22: read closedate/amount history (propertiesWithHistory) for push_count

    @property
    def reads_rates(self) -> bool:
        return self.exchange_rates

    @model_validator(mode="after")
    def _check_fields(self) -> HubSpotSourceConfig:
        from config.schema import FIELD_NAMES

        allowed = [f for f in FIELD_NAMES if f not in HUBSPOT_FIXED_FIELDS]
        bad = sorted(k for k in self.fields if k not in allowed)
        if bad:
            raise ValueError(
                f"fields: {', '.join(bad)} cannot be set here (use one of: {', '.join(allowed)}; "
                "stage, owner, team and product come from pipelines, owners and product_property)"
            )
        return self


class SalesforceSourceConfig(SourceBase):
    """`type: salesforce` (issue 5). Key names are a user-facing contract."""

    type: Literal["salesforce"]
    auth: Literal["client_credentials", "jwt"] = "client_credentials"
    domain: str | None = None  # My Domain URL; its /services/oauth2/token serves client credentials
    client_id: str
    client_secret: str | None = None
    username: str | None = None  # jwt: the integration user
    private_key_path: RelPath | None = None  # jwt: PEM key of the connected app's certificate
    login_url: str = "https://login.salesforce.com"  # jwt: token endpoint host and JWT audience
    api_version: str = "66.0"
    ca_bundle: RelPath | None = None
    verify_tls: bool = True
    type_map: dict[str, Literal["new", "existing"]] | None = None  # merged over the defaults
    product_field: str | None = None  # Product2 field via line items (Family), or Opportunity.<Field>
    next_step_field: str | None = None  # an Opportunity date field for next_step_date
    # A SOQL condition (validated) or {field: value | [values]} (values escaped).
    where: str | dict[str, str | int | float | bool | None | list[str | int | float | bool | None]] | None = None
    incremental: bool = True
    overlap_seconds: int = Field(default=60, ge=0)  # re-read this much before the cursor (late commits)
    page_size: int = Field(default=2000, ge=200, le=2000)  # Sforce-Query-Options batchSize (a hint)
    timeout: float = 30.0
    daily_api_reserve: int = Field(default=1000, ge=0)  # stop cleanly (cursor kept) when this few daily API calls remain
    reconcile_days: float = Field(default=7.0, ge=0)  # compare the stored ids with the org's this often (0: every run)
    # multi-currency orgs: read CurrencyIsoCode and the org's rates, static (CurrencyType) or dated
    # (DatedConversionRate, advanced currency management); none: amounts are taken as they are
    currency_rates: Literal["none", "static", "dated"] = "none"

    @property
    def reads_rates(self) -> bool:
        return self.currency_rates != "none"

    @model_validator(mode="after")
    def _check_auth(self) -> SalesforceSourceConfig:
        from config.soql import check_field_path, where_clause

        if self.auth == "client_credentials":
            missing = [k for k in ("domain", "client_secret") if not getattr(self, k)]
        else:
            missing = [k for k in ("username", "private_key_path") if not getattr(self, k)]
        if missing:
            raise ValueError(f"auth '{self.auth}' needs: {', '.join(missing)}")
        problems: list[str] = []
        if self.auth == "client_credentials":
            host = self.domain.split("://", 1)[-1].split("/", 1)[0].lower()
            if not self.domain.startswith("https://"):
                problems.append(f"domain '{self.domain}' must be an https URL, e.g. https://acme.my.salesforce.com")
            elif host in ("login.salesforce.com", "test.salesforce.com"):
                problems.append(
                    f"domain '{self.domain}': client credentials need your My Domain URL "
                    "(Setup > My Domain, e.g. https://acme.my.salesforce.com), not login/test"
                )
        if self.auth == "jwt" and not self.login_url.startswith("https://"):
            problems.append(f"login_url '{self.login_url}' must be an https URL, e.g. https://login.salesforce.com")
        version = self.api_version.strip().lstrip("vV")
        if not version.replace(".", "", 1).isdigit() or "." not in version:
            problems.append(f"api_version '{self.api_version}' is not a version like 66.0")
        else:
            self.api_version = version
        for key in ("product_field", "next_step_field"):
            value = getattr(self, key)
            if value is not None:
                try:
                    check_field_path(value)
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
        if self.next_step_field and "." in self.next_step_field:
            problems.append(f"next_step_field '{self.next_step_field}' must be a field of Opportunity itself")
        try:
            where_clause(self.where)
        except ValueError as exc:
            problems.append(f"where: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


_LUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class TableauSourceConfig(SourceBase):
    type: Literal["tableau"]
    server_url: str
    site: str = ""
    token_name: str
    token_secret: str
    api_version: str = "3.24"
    mode: Literal["view", "datasource"] = "view"
    view: str | None = None
    filters: dict[str, Any] = Field(default_factory=dict)
    max_age: int | None = Field(default=None, ge=0, le=240)
    datasource_luid: str | None = None
    fields: list[dict[str, Any]] | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    date_format: str | None = None
    ca_bundle: RelPath | None = None
    verify_tls: bool = True
    timeout: float = 60.0

    @model_validator(mode="after")
    def _check_mode(self) -> TableauSourceConfig:
        if self.mode == "view" and not self.view:
            raise ValueError("mode 'view' needs 'view' (a view id or 'Workbook/View')")
        if self.mode == "view" and "/" not in self.view and not _LUID.match(self.view):
            raise ValueError(f"view '{self.view}' is neither a view id (LUID) nor 'Workbook/View'")
        if self.mode == "datasource" and not self.datasource_luid:
            raise ValueError("mode 'datasource' needs 'datasource_luid'")
        if self.mode == "datasource" and not (self.fields or self.columns):
            raise ValueError("mode 'datasource' needs 'fields' (VizQL Data Service fields) or 'columns'")
        bad_fields = [i for i, f in enumerate(self.fields or []) if not f.get("fieldCaption")]
        if bad_fields:
            raise ValueError(f"fields[{bad_fields[0]}] needs 'fieldCaption' (the field's name in the data source)")
        unknown = sorted({v for v in self.columns.values() if v not in FIELD_NAMES})
        if unknown:
            raise ValueError(
                f"columns: {', '.join(unknown)} {'is not a' if len(unknown) == 1 else 'are not'} canonical "
                f"field{'s' if len(unknown) > 1 else ''}; use one of: {', '.join(FIELD_NAMES)}"
            )
        return self


# One `sources:` item: validated by the model that connectors.registry names for its `type`.
SourceConfig = typed_config("source")
