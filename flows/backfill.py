"""`pipeline-sync backfill`: the pipeline as it stood on each past date, stored and (optionally) written.

Sources are read once for the whole backfill: those whose type rebuilds its rows from stored
state (connectors.registry: the CRM sources) from what the last run committed, files from disk,
the others (Tableau) live; `refetch` pulls every source again (and commits what it pulled, as a
run would). Each date is an as-of reconstruction
(`transforms.analytics` with stage history) of every report of the config.

Order and concurrency: a date's Trends/Changes (and the flags comparing with the previous
snapshot) read the snapshots of the dates before it, so each report's dates are computed in
date order and each snapshot is stored before the next date is computed; rendering and
publishing the workbooks (the slow part) run `concurrency` at a time. A date is complete when
its completion row is committed, in the same transaction as its snapshot (after its workbook
is published): a second backfill skips complete dates unless `force`, so an interrupted
backfill resumes where it stopped. If a date's computation fails, that report's later dates are
not run (their Changes would otherwise compare with the wrong date); a failed publish only
fails that date.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from config.loader import ConfigError, LoadedConfig, load_config
from config.models import AppConfig
from connectors import registry
from connectors.destinations import local_file
from connectors.errors import PipelineSyncError
from connectors.extracted import Extracted
from connectors.state import backfill as backfill_state
from connectors.state.snapshots import save_snapshot
from connectors.state.source_rates import load_rates
from connectors.state.source_state import load_records
from flows.pipeline import (
    RunContext,
    SourceReport,
    Transformed,
    Validated,
    analyze,
    commit_state,
    extract_source,
    keep_validated,
    prepare,
    publish,
    render,
    validate,
)
from flows.reports import ReportSpec, for_report, report_rows, report_specs
from transforms.fiscal import calendar_for
from transforms.periods import CalendarLike, as_calendar, reporting_period
from transforms.report_filter import describe, is_filtered

Every = Literal["day", "week", "month", "quarter"]
EVERY: tuple[str, ...] = ("day", "week", "month", "quarter")
Status = Literal["done", "skipped", "failed", "not run"]


@dataclass
class DateOutcome:
    report: str
    as_of: date
    status: Status
    open_deals: int | None = None
    flags: int | None = None
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class BackfillResult:
    dates: list[date]
    outcomes: list[DateOutcome]
    sources: list[SourceReport]
    write_workbooks: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[DateOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "not run")]


def backfill_dates(start: date, end: date, every: str, calendar: CalendarLike = 1) -> list[date]:
    """The as_of dates of a backfill, oldest first: every day; the last day of each week (the
    Sunday of an ISO week; with a week-based fiscal calendar, of its fiscal week); or the last day
    of each month / quarter of the calendar; only dates within start..end."""
    if every not in EVERY:
        raise ValueError(f"--every must be one of {', '.join(EVERY)} (got {every!r})")
    if start > end:
        raise ValueError(f"--from {start.isoformat()} is after --to {end.isoformat()}")
    if every == "day":
        return [start + timedelta(days=i) for i in range((end - start).days + 1)]
    cal = as_calendar(calendar)
    if every == "week":
        first = cal.week_end(start)
        return [first + timedelta(weeks=i) for i in range((end - first).days // 7 + 1)] if first <= end else []
    out: list[date] = []
    d = start
    while d <= end:
        period_end = reporting_period(d, every, cal).full_end
        if period_end <= end:
            out.append(period_end)
        d = period_end + timedelta(days=1)
    return out


def workbook_problems(cfg: AppConfig, specs: list[ReportSpec]) -> list[str]:
    """Destinations that would be overwritten by every date (no {as_of} in the path)."""
    problems = []
    names = {r.name: i for i, r in enumerate(cfg.reports)}
    for spec in specs:
        where = f"reports[{names[spec.name]}]." if spec.name in names else ""
        for j, dest in enumerate(spec.config.destinations):
            if "{as_of}" not in dest.path:
                problems.append(f"{where}destinations[{j}].path '{dest.path}' has no {{as_of}}: every backfill date "
                                "would overwrite it; add {as_of} to the path, or set backfill.write_workbooks: false")
    return problems


# ----------------------------------------------------------------------------- sources


def load_sources(run: RunContext, *, refetch: bool) -> tuple[list[Extracted], list[str]]:
    """Every source once: those whose type rebuilds its rows from stored records (connectors.registry)
    from them unless `refetch`, the others pulled."""
    extracted, notes = [], []
    for i, src in enumerate(run.config.sources):
        kind = registry.source_type(src.type)
        from_state = registry.history_rebuilder(src.type)
        if refetch or from_state is None:
            extracted.append(extract_source(run, i))
            if not kind.local and not refetch:
                notes.append(f"source {src.name}: {kind.label or kind.name} keeps no stored state; pulled live")
            continue
        payloads = load_records(run.engine, src.name)
        if not payloads:
            raise PipelineSyncError(f"source '{src.name}' has no stored records yet: run 'pipeline-sync run' once, "
                                    "or backfill with --refetch to pull it now")
        stored = from_state(src, payloads)
        rates = load_rates(run.engine, src.name) if getattr(src, "reads_rates", False) else None
        extracted.append(dataclasses.replace(stored, stale=False, notes=[f"source '{src.name}': stored records"],
                                             rates=rates))
        notes.append(f"source {src.name}: {len(payloads):,} stored records (use --refetch to pull again)")
    return extracted, notes


# ----------------------------------------------------------------------------- one date


def dated_run(run: RunContext, cfg: AppConfig, as_of: date) -> RunContext:
    """`run` for one report at one date (sharing the run's engine)."""
    period = reporting_period(as_of, cfg.period, calendar_for(cfg))
    return dataclasses.replace(for_report(run, cfg), as_of=as_of, period=period,
                               run_id=f"{run.run_id}-{as_of:%Y%m%d}", _engine=run.engine)


def _about(spec: ReportSpec, rows: Validated) -> list[tuple[str, Any]]:
    extra: list[tuple[str, Any]] = [("backfill", "yes")]
    if is_filtered(spec.filter):
        extra += [("report filter", describe(spec.filter)), ("opportunities in this report", len(rows.opportunities))]
    return extra


def _publish_and_commit(run: RunContext, result: Transformed) -> str:
    """Render and publish one date's workbook, then commit its snapshot and completion together."""
    staging = local_file.staging_dir("pipeline-sync-backfill-")
    try:
        staged, _, _ = render(run, result, staging)
        outputs = [publish(run, i, staged) for i in range(len(run.config.destinations))]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    output = ", ".join(outputs)
    _commit(run, result, wrote_workbook=True, output=output)
    return output


def _commit(run: RunContext, result: Transformed, *, wrote_workbook: bool, output: str | None) -> None:
    snap = result.analytics.snapshot
    with run.engine.begin() as conn:
        save_snapshot(conn, run.config.report, snap)
        if output is not None or not wrote_workbook:
            backfill_state.mark_done(conn, run.config.report, run.as_of, open_deals=len(snap.deals),
                                     flags=result.flags_count, wrote_workbook=wrote_workbook, output=output)


# ----------------------------------------------------------------------------- a backfill


class _Progress:
    def __init__(self, total: int, echo: Callable[[str], None] | None):
        self.total, self.n, self.echo, self.lock = total, 0, echo, threading.Lock()

    def __call__(self, o: DateOutcome) -> None:
        with self.lock:
            self.n += 1
            if self.echo is None:
                return
            detail = {"done": f"{o.open_deals} open, {o.flags} flags, {o.seconds:.1f}s",
                      "skipped": "already complete (--force recomputes)",
                      "failed": o.error or "", "not run": o.error or ""}[o.status]
            self.echo(f"[{self.n}/{self.total}] {o.report} {o.as_of.isoformat()}: {o.status} ({detail})"
                      + (f" -> {o.output}" if o.status == "done" and o.output else ""))


def _report_dates(run: RunContext, spec: ReportSpec, validated: Validated, dates: list[date], *, force: bool,
                  write: bool, concurrency: int, progress: _Progress) -> list[DateOutcome]:
    rows = report_rows(validated, spec.filter)
    if force:
        with run.engine.begin() as conn:
            backfill_state.forget(conn, spec.name, dates)
    done = backfill_state.completed(run.engine, spec.name)
    outcomes: dict[date, DateOutcome] = {}
    broken: date | None = None
    inflight: deque[tuple[date, float, Transformed, Future[str]]] = deque()

    def settle(item: tuple[date, float, Transformed, Future[str]]) -> None:
        d, t0, result, fut = item
        o = DateOutcome(spec.name, d, "done", len(result.analytics.snapshot.deals), result.flags_count)
        try:
            o.output = fut.result()
        except Exception as exc:
            o.status, o.error = "failed", f"publish: {exc}"
        o.seconds = time.perf_counter() - t0
        outcomes[d] = o
        progress(o)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="backfill") as pool:
        for d in dates:
            prior = done.get(d)
            if prior is not None and not force and (prior.wrote_workbook or not write):
                outcomes[d] = DateOutcome(spec.name, d, "skipped", prior.open_deals, prior.flags, prior.output)
                progress(outcomes[d])
                continue
            if broken is not None:
                outcomes[d] = DateOutcome(spec.name, d, "not run", error=f"{broken.isoformat()} failed first")
                progress(outcomes[d])
                continue
            t0 = time.perf_counter()
            drun = dated_run(run, spec.config, d)
            try:
                result = analyze(drun, rows)
                if result.analytics is None:
                    raise PipelineSyncError("the analytics package is not installed: nothing to backfill")
                result.about += _about(spec, rows)
                # stored now: the next date's Trends/Changes read it (its completion comes after publishing)
                _commit(drun, result, wrote_workbook=write, output=None)
            except Exception as exc:
                broken = d
                outcomes[d] = DateOutcome(spec.name, d, "failed", error=str(exc) or type(exc).__name__,
                                          seconds=time.perf_counter() - t0)
                progress(outcomes[d])
                continue
            if not write:
                outcomes[d] = DateOutcome(spec.name, d, "done", len(result.analytics.snapshot.deals),
                                          result.flags_count, "snapshot only", seconds=time.perf_counter() - t0)
                progress(outcomes[d])
                continue
            inflight.append((d, t0, result, pool.submit(_publish_and_commit, drun, result)))
            while len(inflight) >= concurrency:  # bounded: at most `concurrency` workbooks in memory
                settle(inflight.popleft())
        while inflight:
            settle(inflight.popleft())
    return [outcomes[d] for d in dates]


