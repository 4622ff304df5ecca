"""The sync as plain functions, one per step; `run_pipeline` calls them in order.

The Prefect flow (flows/sync.py) runs the same `run_pipeline` with each step wrapped as a
task; tests call these functions directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from config.loader import LoadedConfig, load_config
from config.models import AppConfig, ReportFilterConfig
from config.workbook import SheetData, SummaryData
from connectors import redact as redaction
from connectors import registry
from connectors.destinations import local_file
from connectors.errors import PipelineSyncError
from connectors.extracted import STALE_NOTE, ExtractContext, Extracted
from connectors.http.session import Observer, RetryPolicy
from connectors.redact import redact
from connectors.state.db import default_state_url, make_engine
from connectors.state.snapshots import load_history
from connectors.state.validated_cache import SourceRows, ValidatedCache
from connectors.state.validated_patch import Merged, origin
from flows import kept_workbook
from flows.held_rows import HeldRowsAhead
from flows.merge_order import stable_sort_order
from flows.reports import (
    Call,
    FanOut,
    ReportOutcome,
    for_report,
    report_rows,
    report_specs,
    thread_fan_out,
)
from flows.stage_meter import StageTime, measured
from transforms.analytics import build_analytics
from transforms.canonical import ROW_COLUMN, canonicalize, canonicalize_history, empty_opportunities
from transforms.currency import RateTable, rate_table
from transforms.field_history import canonicalize_field_history
from transforms.fiscal import calendar_for
from transforms.periods import Period, reporting_period
from transforms.report_filter import describe, is_filtered
from transforms.workbook_layout import (
    about_sheet,
    excel_limits,
    opportunities_sheet,
    raw_sheets,
    rejected_sheet,
)

log = logging.getLogger("pipeline_sync")
T = TypeVar("T")
Step = Callable[..., Any]
StepWrapper = Callable[[Step, str], Step]


def package_version() -> str:
    try:
        return version("pipeline-sync")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class SourceReport:
    name: str
    type: str
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    seconds: float
    stale: bool = False
    error: str | None = None
    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    reused: bool = False  # unchanged since the last run: its validated rows were reused
    validated_rows: int = 0  # records validated this run (the others came validated from the last run)
    notes: tuple[str, ...] = ()  # what the connector said about this run (Extracted.notes), each once: About

    @property
    def reconciles(self) -> bool:
        return self.rows_read == self.rows_loaded + self.rows_rejected


@dataclass
class RunContext:
    loaded: LoadedConfig
    as_of: date
    period: Period
    run_id: str
    started: datetime
    full_refresh: bool = False
    state_url: str = ""
    observer: Observer = field(default_factory=Observer)
    retry_policy: RetryPolicy | None = None  # every HTTP call of the run (None: the default policy)
    stages: list[StageTime] = field(default_factory=list)  # time and peak memory of each step, in order
    _engine: Any = None

    @property
    def config(self) -> AppConfig:
        return self.loaded.config

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = make_engine(self.state_url)
        return self._engine

    @property
    def validated_cache(self) -> ValidatedCache | None:
        """Validated rows kept beside a SQLite state database, or in `.state/` next to the config for
        another database (entries are keyed by the versions that database holds); none in memory."""
        prefix = "sqlite:///"
        if self.state_url.startswith(prefix + ":memory:") or self.state_url in ("sqlite://", "sqlite:"):
            return None
        if self.state_url.startswith(prefix):
            return ValidatedCache(Path(self.state_url[len(prefix):].partition("?")[0]).parent / "validated")
        return ValidatedCache(self.loaded.base_dir / ".state" / "validated")


@dataclass
class Transformed:
    opportunities: pd.DataFrame
    rejected: pd.DataFrame
    history: pd.DataFrame
    sources: list[SourceReport]
    sheets: list[SheetData]
    summary: SummaryData | None
    flags_count: int | None = None
    analytics: Any = None
    about: list[tuple[str, Any]] = field(default_factory=list)  # extra About rows (e.g. a report's filter)
    validated: Validated | None = None
    rendered: dict[str, Any] = field(default_factory=dict)  # what `render` wrote: flows.kept_workbook.keep


@dataclass
class Validated:
    """Every source's rows after validation, before the analytics: shared by all reports of a run."""

    opportunities: pd.DataFrame
    rejected: pd.DataFrame
    history: pd.DataFrame
    sources: list[SourceReport]
    raw: list[tuple[str, pd.DataFrame]]
    by_source: dict[str, SourceRows] = field(default_factory=dict)
    rates: dict[str, RateTable] = field(default_factory=dict)  # per source: the rates its amounts converted with
    field_history: pd.DataFrame | None = None  # issue 22: the sources' close_date / amount history, typed


