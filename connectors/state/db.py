"""The local state database (SQLAlchemy Core): one engine over the tables of `connectors.state.tables`.

SQLite under `.state/` next to the config by default (the folder 0700, the file 0600, both refused
when another user owns or may write them); any SQLAlchemy URL (e.g. Postgres) works.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from connectors.state.private import StateFolderError, check_private_file, private_dir
from connectors.state.tables import metadata

__all__ = ["EmptyStateError", "default_state_url", "make_engine", "metadata"]


class EmptyStateError(StateFolderError):
    """The SQLite state file exists but holds nothing (0 bytes): the history it had is gone."""


def default_state_url(config_dir: Path) -> str:
    return f"sqlite:///{(config_dir / '.state' / 'pipeline-sync.db').as_posix()}"


def make_engine(url: str) -> sa.Engine:
    """Create the engine and the tables. A new SQLite file is created owner-only (0600), whole:
    its tables are made under a temporary name, then renamed into place.

    A SQLite file of 0 bytes is refused (EmptyStateError): it once held the Trends/Changes history,
    the CRM cursors and stored records, and starting over is the user's decision (delete the file).
    SQLite waits up to 30 s for another process's lock (`?timeout=<seconds>` in the URL sets it).
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        file_part, _, query = url[len("sqlite:///"):].partition("?")
        path = Path(file_part)
        private_dir(path.parent, tighten=path.parent.name == ".state")
        connect_args = {} if "timeout=" in query else {"timeout": 30}
        if check_private_file(path, "state database"):
            if path.stat().st_size == 0:
                raise EmptyStateError(
                    f"state database {path} is empty (0 bytes): the Trends/Changes history, CRM cursors and stored "
                    "records it held are gone (a full disk or an interrupted copy?). Restore it from a backup, or "
                    "delete the file to start over with no history")
        else:
            _create(path, query, connect_args)
        engine = sa.create_engine(url, connect_args=connect_args)
    else:
        engine = sa.create_engine(url)
    metadata.create_all(engine)
    return engine


def _create(path: Path, query: str, connect_args: dict) -> None:
    """A new SQLite file with every table, appearing under `path` only when complete (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.close(fd)
    try:
        engine = sa.create_engine(f"sqlite:///{tmp.as_posix()}" + (f"?{query}" if query else ""),
                                  connect_args=connect_args)
        try:
            metadata.create_all(engine)
        finally:
            engine.dispose()
        try:
            os.link(tmp, path)  # never replaces a database another process created meanwhile
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
