"""Per-source incremental state: the cursor and the current records, in the state database.

A connector reads the cursor and stored records, then hands the flow its new cursor and
changes; the flow commits them in the run's one transaction only after the run succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from connectors.state_db import metadata

cursors = sa.Table(
    "source_cursors",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("cursor", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

records = sa.Table(
    "source_records",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("record_id", sa.String(200), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),  # JSON object of raw values
)


def get_cursor(engine: sa.Engine, source: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(cursors.c.cursor).where(cursors.c.source == source)).scalar_one_or_none()


def load_records(engine: sa.Engine, source: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(records.c.payload).where(records.c.source == source).order_by(records.c.record_id))
        return [json.loads(r[0]) for r in rows]


def save_state(
    conn: sa.Connection,
    source: str,
    cursor: str | None,
    upserts: Iterable[tuple[str, dict]],
    deletes: Iterable[str] = (),
    replace_all: bool = False,
) -> None:
    """Write one source's new cursor and record changes inside the caller's transaction."""
    if replace_all:
        conn.execute(sa.delete(records).where(records.c.source == source))
    dels = list(deletes)
    for i in range(0, len(dels), 500):
        conn.execute(sa.delete(records).where(records.c.source == source, records.c.record_id.in_(dels[i:i + 500])))
    batch = [{"source": source, "record_id": rid, "payload": json.dumps(p, default=str)} for rid, p in upserts]
    if batch:
        ids = [b["record_id"] for b in batch]
        for i in range(0, len(ids), 500):
            conn.execute(sa.delete(records).where(records.c.source == source, records.c.record_id.in_(ids[i:i + 500])))
        conn.execute(records.insert(), batch)
    if cursor is not None:
        conn.execute(sa.delete(cursors).where(cursors.c.source == source))
        conn.execute(cursors.insert().values(source=source, cursor=cursor, updated_at=datetime.now(UTC)))


def records_frame(payloads: list[dict]) -> pd.DataFrame:
    return pd.DataFrame.from_records(payloads) if payloads else pd.DataFrame()
