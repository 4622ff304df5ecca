"""How runs happen: schedules, alerts, named reports and backfills."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator

from config.models.base import StrictModel, TargetsConfig
from config.models.destinations import DestinationConfig


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
