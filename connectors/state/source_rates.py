"""The exchange rates a CRM source read on its last successful run (table `source_rates`).

Backfill and the stale fallback rebuild a source's rows from its stored records; its rates come
from here, so its amounts convert the way the last run's did."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import sqlalchemy as sa

from config.models.finance import SourceRates
from connectors.state.tables import source_rates as table


def save_rates(conn: sa.Connection, source: str, rates: SourceRates) -> None:
    """Replace the stored rates of `source` inside the caller's transaction."""
    payload = {"base": rates.base, "origin": rates.origin,
               "rates": [[c, None if d is None else d.isoformat(), r] for c, d, r in rates.rates]}
    conn.execute(sa.delete(table).where(table.c.source == source))
    conn.execute(table.insert().values(source=source, payload=json.dumps(payload), updated_at=datetime.now(UTC)))


def load_rates(engine: sa.Engine, source: str) -> SourceRates | None:
    """The stored rates of `source`, or None (none stored, or unreadable)."""
    with engine.connect() as conn:
        text = conn.execute(sa.select(table.c.payload).where(table.c.source == source)).scalar()
    if text is None:
        return None
    try:
        p = json.loads(text)
        rows = tuple((str(c), None if d is None else date.fromisoformat(d), float(r)) for c, d, r in p["rates"])
        return SourceRates(str(p["base"]), rows, str(p["origin"]) + " (stored by the last run)")
    except (ValueError, KeyError, TypeError):
        return None
