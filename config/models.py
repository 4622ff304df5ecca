"""Configuration models: every key a user may write, with its default and its checks.

Each source and destination type has its own model; `type` picks it. Unknown keys are errors.
Paths marked `RelPath` are resolved against the config file's folder (see `config.loader`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from config.schema import FIELD_NAMES


def _resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    if value is None or value == "":
        return value
    base = (info.context or {}).get("base_dir")
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return os.path.normpath(str(p))


RelPath = Annotated[str, AfterValidator(_resolve_path)]


def _check_delimiter(value: str) -> str:
    if value in ("\\t", "tab"):
        return "\t"
    if len(value) != 1:
        raise ValueError(f"delimiter {value!r} must be one character, e.g. ',' or ';' (a tab: \"\\t\" or tab)")
    return value


Delimiter = Annotated[str, AfterValidator(_check_delimiter)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ----------------------------------------------------------------------------- pipeline


class StageConfig(StrictModel):
    name: str
    status: Literal["open", "won", "lost"] = "open"
    probability: float | None = Field(default=None, ge=0, le=1)
    max_days: int | None = Field(default=None, ge=0)


DEFAULT_STAGES: tuple[StageConfig, ...] = (
    StageConfig(name="Lead generation", status="open", probability=0.1, max_days=14),
    StageConfig(name="Qualification", status="open", probability=0.2, max_days=21),
    StageConfig(name="Contact", status="open", probability=0.4, max_days=21),
    StageConfig(name="Proposal", status="open", probability=0.6, max_days=30),
    StageConfig(name="Closing", status="open", probability=0.8, max_days=21),
    StageConfig(name="Won", status="won", probability=1.0),
    StageConfig(name="Lost", status="lost", probability=0.0),
)


class QualificationConfig(StrictModel):
    after_stage: str | None = None  # default: the second open stage
    min_score: int = Field(default=3, ge=0, le=4)


class PipelineConfig(StrictModel):
    stages: list[StageConfig] = Field(default_factory=lambda: [s.model_copy() for s in DEFAULT_STAGES])
    qualification: QualificationConfig = Field(default_factory=QualificationConfig)

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        if not any(s.status == "open" for s in self.stages):
            raise ValueError("at least one stage must have status 'open'")
        q = self.qualification.after_stage
        if q is not None and (problem := after_stage_problem(q, names)):
            raise ValueError(problem)
        return self

    @property
    def open_stages(self) -> list[StageConfig]:
        return [s for s in self.stages if s.status == "open"]

    @property
    def qualification_stage(self) -> str:
        if self.qualification.after_stage:
            return self.qualification.after_stage
        opens = self.open_stages
        return opens[1].name if len(opens) > 1 else opens[0].name


def after_stage_problem(after_stage: str, stage_names: list[str]) -> str | None:
    """Why `qualification.after_stage` is not usable, or None (also run by the loader on raw data)."""
    if after_stage in stage_names:
        return None
    return f"qualification.after_stage '{after_stage}' is not a configured stage; use one of: {', '.join(stage_names)}"


def stage_map_problems(index: int, stage_map: dict[str, str], stage_names: list[str]) -> list[str]:
    """One problem per `sources[index].stage_map` value that is not a configured stage."""
    return [
        f"sources[{index}].stage_map['{label}']: '{target}' is not a configured stage "
        f"(pipeline.stages: {', '.join(sorted(stage_names))})"
        for label, target in stage_map.items()
        if target not in stage_names
    ]


def product_mix_problem(mix: dict[str, float]) -> str | None:
    total = sum(mix.values())
    if abs(total - 1.0) > 0.01:
        return f"targets.product_mix: shares must add up to 1 (they add up to {total:g})"
    return None


class TargetsConfig(StrictModel):
    new_pipeline_per_day: float = 250.0
    new_pipeline_per_day_per_owner: float | None = None
    prospecting_window_days: int = Field(default=30, ge=1)
    max_stage_share: float = Field(default=0.5, ge=0, le=1)
    max_age_factor: float = Field(default=2.0, gt=0)
    max_inactive_days: int = Field(default=30, ge=0)
    max_missing_share: float = Field(default=0.1, ge=0, le=1)
    min_existing_share: float = Field(default=0.2, ge=0, le=1)
    product_mix: dict[str, float] | None = None
    product_mix_tolerance: float = Field(default=0.15, ge=0, le=1)


class InputsConfig(StrictModel):
    spend: dict[str, float] = Field(default_factory=dict)  # period label -> amount
    currency: str = "USD"  # the reporting currency
    rates: dict[str, float] = Field(default_factory=dict)  # currency -> reporting-currency rate


class StateConfig(StrictModel):
    url: str | None = None  # default: sqlite under .state/ next to the config


# ----------------------------------------------------------------------------- sources


class _SourceBase(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    stage_map: dict[str, str] = Field(default_factory=dict)
    raw_sheet: str | None = Field(default=None, max_length=31)


class StageHistoryFileConfig(StrictModel):
    path: RelPath
    columns: dict[str, str] = Field(default_factory=dict)
    date_format: str | None = None
    delimiter: Delimiter = ","
    encoding: str = "utf-8"
    sheet: str | int | None = None


class CsvSourceConfig(_SourceBase):
    type: Literal["csv"]
    path: RelPath
    columns: dict[str, str] = Field(default_factory=dict)  # source header -> canonical field
    date_format: str | None = None
    delimiter: Delimiter = ","
    encoding: str = "utf-8"
    stage_history: StageHistoryFileConfig | None = None


class ExcelSourceConfig(_SourceBase):
    type: Literal["excel"]
    path: RelPath
    sheet: str | int | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    date_format: str | None = None
    stage_history: StageHistoryFileConfig | None = None


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
}
# filled by the connector itself (ids, pipelines, owners, line items), not from `fields`
HUBSPOT_FIXED_FIELDS: frozenset[str] = frozenset(
    {"opportunity_id", "stage", "status", "owner", "team", "product", "stage_entered_date"}
)


class HubSpotSourceConfig(_SourceBase):
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


class SalesforceSourceConfig(_SourceBase):
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


class TableauSourceConfig(_SourceBase):
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


SourceConfig = Annotated[
    CsvSourceConfig
    | ExcelSourceConfig
    | HubSpotSourceConfig
    | SalesforceSourceConfig
    | TableauSourceConfig,
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------- destinations


_WINDOWS_DEVICES = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}


class FileDestinationConfig(StrictModel):
    type: Literal["file"]
    path: RelPath  # may contain {as_of} and {period}

    @field_validator("path", mode="before")
    @classmethod
    def _no_device_names(cls, value: object) -> object:
        """CON, NUL, ... (any extension, any folder) are devices on Windows: a workbook written there is lost."""
        if isinstance(value, str):
            for seg in value.replace("\\", "/").split("/"):
                if seg.split(".", 1)[0].strip().lower() in _WINDOWS_DEVICES:
                    raise ValueError(f"'{seg}' is a reserved device name on Windows (CON, PRN, AUX, NUL, COM0-9, "
                                     "LPT0-9): a workbook written there is lost; choose another name")
        return value


_DRIVE_BAD_CHARS = set('"*:<>?\\|') | {chr(c) for c in range(32)}
_DRIVE_RESERVED = {".lock", "con", "prn", "aux", "nul", "desktop.ini"} | {
    f"{p}{i}" for p in ("com", "lpt") for i in range(10)
}


def onedrive_path_problems(path: str) -> list[str]:
    """Why `path` is not a safe OneDrive/SharePoint file path inside its drive ([] when it is)."""
    if not path.startswith("/"):
        return [f"'{path}' must start with '/' (the drive's root), e.g. /Sales/Pipeline.xlsx"]
    problems = []
    parts = path[1:].split("/")
    for seg in parts:
        if seg in ("", ".", ".."):
            problems.append(f"'{path}' has an empty, '.' or '..' segment: paths cannot leave their folder")
            break
        bad = sorted(set(seg) & _DRIVE_BAD_CHARS)
        if bad:
            problems.append(f"'{seg}' contains characters OneDrive does not allow: {' '.join(map(repr, bad))}")
        stem = seg.split(".", 1)[0].lower()
        if seg.lower() in _DRIVE_RESERVED or stem in _DRIVE_RESERVED - {".lock", "desktop.ini"}:
            problems.append(f"'{seg}' is a reserved name on OneDrive/SharePoint")
        if seg.startswith("~$") or "_vti_" in seg.lower():
            problems.append(f"'{seg}' is not allowed on OneDrive/SharePoint ('~$' prefix or '_vti_')")
        if seg != seg.strip() or seg.endswith("."):
            problems.append(f"'{seg}' starts or ends with a space or ends with '.'")
    if not problems and not parts[-1].lower().endswith(".xlsx"):
        problems.append(f"'{path}' must name an .xlsx file")
    if len(path) > 400:
        problems.append(f"'{path[:40]}...' is longer than 400 characters")
    return problems


class OneDriveDestinationConfig(StrictModel):
    type: Literal["onedrive"]
    tenant_id: str
    client_id: str
    client_secret: str | None = Field(default=None, repr=False)  # never logged or shown
    certificate_path: RelPath | None = None
    certificate_thumbprint: str | None = None
    auth: Literal["app", "delegated"] = "app"
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_bundle: RelPath | None = None
    verify_tls: bool = True
    user: str | None = None
    site: str | None = None
    drive_id: str | None = None
    me: bool = False
    path: str
    mode: Literal["replace", "update_sheets"] = "replace"
    conflict: Literal["replace", "fail_if_changed"] = "replace"
    on_locked: Literal["wait", "sibling", "fail"] = "wait"
    chunk_size: int = Field(default=10 * 1024 * 1024, gt=0, lt=60 * 1024 * 1024)  # Graph: pieces under 60 MiB
    lock_wait_max: float = Field(default=900.0, ge=0)  # on_locked: wait gives up after this many seconds
    # delegated: msal's token cache (kept 0600); by default in .state/ next to the config file
    token_cache: RelPath | None = Field(default=".state/msal-token-cache.json", validate_default=True)
    timeout: float = 60.0

    @model_validator(mode="after")
    def _check(self) -> OneDriveDestinationConfig:
        where = [k for k in ("user", "site", "drive_id") if getattr(self, k)] + (["me"] if self.me else [])
        if len(where) != 1:
            raise ValueError("give exactly one of user / site / drive_id / me: true")
        if self.me and self.auth != "delegated":
            raise ValueError("'me: true' needs auth: delegated (an app has no 'me' drive)")
        if self.auth == "app" and not (self.client_secret or self.certificate_path):
            raise ValueError("auth 'app' needs client_secret or certificate_path")
        if self.certificate_path and not self.certificate_thumbprint:
            raise ValueError("certificate_path needs certificate_thumbprint")
        path_problems = onedrive_path_problems(self.path)
        if path_problems:
            raise ValueError("path: " + "; ".join(path_problems))
        if self.chunk_size % (320 * 1024):
            raise ValueError("chunk_size must be a multiple of 327680 bytes (320 KiB)")
        if self.mode == "update_sheets" and self.auth != "delegated":
            raise ValueError(
                "mode 'update_sheets' uses the Graph Excel API, which does not take app-only tokens: "
                "set auth: delegated and sign in once with 'pipeline-sync login'"
            )
        return self


DestinationConfig = Annotated[
    FileDestinationConfig | OneDriveDestinationConfig, Field(discriminator="type")
]


# ----------------------------------------------------------------------------- schedules and alerts


def _check_cron(value: str) -> str:
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    parts = value.split()
    if len(parts) != 5:
        raise ValueError(f"cron '{value}' must have 5 fields (minute hour day month weekday), e.g. '0 6 * * 1-5'")
    try:
        CronSim(value, datetime(2020, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"cron '{value}' is not a valid cron expression ({exc}); e.g. '0 6 * * 1-5'") from exc
    return value


class ScheduleConfig(StrictModel):
    """One cron schedule of this report: local wall-clock times in `timezone` (default: the config's)."""

    cron: Annotated[str, AfterValidator(_check_cron)]
    timezone: str | None = None
    catch_up: Literal["latest", "all", "skip"] = "latest"  # slots missed while nothing was running
    overlap: Literal["wait", "skip"] = "wait"  # when a run of this report is still in progress

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"'{value}' is not an IANA time zone (e.g. Europe/Berlin)") from exc
        return value