@dataclass
class RunResult:
    run_id: str
    as_of: date
    period: Period
    sources: list[SourceReport]
    outputs: list[str]
    flags_count: int | None
    workbook_rows: dict[str, int]
    seconds: float
    notes: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # with `reports:`: one entry per report
    stages: list[StageTime] = field(default_factory=list)
    workbook_reused: bool = False  # the last run's workbook written again (nothing it shows changed)


def result_summary(result: RunResult) -> dict[str, Any]:
    """What the CLI prints and the Prefect flow returns: plain values only."""
    return {
        "run_id": result.run_id,
        "as_of": result.as_of.isoformat(),
        "period": result.period.label,
        "outputs": result.outputs,
        "flags": result.flags_count,
        "sources": [
            {"name": s.name, "read": s.rows_read, "loaded": s.rows_loaded, "rejected": s.rows_rejected, "stale": s.stale,
             "unchanged": s.reused}
            for s in result.sources
        ],
        "stages": [{"name": s.name, "seconds": round(s.seconds, 3), "peak_mib": round(s.peak_mib, 1)}
                   for s in result.stages],
        "workbook_reused": result.workbook_reused,
    }


# ----------------------------------------------------------------------------- steps


def prepare(config_path: str | Path, as_of: date | None = None, *, full_refresh: bool = False,
            loaded: LoadedConfig | None = None, retry_policy: RetryPolicy | None = None) -> RunContext:
    """Load and validate the config (ConfigError before any I/O) and fix as_of once for the run.

    `retry_policy` (e.g. a sleep that does not really wait, in tests) goes to every extractor and upload.
    """
    loaded = loaded or load_config(config_path)
    cfg = loaded.config
    started = datetime.now(UTC)
    as_of = as_of or started.astimezone(cfg.tz).date()
    period = reporting_period(as_of, cfg.period, calendar_for(cfg))
    state_url = cfg.state.url or default_state_url(loaded.base_dir)
    return RunContext(loaded, as_of, period, uuid.uuid4().hex[:12], started, full_refresh, state_url,
                      retry_policy=retry_policy)


def extract_source(run: RunContext, index: int, *, reuse: bool = True, defer: bool = False) -> Extracted:
    """Pull one source. Errors propagate (the flow decides: stale fallback or failure).

    When the connector finds the source unchanged since the rows this flow validated last time
    (`reuse`), those rows come from the validated cache instead of being rebuilt; with `defer`
    they are read only when needed (`load_deferred`: a workbook written again needs none).
    """
    src = run.config.sources[index]
    observer = Observer(on_event=run.observer.on_event)
    cache = run.validated_cache if reuse and not run.full_refresh else None
    digest = validation_digest(run.config, index, run.as_of)
    cached = cache.version(src.name, digest) if cache is not None else None
    ahead = HeldRowsAhead(cache, src.name, digest, cached) if cache is not None and cached is not None else None
    ctx = ExtractContext(engine=run.engine if registry.source_type(src.type).keeps_state else None,
                         observer=observer, as_of=run.as_of, run_started=run.started, tz=run.config.tz,
                         full_refresh=run.full_refresh, retry_policy=run.retry_policy, cached_version=cached,
                         state_dir=run.loaded.base_dir / ".state", prefetch=ahead.start if ahead else None)
    started = time.perf_counter()
    try:
        extracted = registry.extractor_for(src.type)(src, ctx)
    finally:
        if ahead is not None:
            ahead.close()  # a read started ahead is done (its rows kept) or waited for
    if extracted.reused and defer and cache is not None and extracted.version:
        extracted.reused_rows = _Deferred(index, digest)
    elif extracted.reused:
        rows = cache.load(src.name, digest, extracted.version) if cache is not None and extracted.version else None
        if rows is None:
            log.warning("source %s: the rows of the last run are not readable here; rebuilding them", src.name)
            return extract_source(run, index, reuse=False)
        extracted.reused_rows = rows
    elif ahead is not None and extracted.delta_base is not None and extracted.delta_base == ctx.cached_version:
        extracted.base_rows = ahead.rows()  # read while the extractor waited (prefetch), or now; None: validate all
    if extracted.partial and not _merges(src, extracted):
        log.warning("source %s: its changes cannot be merged into the last run's rows here; reading them all",
                    src.name)
        return extract_source(run, index, reuse=False)
    extracted.seconds = extracted.seconds or time.perf_counter() - started
    extracted.requests, extracted.retries, extracted.waited_seconds = (
        observer.requests, observer.retries, observer.waited_seconds)
    if isinstance(extracted.reused_rows, _Deferred):
        log.info("source %s: unchanged since the last run (%.2fs)", src.name, extracted.seconds)
        return extracted
    read = extracted.reused_rows.rows_read if extracted.reused else extracted.rows_read
    log.info("source %s: %d rows read in %.2fs%s", src.name, read, extracted.seconds,
             " (unchanged: the last run's validated rows)" if extracted.reused else "")
    return extracted


