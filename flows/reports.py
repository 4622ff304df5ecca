"""Several named reports from one config (`reports:`): which reports a run produces, and how they fan out.

Each report is the top-level pipeline config with its own `report` name (its key in the
snapshot store), rows (its `filter`), targets (keys given override the top-level ones),
destinations and schedule. The top-level `destinations`, when given, produce the unfiltered
top-level report as well. `flows.pipeline.run_reports` runs them: sources extracted and validated
once, then one `produce_report` call per report through a `FanOut`.

Fan-out is an argument, never a guess: `thread_fan_out` (a thread pool) unless the caller passes
another. The Prefect layer passes `flows.sync.prefect_fan_out` (each report a Prefect task on the
task runner `runner:` chooses: threads, or Dask). A report's call gets picklable inputs only (no
engine, no callbacks), so it can run on a Dask worker elsewhere. This module imports neither
Prefect nor flows.pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from config.models import AppConfig, ReportConfig, ReportFilterConfig
from connectors.errors import PipelineSyncError
from connectors.http.session import Observer
from transforms.report_filter import apply_filter, is_filtered

MAX_THREADS = 8
Call = tuple[str, Callable[..., Any], tuple[Any, ...]]  # (task name, function, arguments)
FanOut = Callable[[AppConfig, Sequence[Call]], list[Any]]  # each call's result in order, or the exception it raised
R = TypeVar("R")
V = TypeVar("V")


@dataclass
class ReportOutcome:
    """What one report's task hands back (small and picklable)."""

    report: str
    outputs: list[str]
    flags_count: int | None
    open_deals: int | None
    rows: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    snapshot: Any = None  # config.snapshot_types.SnapshotRecord, committed by the run


@dataclass(frozen=True)
class ReportSpec:
    """One report of a run: its effective config and its row filter."""

    config: AppConfig
    filter: ReportFilterConfig

    @property
    def name(self) -> str:
        return self.config.report


def report_config(cfg: AppConfig, rep: ReportConfig) -> AppConfig:
    """The top-level config as `rep` sees it (no validation needed: every part is validated)."""
    targets = cfg.targets
    if rep.targets is not None:
        targets = cfg.targets.model_copy(update={k: getattr(rep.targets, k) for k in rep.targets.model_fields_set})
    return cfg.model_copy(update={"report": rep.name, "targets": targets, "destinations": rep.destinations,
                                  "schedule": rep.schedule, "reports": []})


def report_specs(cfg: AppConfig, names: Sequence[str] | None = None) -> list[ReportSpec]:
    """The reports a run produces: the top-level one (when it has destinations), then each named one.

    `names` selects some of them; an unknown name is a PipelineSyncError listing the known ones.
    """
    specs = [ReportSpec(cfg.model_copy(update={"reports": []}), ReportFilterConfig())] if cfg.destinations else []
    specs += [ReportSpec(report_config(cfg, r), r.filter) for r in cfg.reports]
    if names:
        known = [s.name for s in specs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PipelineSyncError(f"unknown report(s): {', '.join(unknown)}; this config has: {', '.join(known)}")
        specs = [s for s in specs if s.name in names]
    return specs


def for_report(run: R, cfg: AppConfig) -> R:
    """A copy of `run` (a flows.pipeline.RunContext) for one report: its config, its own engine
    (made lazily), no callbacks."""
    return dataclasses.replace(run, loaded=dataclasses.replace(run.loaded, config=cfg), observer=Observer(),
                               _engine=None)


def report_rows(validated: V, flt: ReportFilterConfig) -> V:
    """The validated rows (a flows.pipeline.Validated) a report shows. Raw sheets are left out of
    filtered reports (their rows are the source's own and cannot be filtered safely)."""
    if not is_filtered(flt):
        return validated
    return dataclasses.replace(validated, opportunities=apply_filter(validated.opportunities, flt),
                               rejected=apply_filter(validated.rejected, flt), raw=[])


# ----------------------------------------------------------------------------- fan-out


def thread_fan_out(cfg: AppConfig, calls: Sequence[Call]) -> list[Any]:
    """The default FanOut: the calls on a thread pool (at most MAX_THREADS)."""
    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=min(len(calls), MAX_THREADS), thread_name_prefix="report") as pool:
        futures = [pool.submit(fn, *args) for _, fn, args in calls]
        return [outcome(f.result) for f in futures]


def outcome(get: Callable[[], Any]) -> Any:
    """`get()`, or the exception it raised (collected: the other reports still finish)."""
    try:
        return get()
    except Exception as exc:
        return exc
