"""Shared pieces of every config model: strict models, paths, the pipeline, targets, inputs, state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from config.models.finance import DatedRate, RateValue, rate_list_problem, read_rates_file


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
    # forecast category of open deals in this stage when the source gives none (docs/metrics.md)
    forecast_category: Literal["pipeline", "best_case", "commit", "omitted"] | None = None


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
    # issue 22 (docs/metrics.md "Slippage", "Targets, attainment and coverage")
    max_pushes: int = Field(default=3, ge=1)  # M4 pushed_repeatedly: push_count >= this
    quota: dict[str, Annotated[float, Field(ge=0)]] | None = None  # period label -> team quota
    quota_by_owner: dict[str, dict[str, Annotated[float, Field(ge=0)]]] | None = None  # owner -> label -> quota
    min_coverage: float = Field(default=3.0, gt=0)  # M1 low_coverage: coverage below this
    coverage_grace_days: int = Field(default=14, ge=0)  # ... with more than this many days left in the period


class InputsConfig(StrictModel):
    spend: dict[str, float] = Field(default_factory=dict)  # period label -> amount
    currency: str = "USD"  # the reporting currency
    # currency -> reporting-currency rate: one number, or a dated list [{from: 2026-01-01, rate: 1.1}, ...]
    rates: dict[str, RateValue] = Field(default_factory=dict)
    rates_file: RelPath | None = None  # a CSV of dated rates: currency,from,rate (merged into `rates`)

    @model_validator(mode="after")
    def _check_rates(self) -> InputsConfig:
        problems = [p for cur, value in self.rates.items() if (p := rate_list_problem(cur, value))]
        if problems:
            raise ValueError("; ".join(problems))
        if self.rates_file:
            try:
                from_file = read_rates_file(self.rates_file)
            except ValueError as exc:
                raise ValueError(f"rates_file: {exc}") from None
            have = {k.upper(): k for k in self.rates}
            for cur, rows in from_file.items():
                if cur in have and not _same_rates(self.rates[have[cur]], rows):
                    raise ValueError(f"rates: {cur} is in both rates and rates_file; keep one")
                self.rates[have.get(cur, cur)] = rows
        for value in self.rates.values():
            if isinstance(value, list):
                value.sort(key=lambda r: r.from_)
        return self

    @property
    def dated(self) -> bool:
        """Whether any rate depends on the date (a dated list)."""
        return any(isinstance(v, list) for v in self.rates.values())


def _same_rates(a: RateValue, b: list[DatedRate]) -> bool:
    return isinstance(a, list) and sorted((r.from_, r.rate) for r in a) == sorted((r.from_, r.rate) for r in b)


class StateConfig(StrictModel):
    url: str | None = None  # default: sqlite under .state/ next to the config