@dataclass
class _Deferred:
    """The validated rows of source `index` at its version, not read yet (`extract_source(defer=True)`)."""

    index: int
    digest: str


def load_deferred(run: RunContext, extracted: list[Extracted]) -> None:
    """Read the validated rows `extract_source(defer=True)` left for later; a source whose rows
    are not readable is extracted again in full, in its place."""
    cache = run.validated_cache
    for k, e in enumerate(extracted):
        deferred = e.reused_rows
        if not isinstance(deferred, _Deferred):
            continue
        src = run.config.sources[deferred.index]
        rows = cache.load(src.name, deferred.digest, e.version) if cache is not None and e.version else None
        if rows is None:
            log.warning("source %s: the rows of the last run are not readable here; rebuilding them", src.name)
            extracted[k] = extract_source(run, deferred.index, reuse=False)
            continue
        e.reused_rows = rows


def _merges(src: Any, e: Extracted) -> bool:
    """A partial extraction (only the changes) can be merged: the flow holds the base rows, with
    the raw sheet's frame when the source has one, and the changes bring no raw column it lacks."""
    base = e.base_rows
    if base is None or e.row_ids is None or not _delta_applies(e):
        return False
    if not src.raw_sheet:
        return True
    return base.raw is not None and e.raw is not None and set(e.raw.columns) <= set(base.raw.columns)


# validate every source's rows
_CODE_FILES = ("transforms/canonical.py", "transforms/currency.py", "config/schema.py", "transforms/field_history.py")


