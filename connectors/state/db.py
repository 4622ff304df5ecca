"""The local state database (SQLAlchemy Core): one engine over the tables of `connectors.state.tables`.

SQLite under `.state/` next to the config by default; any SQLAlchemy URL (e.g. Postgres) works.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from connectors.state.tables import metadata

__all__ = ["default_state_url", "make_engine", "metadata"]


def default_state_url(config_dir: Path) -> str:
    return f"sqlite:///{(config_dir / '.state' / 'pipeline-sync.db').as_posix()}"


def make_engine(url: str) -> sa.Engine:
    """Create the engine and the tables. A new SQLite file is created owner-only (0600).

    SQLite waits up to 30 s for another process's lock (`?timeout=<seconds>` in the URL sets it).
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        file_part, _, query = url[len("sqlite:///"):].partition("?")
        path = Path(file_part)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        engine = sa.create_engine(url, connect_args={} if "timeout=" in query else {"timeout": 30})
    else:
        engine = sa.create_engine(url)
    metadata.create_all(engine)
    return engine