NotifyEvent = Literal["failure", "success", "flags_changed"]


class NotifyConfig(StrictModel):
    """One apprise target (Slack, Teams, email, webhook ...), normally `${ENV}`: the URL is a secret."""

    url: str = Field(min_length=1, repr=False)
    on: list[NotifyEvent] = Field(default_factory=lambda: ["failure"], min_length=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if "://" not in value:  # the value is a secret: never echo it
            raise ValueError("is not an apprise URL (scheme://...), e.g. slack://..., json://host/path, mailtos://...")
        return value


# ----------------------------------------------------------------------------- reports and backfills


class ReportFilterConfig(StrictModel):
    """Which opportunities a named report shows. Each list given keeps the rows whose value is in
    it (trimmed, case-insensitive); rows must match every list given. No lists: every row."""

    owners: list[str] | None = None
    teams: list[str] | None = None
    products: list[str] | None = None
    sources: list[str] | None = None  # names from `sources:` (e.g. one CRM pipeline per source)


class ReportConfig(StrictModel):
    """One named report of `reports:`: shares the config's sources, has its own rows and outputs."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # also its key in the snapshot store
    filter: ReportFilterConfig = Field(default_factory=ReportFilterConfig)
    targets: TargetsConfig | None = None  # the keys given here override the top-level targets
    destinations: list[DestinationConfig] = Field(min_length=1)
    schedule: list[ScheduleConfig] = Field(default_factory=list)


class BackfillConfig(StrictModel):
    """`pipeline-sync backfill` (docs/backfill.md)."""

    # true: one workbook per date (destination paths need {as_of}); false: snapshots only (Trends/Changes)
    write_workbooks: bool = False
    concurrency: int = Field(default=2, ge=1, le=32)  # dates rendered and published at once


# ----------------------------------------------------------------------------- top level


class AppConfig(StrictModel):
    timezone: str = "UTC"
    period: Literal["month", "quarter", "year"] = "quarter"
    fiscal_year_start_month: int = Field(default=1, ge=1, le=12)
    report: str = Field(default="pipeline", pattern=r"^[A-Za-z0-9_.\-]+$")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    sources: list[SourceConfig] = Field(min_length=1)
    destinations: list[DestinationConfig] = Field(default_factory=list)  # none: only the named reports
    schedule: list[ScheduleConfig] = Field(default_factory=list)
    notify: list[NotifyConfig] = Field(default_factory=list)
    reports: list[ReportConfig] = Field(default_factory=list)
    runner: Literal["thread", "dask"] = "thread"  # where the reports of a run fan out
    dask_address: str | None = None  # runner: dask: a scheduler (tcp://host:8786); none: a local cluster
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"'{value}' is not an IANA time zone (e.g. Europe/Berlin)") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> AppConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        stages = [s.name for s in self.pipeline.stages]
        problems = []
        for i, src in enumerate(self.sources):
            problems += stage_map_problems(i, src.stage_map, stages)
        if self.targets.product_mix is not None and (problem := product_mix_problem(self.targets.product_mix)):
            problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        for sched in self.schedule:
            if sched.timezone is None:
                sched.timezone = self.timezone
        return self

    @model_validator(mode="after")
    def _check_reports(self) -> AppConfig:
        if not self.destinations and not self.reports:
            raise ValueError("destinations: required key is missing (give at least one destination, "
                             "or named reports: each with its own destinations)")
        problems = []
        names = [r.name for r in self.reports] + ([self.report] if self.destinations else [])
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"reports: names must be unique and differ from 'report' ({self.report}, "
                            f"produced from the top-level destinations); repeated: {', '.join(dupes)}")
        sources = {s.name for s in self.sources}
        for i, rep in enumerate(self.reports):
            unknown = sorted(set(rep.filter.sources or []) - sources)
            if unknown:
                problems.append(f"reports[{i}].filter.sources: {', '.join(unknown)} not in sources "
                                f"(sources: {', '.join(sorted(sources))})")
            mix = rep.targets.product_mix if rep.targets is not None else None
            if mix is not None and (problem := product_mix_problem(mix)):
                problems.append(f"reports[{i}].{problem}")
            for sched in rep.schedule:
                if sched.timezone is None:
                    sched.timezone = self.timezone
        if self.dask_address and self.runner != "dask":
            problems.append("dask_address is set but runner is not 'dask': set runner: dask, or remove dask_address")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