def validation_digest(cfg: AppConfig, index: int, as_of: date | None = None) -> str:
    """Names how a source's rows are validated: its config, the pipeline's stages, the timezone,
    currency and rates, and the code that shapes and validates them (every module the registry
    names for its type). Cached rows must match it. With dated rates (or rates the source reads)
    open deals convert at `as_of`'s rate, so the digest names `as_of` too."""
    src = cfg.sources[index]
    root = Path(__file__).resolve().parent.parent
    code = hashlib.sha256()
    for path in (*(root / f for f in _CODE_FILES), *registry.row_code_files(src.type)):
        code.update(path.read_bytes())
    key = json.dumps({
        "source": src.model_dump(mode="json"), "stages": cfg.pipeline.model_dump(mode="json"),
        "timezone": cfg.timezone, "currency": cfg.inputs.currency,
        "rates": cfg.inputs.model_dump(mode="json").get("rates"),
        "version": package_version(), "code": code.hexdigest(),
        **({"as_of": as_of} if as_of is not None and (cfg.inputs.dated or getattr(src, "reads_rates", False)) else {}),
    }, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def transform(run: RunContext, extracted: list[Extracted], failures: dict[str, str] | None = None) -> Transformed:
    """Validate every source's rows (then release the unvalidated ones), and compute the analytics sheets."""
    with measured(run.stages, "validate"):
        validated = validate(run, extracted, failures, release=True)
    release_rows(extracted)
    with measured(run.stages, "analyze"):
        return analyze(run, validated)


def validate(run: RunContext, extracted: list[Extracted], failures: dict[str, str] | None = None, *,
             release: bool = False) -> Validated:
    """Every source's rows typed and checked (rejected rows with reasons), and their stage history.

    `release`: drop each source's unvalidated records and history as soon as they are validated
    (as `release_rows` does afterwards), so a million raw rows are not held while the next part is."""
    cfg = run.config
    failures = failures or {}
    by_name = {e.source: e for e in extracted}
    loaded_parts, rejected_parts, history_parts, reports = [], [], [], []
    field_parts: list[pd.DataFrame] = []
    by_source: dict[str, SourceRows] = {}
    tables: dict[str, RateTable] = {}
    for src in cfg.sources:
        e = by_name.get(src.name)
        tables[src.name] = rate_table(cfg.inputs.currency, cfg.inputs.rates, e.rates if e is not None else None)
        if e is None:
            reports.append(SourceReport(src.name, src.type, 0, 0, 0, 0.0, stale=True, error=failures.get(src.name)))
            continue
        validated_rows = 0 if e.reused_rows is not None else (
            int(e.records["opportunity_id"].astype(str).isin(e.delta_ids).sum()) if _delta_applies(e)
            else len(e.records))
        rows = e.reused_rows if e.reused_rows is not None else _validate_source(run, src, e, release=release)
        by_source[src.name] = rows
        loaded_parts.append(rows.loaded)
        rejected_parts.append(rows.rejected)
        if rows.history is not None:
            history_parts.append(rows.history)
        if getattr(rows, "field_history", None) is not None and len(rows.field_history):
            field_parts.append(rows.field_history)
        reports.append(SourceReport(
            src.name, src.type, rows.rows_read, len(rows.loaded), len(rows.rejected), e.seconds,
            stale=e.stale or rows.rows_read == 0, error=failures.get(src.name), requests=e.requests,
            retries=e.retries, waited_seconds=e.waited_seconds, reused=e.reused_rows is not None and not e.stale,
            validated_rows=validated_rows, notes=tuple(dict.fromkeys(e.notes))))
    opportunities = _stacked(loaded_parts) if loaded_parts else empty_opportunities()
    rejected = _stacked(rejected_parts) if rejected_parts else pd.DataFrame(
        {"source": pd.Series(dtype=object), "row": pd.Series(dtype=int), "reason": pd.Series(dtype=object)})
    history = _stacked(history_parts) if history_parts else canonicalize_history(
        None, source="", tz=cfg.tz, stages=cfg.pipeline.stages, stage_map={})
    raw = [(src.raw_sheet, by_source[src.name].raw) for src in cfg.sources
           if src.raw_sheet and src.name in by_source and by_source[src.name].raw is not None]
    return Validated(opportunities, rejected, history, reports, raw, by_source, tables,
                     field_history=_stacked(field_parts) if field_parts else None)


def _stacked(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The parts one below the other. When only one part has rows and stacking would not change
    its columns or their types, that part as it is (no copy of a million rows; the empty parts of
    the other sources add nothing)."""
    full = [p for p in parts if len(p)]
    if len(full) == 1 and isinstance(full[0].index, pd.RangeIndex) and full[0].index.start == 0 \
            and full[0].index.step == 1:
        one = full[0]
        if len(parts) == 1:
            return one
        shape = pd.concat([p.iloc[:0] for p in parts], ignore_index=True)
        if list(shape.columns) == list(one.columns) and all(
                a == b for a, b in zip(shape.dtypes.tolist(), one.dtypes.tolist(), strict=True)):
            return one
    return pd.concat(parts, ignore_index=True)


def _delta_applies(e: Extracted) -> bool:
    return (e.base_rows is not None and e.delta_ids is not None and ROW_COLUMN in e.records
            and "opportunity_id" in e.records)


def _validate_delta(run: RunContext, src: Any, e: Extracted, base: SourceRows, changed: frozenset[str]) -> SourceRows:
    """Validate only the records whose ids changed since `base` and merge them with the rest of
    `base`: the same rows, in the same order, as validating every record (each record is
    validated on its own; the ids of a CRM source are unique), at the cost of what changed."""
    ids = e.records["opportunity_id"].astype(str)
    is_changed = ids.isin(changed).to_numpy()
    fresh = _validate_source(run, src, dataclasses.replace(
        e, records=e.records[is_changed], base_rows=None, partial=False, row_ids=None,
        history=None if e.history is None else e.history[e.history["opportunity_id"].astype(str).isin(changed)],
        field_history=None if e.field_history is None
        else e.field_history[e.field_history["opportunity_id"].astype(str).isin(changed)]))
    if e.partial and e.row_ids is not None:  # the records are the changes only: rows follow `row_ids`
        row_of = pd.Series(np.arange(1, len(e.row_ids) + 1), index=np.asarray(e.row_ids, dtype=object))
    else:
        row_of = pd.Series(e.records[ROW_COLUMN].to_numpy(), index=ids.to_numpy())

    parts: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}  # where each merged row comes from (validated_patch)

    def merged(name: str, old: pd.DataFrame, new: pd.DataFrame, key: str = "opportunity_id") -> pd.DataFrame:
        keep = ~_as_text(old[key]).isin(changed).to_numpy()
        kept = old[keep]
        frame = _stacked([p for p in (kept, new) if len(p)]) if len(kept) or len(new) else new
        parts[name] = (origin(keep, len(old), len(new)), new)
        return frame.reset_index(drop=True)

    def ordered(name: str, frame: pd.DataFrame, at: np.ndarray | None = None,
                by: tuple[str, str] | None = None) -> pd.DataFrame:
        positions, new = parts[name]
        if by is not None:  # the kept rows are in order already: only the new ones are sorted
            at = stable_sort_order(frame, len(frame) - len(new), by)
        out = frame.iloc[at]
        parts[name] = (positions[out.index.to_numpy()], new)
        return out.reset_index(drop=True)

    loaded = merged("loaded", base.loaded, fresh.loaded)
    loaded = ordered("loaded", loaded, np.argsort(_as_text(loaded["opportunity_id"]).map(row_of).to_numpy(),
                                                  kind="stable"))
    rejected = merged("rejected", base.rejected, fresh.rejected)  # kept whole by a patch: its row numbers move
    if len(rejected):  # row numbers of kept rejects follow the records' current order
        rejected = rejected.assign(row=rejected["opportunity_id"].astype(str).map(row_of).astype(int).to_numpy())
        rejected = rejected.sort_values("row", kind="stable")
    history = fresh.history
    if base.history is not None and history is not None:
        history = ordered("history", merged("history", base.history, history), by=("opportunity_id", "entered_date"))
    fields = fresh.field_history
    if getattr(base, "field_history", None) is not None and fields is not None:
        fields = ordered("field_history", merged("field_history", base.field_history, fields),
                         by=("opportunity_id", "changed_at"))
    raw = e.raw if src.raw_sheet else None
    if raw is not None and e.partial:
        # the raw sheet's frame of every current record: `base`'s rows less the `changed` ids, with
        # `new`'s (whose columns `base` has: `_merges`), in row order, with `base`'s columns. (A column
        # that only deals now gone had keeps its place, empty: HubSpot returns each property read for
        # every deal, null when empty, so a full read has it too.)
        raw = merged("raw", base.raw, raw.reindex(columns=base.raw.columns), key="id")
        raw = ordered("raw", raw, np.argsort(_as_text(raw["id"]).map(row_of).to_numpy(), kind="stable"))
    rows = SourceRows(loaded, rejected.reset_index(drop=True), history, raw, e.rows_read, fields)
    if base.held is not None and e.delta_base is not None:
        rows.merged = Merged(base.held, e.delta_base, parts)
    return rows


def _as_text(ids: pd.Series) -> pd.Series:
    """`ids.astype(str)`, without converting (and copying) a column that already holds only text."""
    if ids.dtype == object and infer_dtype(ids, skipna=False) == "string":
        return ids
    return ids.astype(str)


def release_rows(extracted: list[Extracted]) -> None:
    """Drop the sources' unvalidated rows once validated: later steps use only each Extracted's
    pending state, version and flags, and at a million rows these frames are most of the memory."""
    for e in extracted:
        e.records = e.records.iloc[:0]
        e.history = None
        e.field_history = None
        e.raw = None
        e.base_rows = None


def _validate_source(run: RunContext, src: Any, e: Extracted, *, release: bool = False) -> SourceRows:
    """One source's rows validated (only the changes, merged into the base rows, when they apply);
    `release`: `e`'s records are dropped once validated, before its history is."""
    if _delta_applies(e):
        return _validate_delta(run, src, e, e.base_rows, e.delta_ids)
    cfg = run.config
    res = canonicalize(
        e.records, source=src.name, stages=cfg.pipeline.stages, stage_map=src.stage_map, tz=cfg.tz,
        date_format=getattr(src, "date_format", None), reporting_currency=cfg.inputs.currency,
        rates=rate_table(cfg.inputs.currency, cfg.inputs.rates, e.rates), as_of=run.as_of,
        decimal=getattr(src, "decimal", None),
    )
    if release:
        e.records = e.records.iloc[:0]
    history = None if e.history is None else canonicalize_history(
        e.history, source=src.name, tz=cfg.tz, stages=cfg.pipeline.stages, stage_map=src.stage_map,
        date_format=getattr(src, "date_format", None))
    if release:
        e.history = None
    fields = None if e.field_history is None else canonicalize_field_history(e.field_history, source=src.name, tz=cfg.tz)
    return SourceRows(res.loaded, res.rejected, history, e.raw if src.raw_sheet else None, res.rows_read, fields)


def analyze(run: RunContext, validated: Validated) -> Transformed:
    """Metrics, flags and every sheet of `run.config`'s report from the validated rows."""
    opportunities, rejected, history, reports = (validated.opportunities, validated.rejected, validated.history,
                                                 validated.sources)
    stale = [r.name for r in reports if r.stale]
    snapshots = load_history(run.engine, run.config.report, run.as_of)
    analytics = build_analytics(opportunities, history, run.config, run.as_of, stale_sources=stale,
                                snapshots=snapshots, rates=validated.rates, field_history=validated.field_history)
    sheets = [*analytics.sheets, opportunities_sheet(analytics.opportunities), rejected_sheet(rejected),
              *raw_sheets(validated.raw)]
    return Transformed(analytics.opportunities, rejected, history, reports, sheets, analytics.summary,
                       len(analytics.flags), analytics, about=list(analytics.about), validated=validated)


def render(run: RunContext, result: Transformed, staging_dir: Path) -> tuple[Path, dict[str, int], list[str]]:
    """Write the whole workbook once into `staging_dir`; every destination publishes this file."""
    from connectors.workbook.xlsx_writer import WriteStats, write_workbook

    staged = staging_dir / "pipeline.xlsx"
    about_extra: list[tuple[str, Any]] = []
    analytics = result.analytics
    if analytics is not None and getattr(analytics, "excluded_future", 0):
        about_extra.append(("deals created after as_of (not shown)", analytics.excluded_future))
    sheets = list(result.sheets)
    _, notes = excel_limits(sheets, count_cut=False)  # the writer counts the cells it cuts
    rendered = result.rendered

    def about(written: WriteStats) -> SheetData:  # built after the other sheets are written
        extra = [*about_extra, *([("cells cut at 32,767 characters", written.cut_cells)] if written.cut_cells else []),
                 *result.about]
        rendered["about_extra"] = [[redact(k), redact(str(v))] for k, v in extra]  # kept for the next run:
        rendered["about_notes"] = [redact(n) for n in [*notes, *written.fixes]]  # masked as the sheet is
        return about_for(run, result.sources, extra, [*notes, *written.fixes])

    stats = write_workbook(staged, sheets=sheets, summary=result.summary, currency=run.config.inputs.currency,
                           last=about)
    rendered.update(late_part=stats.late_part, late_table=stats.late_table, rows=stats.rows, notes=stats.notes)
    return staged, stats.rows, stats.notes


def about_for(run: RunContext, sources: Sequence[SourceReport], extra: Sequence[tuple[str, Any]],
              notes: Sequence[str]) -> SheetData:
    """The About sheet of this run, with `extra` rows and `notes` (secrets masked)."""
    sheet = about_sheet(run_id=run.run_id, as_of=run.as_of, period=run.period, generated_at=run.started,
                        timezone=run.config.timezone, version=package_version(), config_sha256=run.loaded.sha256,
                        sources=sources, extra=extra, notes=notes)
    sheet.frame = sheet.frame.map(redact)  # errors, notes and paths may quote a `${...}` value or a URL password
    return sheet


def publish(run: RunContext, index: int, staged: Path) -> str:
    """Deliver the staged workbook to one destination, by the publisher its type registered;
    returns where it went (and any note)."""
    dest = run.config.destinations[index]
    sleep = run.retry_policy.sleep if run.retry_policy is not None else None
    ctx = registry.PublishContext(as_of=run.as_of, period=run.period.label, open_state=lambda: run.engine, sleep=sleep)
    return registry.publisher_for(dest.type)(dest, staged, ctx)


def commit_state(run: RunContext, extracted: list[Extracted], result: Transformed | None,
                 *, snapshots: list[tuple[str, Any]] | None = None) -> None:
    """One transaction: every source's cursor/records and this run's snapshot (or, with
    `snapshots`, those (report, SnapshotRecord) pairs instead)."""
    from connectors.state.source_state import save_state

    pending = [e for e in extracted if e.pending_state is not None]
    rated = [e for e in extracted if e.rates is not None and not e.stale]
    if snapshots is None:
        analytics = result.analytics if result is not None else None
        snap = getattr(analytics, "snapshot", None)
        snapshots = [(run.config.report, snap)] if snap is not None else []
    if not pending and not snapshots and not rated:
        return
    with run.engine.begin() as conn:
        for e in pending:
            p = e.pending_state
            save_state(conn, e.source, p.cursor, p.upserts, p.deletes, p.replace_all, version=p.version)
            if p.field_history is not None:  # issue 22
                from connectors.state.field_history import save_entries

                save_entries(conn, e.source, p.field_history, p.deletes, p.replace_all)
        if rated:
            from connectors.state.source_rates import save_rates

            for e in rated:
                save_rates(conn, e.source, e.rates)
        if snapshots:
            from connectors.state.snapshots import save_snapshot

            for report, record in snapshots:
                save_snapshot(conn, report, record)


def keep_validated(run: RunContext, extracted: list[Extracted], validated: Validated | None) -> None:
    """After the state is committed: keep each versioned source's validated rows for the next run
    (a source reused this run already has them). Failing here only costs the next run time."""
    cache = run.validated_cache
    if cache is None or validated is None:
        return
    index = {src.name: i for i, src in enumerate(run.config.sources)}
    for e in extracted:
        rows = validated.by_source.get(e.source)
        if e.version is None or e.reused or e.stale or rows is None or e.source not in index:
            continue
        try:
            cache.save(e.source, validation_digest(run.config, index[e.source], run.as_of), e.version, rows)
        except (OSError, pickle.PicklingError) as exc:
            log.warning("source %s: could not keep its validated rows for the next run (%s)", e.source, exc)


# ----------------------------------------------------------------------------- orchestration


def _plain(step: Step, name: str) -> Step:
    return step


def run_pipeline(
    config_path: str | Path,
    as_of: date | None = None,
    *,
    full_refresh: bool = False,
    wrap: StepWrapper = _plain,
    on_event: Callable[[str, Any], None] | None = None,
    loaded: LoadedConfig | None = None,
    retry_policy: RetryPolicy | None = None,
    reports: list[str] | None = None,
    fan_out: FanOut = thread_fan_out,
    reuse_workbook: bool = True,
) -> RunResult:
    """Extract every source, transform, render once, publish to every destination, then commit state.

    When nothing the workbook shows changed since the one kept from the last run (`reuse_workbook`,
    flows.kept_workbook), that workbook is written again with this run's About sheet instead.

    A source that fails raises unless it has stored state to fall back on (then its data is
    marked stale, M5). State is committed only after every destination succeeded.
    With `reports:` in the config, `run_reports` produces every report (or those named in
    `reports`), fanned out by `fan_out` (threads unless the caller passes another, e.g. Prefect's).
    """
    t0 = time.perf_counter()
    run = prepare(config_path, as_of, full_refresh=full_refresh, loaded=loaded, retry_policy=retry_policy)
    run.observer.on_event = on_event
    if run.config.reports and reports:
        report_specs(run.config, reports)  # an unknown report name fails before any extraction
    single = not run.config.reports
    with measured(run.stages, "extract"):
        extracted, failures = extract_all(run, wrap, defer=single and reuse_workbook)
    if not single:
        return run_reports(run, extracted, failures, wrap=wrap, started=t0, names=reports, fan_out=fan_out)
    if reports and reports != [run.config.report]:
        raise PipelineSyncError(f"unknown report(s): {', '.join(reports)}; this config has: {run.config.report}")
    key = workbook_key(run, extracted, failures) if reuse_workbook else None
    staging = local_file.staging_dir()
    try:
        with measured(run.stages, "render"):
            again = wrap(render_again, "render-again")(run, extracted, key, staging)
        result = None
        if again is None:
            run.stages.pop()  # nothing was written: the render below is the step
            load_deferred(run, extracted)
            result = wrap(transform, "transform")(run, extracted, failures)
            with measured(run.stages, "render"):
                staged, rows, notes = wrap(render, "render")(run, result, staging)
            sources, flags = result.sources, result.flags_count
        else:
            (staged, rows, notes, flags), sources = again
        with measured(run.stages, "publish"):
            outputs = [wrap(publish, f"publish-{d.type}-{i}")(run, i, staged)
                       for i, d in enumerate(run.config.destinations)]
        with measured(run.stages, "commit"):
            wrap(commit_state, "commit-state")(run, extracted, result)
            if result is not None:
                keep_validated(run, extracted, result.validated)
                kept_workbook.keep(run, workbook_key(run, extracted, failures, keeping=True), result.rendered,
                                   result.flags_count,
                                   {s.name: [s.rows_read, s.rows_loaded, s.rows_rejected] for s in result.sources},
                                   staged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RunResult(run.run_id, run.as_of, run.period, sources, outputs, flags, rows,
                     time.perf_counter() - t0, notes, stages=list(run.stages), workbook_reused=again is not None)


def workbook_key(run: RunContext, extracted: list[Extracted], failures: dict[str, str], *,
                 keeping: bool = False) -> str | None:
    """flows.kept_workbook.workbook_key with each source's validation digest."""
    digests = [validation_digest(run.config, i, run.as_of) for i in range(len(run.config.sources))]
    return kept_workbook.workbook_key(run, extracted, failures, digests=digests, version=package_version(),
                                      keeping=keeping)


def render_again(run: RunContext, extracted: list[Extracted], key: str | None,
                 staging: Path) -> tuple[tuple[Path, dict[str, int], list[str], int | None], list[SourceReport]] | None:
    """The workbook kept under `key` written again into `staging` with this run's About sheet:
    ((staged, rows per sheet, notes, flag count), the sources' reports); None when there is none
    to write (then the run validates, analyses and renders)."""
    kept = kept_workbook.find(run, key)
    if kept is None:
        return None
    sources = []
    for src, e in zip(run.config.sources, extracted, strict=True):
        counts = kept_workbook.kept_counts(kept.meta, src.name)
        if counts is None:
            return None
        sources.append(SourceReport(src.name, src.type, *counts, e.seconds, stale=counts[0] == 0,
                                    requests=e.requests, retries=e.retries, waited_seconds=e.waited_seconds,
                                    reused=e.reused and not e.stale, notes=tuple(dict.fromkeys(e.notes))))
    extra, notes = kept_workbook.about_rows(kept.meta)
    again = kept_workbook.rewrite_kept(run, kept, about_for(run, sources, extra, notes), staging)
    if again is None:
        return None
    return (again.staged, again.rows, again.notes, again.flags_count), sources


def run_reports(run: RunContext, extracted: list[Extracted], failures: dict[str, str], *,
                wrap: StepWrapper, started: float, names: Sequence[str] | None = None,
                fan_out: FanOut = thread_fan_out) -> RunResult:
    """Validate once, produce every report (or those in `names`) through `fan_out`, then commit
    state and the snapshots of the reports that succeeded; a failed report fails the run after
    the others are published."""
    specs = report_specs(run.config, names)
    validated = wrap(validate, "validate")(run, extracted, failures, release=True)
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
                               "open_deals": o.open_deals, "rows": o.rows} for o in done],
                     stages=list(run.stages))


