"""Prefect artifacts of a run: the KPI table (markdown), the flags table and the workbook link.

Only called from inside the Prefect flow. Keys are per report, so the Artifacts page shows each
report's latest KPIs, flags and workbook, with the history of every run behind them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from flows.notify import Digest, KpiChange, fmt_change, fmt_value

MAX_FLAG_ROWS = 500
_SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2}


def artifact_key(report: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", report.lower()).strip("-") or "report"
    return f"{slug}-{what}"


def kpi_markdown(digest: Digest, kpis: list[KpiChange]) -> str:
    since = f"change vs the snapshot of {digest.previous_as_of.isoformat()}" if digest.previous_as_of else \
        "no earlier snapshot"
    lines = [f"# {digest.report}: KPIs as of {digest.as_of.isoformat()} ({digest.period})", "",
             f"_{since}_", "", "| KPI | value | previous | change |", "|---|---:|---:|---:|"]
    lines += [f"| {k.metric} | {fmt_value(k.value, k.unit, digest.currency)} | "
              f"{fmt_value(k.previous, k.unit, digest.currency)} | {fmt_change(k, digest.currency)} |" for k in kpis]
    if digest.flags_total is not None:
        lines += ["", f"**Flags**: {digest.flags_total:,} ({digest.new_count:,} new, "
                  f"{digest.resolved_count:,} resolved)"]
    return "\n".join(lines)


def flag_rows(flags: pd.DataFrame | None, limit: int = MAX_FLAG_ROWS) -> list[dict[str, Any]]:
    """The most severe `limit` flags as plain rows (rule, check, severity, scope, key, message)."""
    if flags is None or len(flags) == 0:
        return []
    cols = [c for c in ("rule", "check", "severity", "scope", "key", "message") if c in flags.columns]
    ranked = flags.assign(_rank=flags["severity"].map(_SEVERITY_RANK).fillna(3)).sort_values(
        ["_rank", "rule"], kind="stable").head(limit)
    return [{c: (None if pd.isna(v) else str(v)) for c, v in zip(cols, row, strict=True)}
            for row in ranked[cols].itertuples(index=False, name=None)]


def workbook_url(output: str) -> str:
    return output if output.startswith(("http://", "https://")) else Path(output).resolve().as_uri()


def publish_artifacts(digest: Digest, flags: pd.DataFrame | None) -> list[str]:
    """Create the three artifacts in the current flow run; returns their keys."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    keys = []
    key = artifact_key(digest.report, "kpis")
    create_markdown_artifact(markdown=kpi_markdown(digest, digest.all_kpis), key=key,
                             description=f"{digest.report}: KPIs as of {digest.as_of.isoformat()}")
    keys.append(key)
    rows = flag_rows(flags)
    key = artifact_key(digest.report, "flags")
    total = digest.flags_total if digest.flags_total is not None else len(rows)
    placeholder = "no flags" if flags is not None else "flag details are in the workbook's Flags sheet"
    create_table_artifact(table=rows or [{"rule": None, "message": placeholder}], key=key,
                          description=f"{digest.report}: {total:,} flags"
                          + (f" (the {len(rows):,} most severe shown)" if total > len(rows) else ""))
    keys.append(key)
    for i, out in enumerate(digest.workbooks):
        key = artifact_key(digest.report, "workbook" if i == 0 else f"workbook-{i + 1}")
        create_link_artifact(link=workbook_url(out), link_text=Path(out).name or out, key=key,
                             description=f"{digest.report}: workbook as of {digest.as_of.isoformat()}")
        keys.append(key)
    return keys
