"""Builders for analytics tests: canonical opportunity and history frames from short dicts."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd

from config.models import AppConfig
from config.schema import BOOL_FIELDS, CANONICAL_FIELDS, ROW_ID_COLUMN, SOURCE_COLUMN

DATE_KINDS = {f.name for f in CANONICAL_FIELDS if f.kind == "date"}


def make_cfg(**overrides: Any) -> AppConfig:
    base: dict[str, Any] = {
        "sources": [{"type": "csv", "name": "crm", "path": "x.csv"}],
        "destinations": [{"type": "file", "path": "out.xlsx"}],
    }
    base.update(overrides)
    return AppConfig.model_validate(base)


def make_opps(rows: list[dict[str, Any]], source: str = "crm") -> pd.DataFrame:
    """Rows of canonical values (dates as date/ISO strings); unspecified fields get neutral defaults."""
    out: dict[str, Any] = {}
    n = len(rows)
    for f in CANONICAL_FIELDS:
        vals = [r.get(f.name) for r in rows]
        if f.name in DATE_KINDS:
            out[f.name] = pd.to_datetime(pd.Series(vals, dtype=object)).astype("datetime64[ns]")
        elif f.kind == "amount":
            out[f.name] = pd.Series([float("nan") if v is None else float(v) for v in vals], dtype=float)
        elif f.name in BOOL_FIELDS:
            out[f.name] = pd.Series([bool(v) for v in vals], dtype=bool)
        elif f.kind == "deal_type":
            out[f.name] = pd.Series([v or "new" for v in vals], dtype=object)
        else:
            out[f.name] = pd.Series(vals, dtype=object)
    frame = pd.DataFrame(out, index=range(n))
    if n and frame["opportunity_id"].isna().any():
        frame["opportunity_id"] = [str(r.get("opportunity_id") or f"D{i + 1}") for i, r in enumerate(rows)]
    if n and frame["status"].isna().any():
        stage_status = {"Won": "won", "Lost": "lost"}
        frame["status"] = [r.get("status") or stage_status.get(r.get("stage"), "open") for r in rows]
    frame[SOURCE_COLUMN] = pd.Series([source] * n, dtype=object)
    frame[ROW_ID_COLUMN] = (source + ":" + frame["opportunity_id"].astype(str)).astype(object) if n else pd.Series(dtype=object)
    return frame


def make_history(rows: list[tuple[str, str, str]], source: str = "crm") -> pd.DataFrame:
    """(opportunity_id, stage, entered_date ISO) tuples."""
    return pd.DataFrame({
        "opportunity_id": pd.Series([r[0] for r in rows], dtype=object),
        "stage": pd.Series([r[1] for r in rows], dtype=object),
        "entered_date": pd.to_datetime(pd.Series([r[2] for r in rows], dtype=object)).astype("datetime64[ns]"),
        SOURCE_COLUMN: pd.Series([source] * len(rows), dtype=object),
    })


def d(s: str) -> date:
    return date.fromisoformat(s)


def metric(metrics: pd.DataFrame, name: str, scope: str = "team", key: str = "all") -> float:
    row = metrics[(metrics["metric"] == name) & (metrics["scope"] == scope) & (metrics["key"] == key)]
    assert len(row) == 1, (name, scope, key, len(row))
    return float(row["value"].iloc[0])


def run(rows: list[dict[str, Any]], as_of: str, cfg: AppConfig | None = None, history: list[tuple[str, str, str]] | None = None,
        **kwargs: Any):
    """build_analytics over `rows` (see make_opps) at `as_of`."""
    from transforms.analytics import build_analytics

    return build_analytics(make_opps(rows), make_history(history or []), cfg or make_cfg(), d(as_of), **kwargs)


def fired(analytics, check: str, key: str | None = None) -> bool:
    f = analytics.flags
    sel = f["check"] == check
    if key is not None:
        sel &= f["key"] == key
    return bool(sel.any())
