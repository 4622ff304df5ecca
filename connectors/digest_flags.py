"""Each run's flags, remembered in the state database so the next digest can say new / resolved."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import sqlalchemy as sa

from connectors.state_db import metadata

FlagRow = tuple[str, str, str, str]  # key, rule, severity, message

digest_flags = sa.Table(
    "digest_flags",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("flag_key", sa.String(1000), primary_key=True),
    sa.Column("rule", sa.String(20), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)


def load_previous(engine: sa.Engine, report: str, as_of: date) -> tuple[date | None, list[FlagRow]]:
    """The flags stored by the latest run of `report` with an as_of before `as_of`."""
    digest_flags.create(engine, checkfirst=True)
    with engine.connect() as conn:
        prev = conn.execute(sa.select(sa.func.max(digest_flags.c.as_of)).where(
            digest_flags.c.report == report, digest_flags.c.as_of < as_of)).scalar_one_or_none()
        if prev is None:
            return None, []
        rows = conn.execute(sa.select(digest_flags.c.flag_key, digest_flags.c.rule, digest_flags.c.severity,
                                      digest_flags.c.message)
                            .where(digest_flags.c.report == report, digest_flags.c.as_of == prev)).all()
    return prev, [(r[0], r[1], r[2], r[3]) for r in rows]


def save(engine: sa.Engine, report: str, as_of: date, flags: Iterable[FlagRow]) -> None:
    """Store this run's flags, replacing an earlier run for the same (report, as_of)."""
    digest_flags.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(sa.delete(digest_flags).where(digest_flags.c.report == report, digest_flags.c.as_of == as_of))
        rows = [{"report": report, "as_of": as_of, "flag_key": k, "rule": r, "severity": s, "message": m}
                for k, r, s, m in flags]
        if rows:
            conn.execute(digest_flags.insert(), rows)
