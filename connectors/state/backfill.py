"""Which (report, as_of) dates a backfill has completed, in the state database.

A row is written in the same transaction as that date's snapshot, so a date counts as done
exactly when its snapshot (and, when workbooks are written, its workbook) is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa

from connectors.state.tables import backfill_dates


@dataclass(frozen=True)
class CompletedDate:
    as_of: date
    open_deals: int | None
    flags: int | None
    wrote_workbook: bool
    output: str | None


def mark_done(conn: sa.Connection, report: str, as_of: date, *, open_deals: int | None, flags: int | None,
              wrote_workbook: bool, output: str | None) -> None:
    """Record (or replace) the completion of `report` at `as_of` inside the caller's transaction."""
    conn.execute(sa.delete(backfill_dates).where(backfill_dates.c.report == report, backfill_dates.c.as_of == as_of))
    conn.execute(backfill_dates.insert().values(report=report, as_of=as_of, completed_at=datetime.now(UTC),
                                                open_deals=open_deals, flags=flags, wrote_workbook=wrote_workbook,
                                                output=output))


def forget(conn: sa.Connection, report: str, dates: list[date]) -> None:
    """Drop the completion of `dates` (a forced backfill recomputes them; interrupted, it resumes there)."""
    for i in range(0, len(dates), 500):
        conn.execute(sa.delete(backfill_dates).where(backfill_dates.c.report == report,
                                                     backfill_dates.c.as_of.in_(dates[i:i + 500])))


def completed(engine: sa.Engine, report: str) -> dict[date, CompletedDate]:
    """The dates of `report` a backfill completed, with what it recorded."""
    cols = backfill_dates.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cols.as_of, cols.open_deals, cols.flags, cols.wrote_workbook, cols.output)
                            .where(cols.report == report).order_by(cols.as_of)).all()
    return {r[0]: CompletedDate(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows}
