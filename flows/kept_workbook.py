"""Nothing changed, nothing recomputed: when every input of the workbook is what it was for the
workbook the report published last (the key below), the run writes that workbook again with a
new About sheet (connectors.workbook.reuse) instead of validating, analysing and rendering the
same rows. Otherwise the run is the usual one, and its workbook is kept for the next run.

The key names: the package version and the code that shapes the workbook, the whole config (and
its file's SHA-256), `as_of` and the period, each source's content version, validation digest and
the CRM's own rates, and the stored snapshots before `as_of` (connectors.state.snapshots.history_stamp).
A stale or failed source, an unversioned one, `--full-refresh` and configs with `reports:` are
never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.extracted import Extracted
from connectors.state.kept_workbook import KeptWorkbooks
from connectors.state.snapshots import history_stamp

if TYPE_CHECKING:
    from flows.pipeline import RunContext, SourceReport, Transformed

log = logging.getLogger("pipeline_sync")

_ROOT = Path(__file__).resolve().parent.parent
_CODE = ("transforms", "connectors/workbook", "config")
_CODE_FILES = ("flows/pipeline.py", "flows/kept_workbook.py", "connectors/state/snapshots.py",
               "connectors/state/validated_cache.py", "connectors/state/frames.py")


@dataclass
class Rewritten:
    """A run's workbook written again from the kept one: what the run reports about it."""

    staged: Path
    rows: dict[str, int]
    notes: list[str]
    sources: list[SourceReport]
    flags_count: int | None


def store(run: RunContext) -> KeptWorkbooks | None:
    """Kept workbooks beside the validated rows (none when those are not kept: an in-memory state)."""
    cache = run.validated_cache
    return None if cache is None else KeptWorkbooks(cache.folder.parent / "workbooks")


def workbook_key(run: RunContext, extracted: list[Extracted], failures: dict[str, str], *,
                 keeping: bool = False) -> str | None:
    """The key of everything the workbook of this run shows but the About sheet; None when the
    run must not reuse a workbook (`keeping`: keep one; a full refresh keeps what it wrote)."""
    from flows.pipeline import package_version, validation_digest

    cfg = run.config
    if (run.full_refresh and not keeping) or cfg.reports or failures or len(extracted) != len(cfg.sources):
        return None
    sources = []
    for i, (src, e) in enumerate(zip(cfg.sources, extracted, strict=True)):
        if e.source != src.name or e.stale or e.version is None:
            return None
        sources.append([src.name, e.version, validation_digest(cfg, i, run.as_of), repr(e.rates)])
    key = {"version": package_version(), "code": _code_digest(), "config": cfg.model_dump(mode="json"),
           "config_sha256": run.loaded.sha256, "as_of": run.as_of.isoformat(), "period": run.period.label,
           "sources": sources, "history": history_stamp(run.engine, cfg.report, run.as_of)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def rewrite_kept(run: RunContext, extracted: list[Extracted], key: str | None, staging: Path) -> Rewritten | None:
    """The kept workbook written again into `staging` for this run when its key is `key`; None
    (nothing written) when there is none, its key differs or it cannot be rewritten."""
    from connectors.workbook.reuse import rewrite
    from flows.pipeline import about_for

    kept = store(run)
    found = None if key is None or kept is None else kept.match(run.config.report, key)
    if found is None:
        return None
    meta = found.meta
    sources = _reports(run, extracted, meta.get("sources") or {})
    if sources is None:
        return None
    extra = [tuple(x) for x in meta.get("about_extra", [])]
    extra.append(("workbook", f"the sheets of run {meta.get('run_id', '?')} ({meta.get('generated_at', '?')}), "
                              "written again: nothing they show changed since"))
    about = about_for(run, sources, extra, list(meta.get("about_notes", [])))
    staged = staging / "pipeline.xlsx"
    stats = rewrite(found.path, staged, about, late_part=meta.get("late_part", ""),
                    late_table=meta.get("late_table", ""), generated_at=run.started)
    if stats is None:
        return None
    log.info("report %s: nothing it shows changed since the last run; its workbook was written again",
             run.config.report)
    return Rewritten(staged, {**meta.get("rows", {}), **stats.rows}, list(meta.get("notes", [])), sources,
                     meta.get("flags_count"))


def keep(run: RunContext, extracted: list[Extracted], failures: dict[str, str], result: Transformed,
         staged: Path) -> None:
    """After the state is committed (so the key names this run's snapshot): keep this run's
    workbook for the next run. Failing here only costs the next run time."""
    kept = store(run)
    if kept is None:
        return
    key = workbook_key(run, extracted, failures, keeping=True)
    rendered = result.rendered  # the late sheet's part and table, the About rows, rows, notes
    if key is None or not rendered.get("late_part"):
        kept.drop(run.config.report)
        return
    meta = {**rendered, "flags_count": result.flags_count, "run_id": run.run_id,
            "generated_at": run.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "sources": {s.name: [s.rows_read, s.rows_loaded, s.rows_rejected] for s in result.sources}}
    try:
        kept.save(run.config.report, key, staged, meta)
    except OSError as exc:
        log.warning("report %s: could not keep its workbook for the next run (%s)", run.config.report, exc.strerror)


def _reports(run: RunContext, extracted: list[Extracted], counts: dict[str, list[int]]) -> list[SourceReport] | None:
    """This run's report of each source: its counts as kept, its extraction as measured now."""
    from flows.pipeline import SourceReport

    out = []
    for src, e in zip(run.config.sources, extracted, strict=True):
        c = counts.get(e.source)
        if not (isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) for v in c)):
            return None
        out.append(SourceReport(e.source, src.type, c[0], c[1], c[2], e.seconds, stale=c[0] == 0,
                                requests=e.requests, retries=e.retries, waited_seconds=e.waited_seconds,
                                reused=e.reused and not e.stale, notes=tuple(dict.fromkeys(e.notes))))
    return out


def _code_digest() -> str:
    """SHA-256 over the modules that shape the workbook from the validated rows."""
    h = hashlib.sha256()
    files = [p for d in _CODE for p in sorted((_ROOT / d).rglob("*.py"))] + [_ROOT / f for f in _CODE_FILES]
    for path in files:
        h.update(str(path.relative_to(_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
