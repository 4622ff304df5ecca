"""A source's close_date / amount history kept between runs (issue 22), for sources whose history
is read only for the records that changed (HubSpot): per record, its entries as JSON
`[[changed_at, field, value], ...]` (oldest first). Written in the run's transaction (the flow's
commit_state), like the records themselves; read by the extractor to complete this run's history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pandas as pd
import sqlalchemy as sa

from config.schema import FIELD_HISTORY_COLUMNS
from connectors.state.tables import source_field_history

Entries = list[list]


def load_entries(engine: sa.Engine, source: str) -> dict[str, Entries]:
    """record id -> entries, for every record of `source` that has any."""
    t = source_field_history.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.record_id, t.entries).where(t.source == source)).all()
    return {rid: json.loads(text) for rid, text in rows}


def save_entries(conn: sa.Connection, source: str, upserts: Mapping[str, Entries], deletes: Sequence[str],
                 replace_all: bool) -> None:
    """Replace the entries of `upserts`' records, drop `deletes` (or, with `replace_all`, every other record)."""
    t = source_field_history.c
    if replace_all:
        conn.execute(sa.delete(source_field_history).where(t.source == source))
    else:
        gone = [*deletes, *upserts]
        for i in range(0, len(gone), 500):
            conn.execute(sa.delete(source_field_history).where(t.source == source, t.record_id.in_(gone[i:i + 500])))
    rows = [{"source": source, "record_id": k, "entries": json.dumps(v, separators=(",", ":"))}
            for k, v in upserts.items() if v]
    for i in range(0, len(rows), 5_000):
        conn.execute(source_field_history.insert(), rows[i:i + 5_000])


def entries_frame(entries: Mapping[str, Entries]) -> pd.DataFrame:
    """record id -> entries as the raw field-history frame (config.schema.FIELD_HISTORY_COLUMNS)."""
    rows = [(rid, field, when, value) for rid, items in entries.items() for when, field, value in items]
    return pd.DataFrame(rows, columns=list(FIELD_HISTORY_COLUMNS), dtype=object)