def backfill(config_path: str | Path, start: date, end: date, every: str, *, force: bool = False,
             refetch: bool = False, concurrency: int | None = None, reports: list[str] | None = None,
             loaded: LoadedConfig | None = None, echo: Callable[[str], None] | None = None) -> BackfillResult:
    """Compute, store and (with backfill.write_workbooks) write every report at every date.

    Raises ConfigError / PipelineSyncError before any date when the config or a source cannot be
    used; failures of single dates are in the result (`failed`).
    """
    t0 = time.perf_counter()
    loaded = loaded or load_config(config_path)
    cfg = loaded.config
    specs = report_specs(cfg, reports)
    write = cfg.backfill.write_workbooks
    if write and (problems := workbook_problems(cfg, specs)):
        raise ConfigError(loaded.path, problems)
    dates = backfill_dates(start, end, every, calendar_for(cfg))
    if not dates:
        raise PipelineSyncError(f"no {every} end between {start.isoformat()} and {end.isoformat()}: widen the range")
    concurrency = concurrency or cfg.backfill.concurrency
    if concurrency < 1:
        raise PipelineSyncError(f"--concurrency must be at least 1 (got {concurrency})")
    run = prepare(config_path, dates[-1], loaded=loaded)
    extracted, notes = load_sources(run, refetch=refetch)
    validated = validate(run, extracted, {})
    if refetch:
        commit_state(run, extracted, None, snapshots=[])  # what was pulled, as a run commits it
        keep_validated(run, extracted, validated)
    progress = _Progress(len(dates) * len(specs), echo)
    outcomes: list[DateOutcome] = []
    for spec in specs:
        outcomes += _report_dates(run, spec, validated, dates, force=force, write=write, concurrency=concurrency,
                                  progress=progress)
    return BackfillResult(dates, outcomes, validated.sources, write, time.perf_counter() - t0, notes)


def outcome_table(result: BackfillResult) -> str:
    """The final table: date, report, status, open deals, flags, output."""
    head = ("date", "report", "status", "open deals", "flags", "output")
    rows = [(o.as_of.isoformat(), o.report, o.status, "" if o.open_deals is None else f"{o.open_deals:,}",
             "" if o.flags is None else f"{o.flags:,}", o.output or o.error or "") for o in result.outcomes]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in [head, *rows]]
    counts = {s: sum(o.status == s for o in result.outcomes) for s in ("done", "skipped", "failed", "not run")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" in {result.seconds:.1f}s")
    return "\n".join(lines)


__all__ = ["BackfillResult", "DateOutcome", "backfill", "backfill_dates", "outcome_table"]