def produce_report(run: RunContext, validated: Validated, flt: ReportFilterConfig) -> ReportOutcome:
    """One report of `run_reports`: filter, analyse, render once and publish
    to each of the report's destinations."""
    redaction.register(run.loaded.secrets)  # a Dask worker process never loaded the config: its log
    redaction.install_log_redaction()  # records are masked with the config's values from here on
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
    snapshot = getattr(result.analytics, "snapshot", None)
    return ReportOutcome(run.config.report, outputs, result.flags_count,
                         None if snapshot is None else len(snapshot.deals), counts, notes, snapshot)


def extract_all(run: RunContext, wrap: StepWrapper = _plain, *,
                defer: bool = False) -> tuple[list[Extracted], dict[str, str]]:
    """Every source once; a failed CRM source falls back to its stored records (marked stale).
    `defer`: the validated rows of unchanged sources are read later (`load_deferred`)."""
    extracted: list[Extracted] = []
    failures: dict[str, str] = {}
    for i, src in enumerate(run.config.sources):
        try:
            extracted.append(wrap(extract_source, f"extract-{src.name}")(run, i, defer=defer))
        except PipelineSyncError as exc:
            fallback = _stale_fallback(run, i)
            if fallback is None:
                raise
            log.warning("source %s failed (%s); using its data from the previous run", src.name, exc)
            failures[src.name] = redact(str(exc))
            extracted.append(fallback)
    return extracted, failures


