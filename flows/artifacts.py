"""Prefect artifacts of a run: the KPI table (markdown), the flags table and the workbook link.

Only called from inside the Prefect flow. Keys are per report, so the Artifacts page shows each
report's latest KPIs, flags and workbook, with the history of every run behind them. Every text
they publish (markdown, table cells, link, link text, descriptions) goes through
`connectors.redact.redact`: a `${...}` value in a flag message or a workbook path, or a password in
a workbook URL, is shown as ***.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from connectors.redact import redact
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
    return redact("\n".join(lines))


def flag_rows(flags: pd.DataFrame | None, limit: int = MAX_FLAG_ROWS) -> list[dict[str, Any]]:
    """The most severe `limit` flags as plain rows (rule, check, severity, scope, key, message)."""
    if flags is None or len(flags) == 0:
        return []
    cols = [c for c in ("rule", "check", "severity", "scope", "key", "message") if c in flags.columns]
    ranked = flags.assign(_rank=flags["severity"].map(_SEVERITY_RANK).fillna(3)).sort_values(
        ["_rank", "rule"], kind="stable").head(limit)
    return [{c: (None if pd.isna(v) else redact(str(v))) for c, v in zip(cols, row, strict=True)}
            for row in ranked[cols].itertuples(index=False, name=None)]


def workbook_url(output: str) -> str:
    """The workbook's address as a link: a URL as given, a local path as a file:// URI (redacted
    before it is percent-encoded, so a secret in it cannot slip through encoded)."""
    if output.startswith(("http://", "https://")):
        return redact(output)
    return Path(redact(str(Path(output).resolve()))).as_uri()


def artifact_specs(digest: Digest, flags: pd.DataFrame | None) -> list[tuple[str, dict[str, Any]]]:
    """(kind, keyword arguments) of each artifact to create: "markdown" (the KPIs), "table" (the
    flags) and one "link" per workbook; every text in them redacted."""
    specs: list[tuple[str, dict[str, Any]]] = [("markdown", {
        "markdown": kpi_markdown(digest, digest.all_kpis), "key": artifact_key(digest.report, "kpis"),
        "description": redact(f"{digest.report}: KPIs as of {digest.as_of.isoformat()}")})]
    rows = flag_rows(flags)
    total = digest.flags_total if digest.flags_total is not None else len(rows)
    placeholder = "no flags" if flags is not None else "flag details are in the workbook's Flags sheet"
    specs.append(("table", {
        "table": rows or [{"rule": None, "message": placeholder}], "key": artifact_key(digest.report, "flags"),
        "description": redact(f"{digest.report}: {total:,} flags"
                              + (f" (the {len(rows):,} most severe shown)" if total > len(rows) else ""))}))
    for i, out in enumerate(digest.workbooks):
        specs.append(("link", {
            "link": workbook_url(out), "link_text": redact(Path(out).name or out),
            "key": artifact_key(digest.report, "workbook" if i == 0 else f"workbook-{i + 1}"),
            "description": redact(f"{digest.report}: workbook as of {digest.as_of.isoformat()}")}))
    return specs


def publish_artifacts(digest: Digest, flags: pd.DataFrame | None) -> list[str]:
    """Create the artifacts of `artifact_specs` in the current flow run; returns their keys."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    create = {"markdown": create_markdown_artifact, "table": create_table_artifact, "link": create_link_artifact}
    keys = []
    for kind, kwargs in artifact_specs(digest, flags):
        create[kind](**kwargs)
        keys.append(kwargs["key"])
    return keys
