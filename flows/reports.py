"""Several named reports from one config (`reports:`): sources extracted once, reports fanned out.

Each report is the top-level pipeline config with its own `report` name (its key in the
snapshot store), rows (its `filter`), targets (keys given override the top-level ones),
destinations and schedule. The top-level `destinations`, when given, produce the unfiltered
top-level report as well.

Fan-out: inside a Prefect flow run, each report is a task submitted to a task runner chosen by
the config (`runner: thread` -> ThreadPoolTaskRunner, `runner: dask` -> prefect-dask's
DaskTaskRunner on `dask_address` or a temporary local cluster); outside Prefect, a thread pool.
A report's task gets picklable inputs only (no engine, no callbacks), so it can run on a Dask
worker elsewhere. Snapshots of the reports that succeeded are committed in one transaction with
the sources' state; a failed report fails the run after the others are published.
"""

from __future__ import annotations

import dataclasses
import inspect
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from config.models import AppConfig, ReportConfig, ReportFilterConfig
from connectors.destinations import local_file
from connectors.errors import PipelineSyncError
from connectors.extracted import Extracted
from connectors.http.session import Observer
from flows.pipeline import (
    RunContext,
    RunResult,
    StepWrapper,
    Validated,
    analyze,
    commit_state,
    keep_validated,
    publish,
    release_rows,
    render,
    validate,
)
from transforms.report_filter import apply_filter, describe, is_filtered

MAX_THREADS = 8
Call = tuple[str, Callable[..., Any], tuple[Any, ...]]  # (task name, function, arguments)


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


def for_report(run: RunContext, cfg: AppConfig) -> RunContext:
    """A copy of `run` for one report: its config, its own engine (made lazily), no callbacks."""
    return dataclasses.replace(run, loaded=dataclasses.replace(run.loaded, config=cfg), observer=Observer(),
                               _engine=None)


def report_rows(validated: Validated, flt: ReportFilterConfig) -> Validated:
    """The validated rows a report shows. Raw sheets are left out of filtered reports (their rows
    are the source's own and cannot be filtered safely)."""
    if not is_filtered(flt):
        return validated
    return dataclasses.replace(validated, opportunities=apply_filter(validated.opportunities, flt),
                               rejected=apply_filter(validated.rejected, flt), raw=[])


def produce_report(run: RunContext, validated: Validated, flt: ReportFilterConfig) -> ReportOutcome:
    """Filter, analyse, render once and publish to each of the report's destinations."""
    rows = report_rows(validated, flt)
    result = analyze(run, rows)
    if is_filtered(flt):
        result.about += [("report filter", describe(flt)), ("opportunities in this report", len(rows.opportunities))]
    staging = local_file.staging_dir(f"pipeline-sync-{run.config.report}-")
    try:
        staged, counts, notes = render(run, result, staging)
        outputs = [publish(run, i, staged) for i in range(len(run.config.destinations))]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    analytics = result.analytics
    snapshot = getattr(analytics, "snapshot", None)
    return ReportOutcome(run.config.report, outputs, result.flags_count,
                         None if snapshot is None else len(snapshot.deals), counts, notes, snapshot)


# ----------------------------------------------------------------------------- fan-out


def _in_prefect_flow() -> bool:
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def fan_out(cfg: AppConfig, calls: list[Call]) -> list[Any]:
    """Run the calls in parallel; each result in order, or the exception it raised."""
    if not calls:
        return []
    if _in_prefect_flow():
        return prefect_fan_out(cfg, calls)
    with ThreadPoolExecutor(max_workers=min(len(calls), MAX_THREADS), thread_name_prefix="report") as pool:
        futures = [pool.submit(fn, *args) for _, fn, args in calls]
        return [_outcome(f.result) for f in futures]


def _outcome(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception as exc:  # collected: the other reports still finish
        return exc


def task_runner(cfg: AppConfig, n: int) -> Any:
    """The Prefect task runner for `cfg.runner`."""
    if cfg.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise PipelineSyncError("runner: dask needs prefect-dask: pip install 'pipeline-sync[dask]'") from exc
        return DaskTaskRunner(address=cfg.dask_address) if cfg.dask_address else DaskTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=min(max(n, 1), MAX_THREADS))


def prefect_fan_out(cfg: AppConfig, calls: list[Call]) -> list[Any]:
    """Each call as a Prefect task (retried on RetriableAPIError) on the configured task runner."""
    from flows.sync import as_task

    with task_runner(cfg, len(calls)) as runner:
        futures = []
        for name, fn, args in calls:
            task = as_task(fn, name).with_options(retries=2, retry_delay_seconds=[30, 120])
            futures.append(runner.submit(task, dict(inspect.signature(fn).bind(*args).arguments)))
        return [_outcome(f.result) for f in futures]


# ----------------------------------------------------------------------------- a run


def run_reports(run: RunContext, extracted: list[Extracted], failures: dict[str, str], *,
                wrap: StepWrapper, started: float, names: Sequence[str] | None = None) -> RunResult:
    """Validate once, produce every report (or those in `names`) in parallel, then commit state
    and the snapshots."""
    specs = report_specs(run.config, names)
    validated = wrap(validate, "validate")(run, extracted, failures)
    release_rows(extracted)
    _ = run.engine  # tables exist before the reports open their own connections
    calls: list[Call] = [(f"report-{s.name}", produce_report, (for_report(run, s.config), validated, s.filter))
                         for s in specs]
    results = fan_out(run.config, calls)
    done = [r for r in results if isinstance(r, ReportOutcome)]
    wrap(commit_state, "commit-state")(run, extracted, None,
                                       snapshots=[(o.report, o.snapshot) for o in done if o.snapshot is not None])
    keep_validated(run, extracted, validated)
    failed = [(s.name, r) for s, r in zip(specs, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        if len(failed) == 1 and len(specs) == 1:
            raise failed[0][1]
        detail = "; ".join(f"{name}: {exc}" for name, exc in failed)
        raise PipelineSyncError(f"{len(failed)} of {len(specs)} reports failed ({detail}); "
                                f"the others were published") from failed[0][1]
    flags = [o.flags_count for o in done if o.flags_count is not None]
    return RunResult(run.run_id, run.as_of, run.period, validated.sources, [p for o in done for p in o.outputs],
                     sum(flags) if flags else None, {}, time.perf_counter() - started,
                     [n for o in done for n in o.notes],
                     reports=[{"report": o.report, "outputs": o.outputs, "flags": o.flags_count,
                               "open_deals": o.open_deals, "rows": o.rows} for o in done])