def _stale_fallback(run: RunContext, index: int) -> Extracted | None:
    """The stored current records of a source, marked stale: the validated rows kept at the stored
    version when the flow has them (as a run that found nothing changed would use: with the links
    and everything validated then), else rebuilt by its type's `rebuilds_history`.

    None when the source's type rebuilds nothing or nothing is stored yet.
    """
    from connectors.state.source_state import get_version, load_records

    src = run.config.sources[index]
    from_state = registry.history_rebuilder(src.type)
    if from_state is None:
        return None
    extracted = _kept_stale(run, index, get_version(run.engine, src.name))
    if extracted is None:
        payloads = load_records(run.engine, src.name)
        if not payloads:
            return None
        extracted = from_state(src, payloads)
    extracted.stale = True
    if getattr(src, "reads_rates", False):
        from connectors.state.source_rates import load_rates

        extracted.rates = load_rates(run.engine, src.name)
    return extracted


def _kept_stale(run: RunContext, index: int, stored: Any) -> Extracted | None:
    """The rows the flow kept validated at the stored version `stored` (None: nothing kept there)."""
    src, cache = run.config.sources[index], run.validated_cache
    if stored is None or cache is None or run.full_refresh:
        return None
    rows = cache.load(src.name, validation_digest(run.config, index, run.as_of), stored.version)
    if rows is None:
        return None
    return Extracted(source=src.name, records=pd.DataFrame(), notes=[STALE_NOTE.format(src.name)],
                     version=stored.version, reused=True, reused_rows=rows)
