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
from typing import Any

from config.workbook import SheetData
from connectors.extracted import Extracted
from connectors.state.kept_workbook import Kept, KeptWorkbooks
from connectors.state.snapshots import history_stamp

RunContext = Any  # flows.pipeline.RunContext (which imports this module)

log = logging.getLogger("pipeline_sync")

_ROOT = Path(__file__).resolve().parent.parent
_CODE = ("transforms", "connectors/workbook", "config")
_CODE_FILES = ("flows/pipeline.py", "flows/kept_workbook.py", "connectors/state/snapshots.py",
               "connectors/state/validated_cache.py", "connectors/state/frames.py")


@dataclass
class Rewritten:
    """A run's workbook written again from the kept one: what the run reports about it (`meta`:
    connectors.state.kept_workbook)."""

    staged: Path
    rows: dict[str, int]
    notes: list[str]
    flags_count: int | None


def store(run: RunContext) -> KeptWorkbooks | None:
    """Kept workbooks beside the validated rows (none when those are not kept: an in-memory state)."""
    cache = run.validated_cache
    return None if cache is None else KeptWorkbooks(cache.folder.parent / "workbooks")


def workbook_key(run: RunContext, extracted: list[Extracted], failures: dict[str, str], *, digests: list[str],
                 version: str, keeping: bool = False) -> str | None:
    """The key of everything the workbook of this run shows but the About sheet (`digests`: each
    source's validation digest; `version`: the package's); None when the run must not reuse a
    workbook (`keeping`: keep one; a full refresh keeps what it wrote)."""
    cfg = run.config
    if (run.full_refresh and not keeping) or cfg.reports or failures or len(extracted) != len(cfg.sources):
        return None
    sources = []
    for src, e, digest in zip(cfg.sources, extracted, digests, strict=True):
        if e.source != src.name or e.stale or e.version is None:
            return None
        sources.append([src.name, e.version, digest, repr(e.rates)])
    key = {"version": version, "code": _code_digest(), "config": cfg.model_dump(mode="json"),
           "config_sha256": run.loaded.sha256, "as_of": run.as_of.isoformat(), "period": run.period.label,
           "sources": sources, "history": history_stamp(run.engine, cfg.report, run.as_of)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def find(run: RunContext, key: str | None) -> Kept | None:
    """The workbook kept for this run's report under `key` (intact), else None."""
    kept = store(run)
    return None if key is None or kept is None else kept.match(run.config.report, key)


def about_rows(meta: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """(extra rows, notes) of the About sheet of a run that writes the kept workbook again: the kept
    run's, and which run's sheets these are."""
    extra = [(str(k), str(v)) for k, v in meta.get("about_extra", [])]
    extra.append(("workbook", f"the sheets of run {meta.get('run_id', '?')} ({meta.get('generated_at', '?')}), "
                              "written again: nothing they show changed since"))
    return extra, [str(n) for n in meta.get("about_notes", [])]


def kept_counts(meta: dict[str, Any], source: str) -> tuple[int, int, int] | None:
    """(read, loaded, rejected) of `source` as the kept run reported them; None if not kept so."""
    c = (meta.get("sources") or {}).get(source)
    ok = isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) for v in c)
    return (c[0], c[1], c[2]) if ok else None


def rewrite_kept(run: RunContext, kept: Kept, about: SheetData, staging: Path) -> Rewritten | None:
    """`kept` written again into `staging` with `about` as its About sheet; None (nothing written)
    when it cannot be rewritten."""
    from connectors.workbook.reuse import rewrite

    meta = kept.meta
    staged = staging / "pipeline.xlsx"
    stats = rewrite(kept.path, staged, about, late_part=str(meta.get("late_part", "")),
                    late_table=str(meta.get("late_table", "")), generated_at=run.started)
    if stats is None:
        return None
    log.info("report %s: nothing it shows changed since the last run; its workbook was written again",
             run.config.report)
    return Rewritten(staged, {**meta.get("rows", {}), **stats.rows}, list(meta.get("notes", [])),
                     meta.get("flags_count"))


def keep(run: RunContext, key: str | None, rendered: dict[str, Any], flags_count: int | None,
         counts: dict[str, list[int]], staged: Path) -> None:
    """After the state is committed (so `key` names this run's snapshot): keep this run's workbook
    for the next run. `rendered`: what `render` noted (the late sheet's part and table, the About
    rows, rows per sheet, notes); `counts`: per source [read, loaded, rejected]. Failing here only
    costs the next run time."""
    kept = store(run)
    if kept is None:
        return
    if key is None or not rendered.get("late_part"):
        kept.drop(run.config.report)
        return
    meta = {**rendered, "flags_count": flags_count, "run_id": run.run_id,
            "generated_at": run.started.strftime("%Y-%m-%d %H:%M:%S UTC"), "sources": counts}
    try:
        kept.save(run.config.report, key, staged, meta, move=True)  # the staged copy is not used after this
    except OSError as exc:
        log.warning("report %s: could not keep its workbook for the next run (%s)", run.config.report, exc.strerror)


def _code_digest() -> str:
    """SHA-256 over the modules that shape the workbook from the validated rows."""
    h = hashlib.sha256()
    files = [p for d in _CODE for p in sorted((_ROOT / d).rglob("*.py"))] + [_ROOT / f for f in _CODE_FILES]
    for path in files:
        h.update(str(path.relative_to(_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
