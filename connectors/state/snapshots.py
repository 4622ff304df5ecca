"""Snapshot history (owned by the analytics work): team metrics and open deals per report and as_of.

SQLAlchemy Core with portable types only (works on SQLite and Postgres). Saving a snapshot for
a (report, as_of) that is already stored replaces it, inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime

import pandas as pd
import sqlalchemy as sa

from config.snapshot_types import (
    SNAPSHOT_DEAL_COLUMNS,
    SnapshotHistory,
    SnapshotRecord,
    empty_snapshot_deals,
)
from connectors.state.tables import snapshot_deals, snapshot_digests, snapshot_metrics, snapshots

_BATCH = 20_000


def _clean(v: object) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    return v


def deals_digest(deals: pd.DataFrame) -> str:
    """sha256 naming a snapshot's deals (values, columns and order)."""
    h = hashlib.sha256("|".join(map(str, deals.columns)).encode())
    if len(deals):
        h.update(pd.util.hash_pandas_object(deals, index=False).to_numpy().tobytes())
    return h.hexdigest()


def save_snapshot(conn: sa.Connection, report: str, record: SnapshotRecord) -> None:
    """Store (or replace) the snapshot of `report` at `record.as_of` in the caller's transaction.

    Deals identical to those already stored for that date (a rerun where nothing changed) are kept
    as they are; the metrics and the save time are always written.
    """
    as_of = record.as_of
    digest = deals_digest(record.deals)
    where = (snapshot_digests.c.report == report, snapshot_digests.c.as_of == as_of)
    stored = conn.execute(sa.select(snapshot_digests.c.deals_sha256).where(*where)).scalar_one_or_none()
    same_deals = stored == digest and conn.execute(
        sa.select(snapshots.c.as_of).where(snapshots.c.report == report, snapshots.c.as_of == as_of)
    ).first() is not None
    for table in (snapshot_metrics, snapshots) if same_deals else (snapshot_deals, snapshot_metrics, snapshots):
        conn.execute(sa.delete(table).where(table.c.report == report, table.c.as_of == as_of))
    if not same_deals:
        conn.execute(sa.delete(snapshot_digests).where(*where))
        conn.execute(snapshot_digests.insert().values(report=report, as_of=as_of, deals_sha256=digest))
    conn.execute(snapshots.insert().values(report=report, as_of=as_of, saved_at=datetime.now(UTC)))
    rows = [{"report": report, "as_of": as_of, "metric": m, "value": _clean(None if v is None else float(v))}
            for m, v in record.metrics.items()]
    if rows:
        conn.execute(snapshot_metrics.insert(), rows)
    deals = record.deals
    if len(deals) and not same_deals:
        close = pd.to_datetime(deals["close_date"])
        cols = {
            "deal_id": deals["deal_id"].astype(str).tolist(),
            "owner": [_clean(v) for v in deals["owner"].astype(object).tolist()],
            "product": [_clean(v) for v in deals["product"].astype(object).tolist()],
            "stage": [_clean(v) for v in deals["stage"].astype(object).tolist()],
            "amount": [_clean(float(v)) for v in deals["amount"].astype(float).tolist()],
            "close_date": [None if pd.isna(v) else v.date() for v in close],
        }
        n = len(deals)
        for start in range(0, n, _BATCH):
            stop = min(start + _BATCH, n)
            batch = [{"report": report, "as_of": as_of, **{c: cols[c][i] for c in SNAPSHOT_DEAL_COLUMNS}}
                     for i in range(start, stop)]
            conn.execute(snapshot_deals.insert(), batch)


def load_history(engine: sa.Engine, report: str, before_or_on: date) -> SnapshotHistory:
    """Team metrics of every snapshot on or before `before_or_on`, and the open deals of the
    latest snapshot strictly before it."""
    with engine.connect() as conn:
        m = conn.execute(
            sa.select(snapshot_metrics.c.as_of, snapshot_metrics.c.metric, snapshot_metrics.c.value)
            .where(snapshot_metrics.c.report == report, snapshot_metrics.c.as_of <= before_or_on)
            .order_by(snapshot_metrics.c.as_of, snapshot_metrics.c.metric)
        ).all()
        prev = conn.execute(
            sa.select(sa.func.max(snapshots.c.as_of)).where(snapshots.c.report == report, snapshots.c.as_of < before_or_on)
        ).scalar_one_or_none()
        deals = empty_snapshot_deals()
        if prev is not None:
            rows = conn.execute(
                sa.select(*[snapshot_deals.c[c] for c in SNAPSHOT_DEAL_COLUMNS])
                .where(snapshot_deals.c.report == report, snapshot_deals.c.as_of == prev)
                .order_by(snapshot_deals.c.deal_id)
            ).all()
            if rows:
                cols = list(zip(*rows, strict=True))
                deals = pd.DataFrame({c: pd.Series(list(v), dtype=object) for c, v in zip(SNAPSHOT_DEAL_COLUMNS, cols, strict=True)})
                deals["amount"] = pd.to_numeric(deals["amount"], errors="coerce").astype(float)
                deals["close_date"] = pd.to_datetime(deals["close_date"]).astype("datetime64[ns]")
    metrics = pd.DataFrame({
        "as_of": pd.Series([r[0] for r in m], dtype=object),
        "metric": pd.Series([r[1] for r in m], dtype=object),
        "value": pd.Series([float("nan") if r[2] is None else float(r[2]) for r in m], dtype=float),
    })
    return SnapshotHistory(metrics=metrics, previous_as_of=prev, previous_deals=deals)


def stored_dates(engine: sa.Engine, report: str) -> list[date]:
    """The as_of dates stored for `report`, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(snapshots.c.as_of).where(snapshots.c.report == report)
                                 .order_by(snapshots.c.as_of)).scalars())
