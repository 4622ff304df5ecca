"""The whole config file (`AppConfig`): top-level keys and the checks across sections."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from config.models.base import (
    InputsConfig,
    PipelineConfig,
    StateConfig,
    StrictModel,
    TargetsConfig,
    product_mix_problem,
    stage_map_problems,
)
from config.models.destinations import DestinationConfig
from config.models.finance import FiscalCalendarConfig
from config.models.operations import BackfillConfig, NotifyConfig, ReportConfig, ScheduleConfig
from config.models.sources import SourceConfig


class AppConfig(StrictModel):
    timezone: str = "UTC"
    period: Literal["month", "quarter", "year"] = "quarter"
    fiscal_year_start_month: int = Field(default=1, ge=1, le=12)
    fiscal_calendar: FiscalCalendarConfig | None = None  # 4-4-5 / 4-5-4 / 5-4-4 weeks instead of months
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
        if self.fiscal_calendar is not None and self.fiscal_year_start_month != 1:
            problems.append("fiscal_year_start_month and fiscal_calendar are both set: a week-based calendar starts "
                            "on fiscal_calendar.year_start; remove fiscal_year_start_month")
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
