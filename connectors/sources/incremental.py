"""One incremental protocol for the sources that keep state (HubSpot, Salesforce).

A run reads the records changed in `[start, signpost)`. The signpost is the run's start
(`ExtractContext.run_started`, fixed once per run); `start` is the stored cursor minus the overlap
window (which re-reads changes that committed late), and never later than the signpost. The
first run, a `full_refresh`, a cursor that cannot be read, or one written for another query shape
(its fingerprint differs) reads everything instead. The cursor to commit is the signpost: it
travels in `PendingState`, which the flow commits only when the whole run succeeded, so a failed
run leaves the stored cursor where it was and the next run reads its window again.

Changed records replace the stored ones by id; an id the source reports gone leaves the store,
unless the same run read it again (`deleted_ids`, `merge`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import pandas as pd

from connectors.extracted import ExtractContext, Extracted, PendingState
from connectors.http.session import Observer
from connectors.state import source_state
from connectors.state.source_state import SourceVersion

T = TypeVar("T")
S = TypeVar("S", bound="RecordStore[Any]")


@dataclass(frozen=True)
class CursorFormat:
    """How one source writes its cursor text: the signpost and the fingerprint of what it reads."""

    format: Callable[[datetime, str], str]
    parse: Callable[[str | None], tuple[datetime | None, str | None]]  # (None, None): unreadable


def signpost_of(run_started: datetime, whole_seconds: bool = False) -> datetime:
    """The run's start in UTC (a naive time is taken as UTC); `whole_seconds` for a source whose
    timestamps have no fraction (SOQL), so the window's end is one it can express."""
    at = (run_started if run_started.tzinfo else run_started.replace(tzinfo=UTC)).astimezone(UTC)
    return at.replace(microsecond=0) if whole_seconds else at


@dataclass(frozen=True)
class Window:
    """What one run reads and commits. `since` None: read everything and replace the stored state."""

    signpost: datetime
    cursor: str  # the cursor to commit: the signpost (with the fingerprint), never past it
    since: datetime | None = None  # the stored cursor this run continues from
    start: datetime | None = None  # since - overlap, never past the signpost
    notes: tuple[str, ...] = ()
    keeps_state: bool = False  # False: nothing to commit (no state database, or the source keeps none)
    stored: SourceVersion | None = None  # the version of the stored rows
    stored_ids: frozenset[str] = frozenset()  # read only when `open_window(needs_records=True)`

    @property
    def incremental(self) -> bool:
        return self.since is not None

    def full(self) -> Window:
        """This window as a full read (e.g. a cursor with nothing stored behind it)."""
        return replace(self, since=None, start=None)

    def holds(self, cached_version: str | None) -> bool:
        """True when the stored rows are the version the flow already holds validated."""
        return self.stored is not None and self.stored.version == cached_version

    def version(self, same: bool, source: str, *basis: Any, detail: dict[str, Any] | None = None) -> SourceVersion:
        """The version of this run's rows: the stored one when an incremental run changed nothing
        (`same`), else a new token derived from the stored one, the cursor and `basis`."""
        previous = self.stored.version if self.stored else None
        if self.incremental and same and previous:
            return SourceVersion(previous, detail or {})
        return SourceVersion(source_state.new_version(previous, source, self.cursor, *basis), detail or {})

    def pending(self, upserts: Any, deletes: Iterable[str], version: SourceVersion,
                field_history: dict[str, list] | None = None) -> PendingState | None:
        """The cursor and record changes (and the close date / amount history of the records read,
        if the source keeps it) for the flow to commit when the run succeeds; None when nothing
        is kept. A full read replaces every stored record."""
        if not self.keeps_state:
            return None
        return PendingState(cursor=self.cursor, upserts=upserts, deletes=list(deletes),
                            replace_all=not self.incremental, version=version, field_history=field_history)

    def reused(self, source: str, note: str, meter: Meter) -> Extracted:
        """Nothing changed since the rows the flow holds: no rows, only the cursor moves on."""
        assert self.stored is not None
        return Extracted(source=source, records=pd.DataFrame(), notes=[*self.notes, note], **meter.counts(),
                         pending_state=PendingState(cursor=self.cursor), version=self.stored.version,
                         reused=True)

    def delta(self, ids: Iterable[str]) -> dict[str, Any]:
        """Extracted's delta_base / delta_ids: an incremental run's rows differ from the stored
        version's only in `ids` (changed, new or gone)."""
        if not self.incremental:
            return {"delta_base": None, "delta_ids": None}
        return {"delta_base": self.stored.version if self.stored else None, "delta_ids": frozenset(ids)}


def plan(stored_cursor: str | None, run_started: datetime, overlap_seconds: float, fingerprint: str,
         cursor_format: CursorFormat, *, full_refresh: bool = False, whole_seconds: bool = False,
         refresh_note: str = "what the source reads changed since the last run: full refresh") -> Window:
    """The window of a run from the stored cursor text (None: nothing stored)."""
    signpost = signpost_of(run_started, whole_seconds)
    window = Window(signpost=signpost, cursor=cursor_format.format(signpost, fingerprint))
    if full_refresh or not stored_cursor:
        return window
    since, stored_fp = cursor_format.parse(stored_cursor)
    if since is None:
        return window
    if stored_fp != fingerprint:
        return replace(window, notes=(refresh_note,))
    start = min(since, signpost) - timedelta(seconds=overlap_seconds)
    return replace(window, since=since, start=start)


def open_window(ctx: ExtractContext, source: str, fingerprint: str, cursor_format: CursorFormat,
                overlap_seconds: float, *, incremental: bool = True, keeps_state: bool = True,
                needs_records: bool = False, whole_seconds: bool = False,
                refresh_note: str = "what the source reads changed since the last run: full refresh") -> Window:
    """`plan` from the state database: the stored cursor (when `incremental`) and version.

    `keeps_state` False (or no state database): nothing is read and nothing will be committed.
    `needs_records`: also read the stored ids; a cursor with no records stored is a first run."""
    stored_cursor = None
    use_state = ctx.engine is not None and keeps_state
    if use_state and incremental and not ctx.full_refresh:
        stored_cursor = source_state.get_cursor(ctx.engine, source)
    window = plan(stored_cursor, ctx.run_started, overlap_seconds, fingerprint, cursor_format,
                  full_refresh=ctx.full_refresh, whole_seconds=whole_seconds, refresh_note=refresh_note)
    if not use_state:
        return window
    window = replace(window, keeps_state=True, stored=source_state.get_version(ctx.engine, source))
    if needs_records and window.incremental:
        ids = frozenset(source_state.stored_ids(ctx.engine, source))
        window = replace(window, stored_ids=ids) if ids else window.full()
    return window


# ----------------------------------------------------------------------------- changes


class RecordStore(Protocol[T]):
    """Records by id that changes are merged into (a `Records` dict, HubSpot's DealTable)."""

    def add(self, records: list[tuple[str, T]]) -> None: ...

    def remove(self, record_id: str) -> None: ...


class Records(dict[str, T]):
    """A plain dict of records by id, as a RecordStore."""

    def add(self, records: list[tuple[str, T]]) -> None:
        self.update(records)

    def remove(self, record_id: str) -> None:
        self.pop(record_id, None)


def deleted_ids(gone: Iterable[str], changed: Collection[str], stored: Container[str]) -> list[str]:
    """The stored ids the source reports gone, less those this run read again, sorted."""
    return sorted({k for k in gone if k not in changed and k in stored})


def merge(store: S, changed: Mapping[str, Any], deletes: Iterable[str]) -> S:
    """Remove `deletes` from `store`, then add or replace the `changed` records (an id in both
    keeps its new record, as `source_state.save_state` does). Returns `store`."""
    for record_id in deletes:
        store.remove(record_id)
    store.add(list(changed.items()))
    return store


# ----------------------------------------------------------------------------- counters


@dataclass
class Meter:
    """A source's time and request counters since its extraction started."""

    observer: Observer
    started: float = field(default_factory=time.monotonic)
    before: tuple[int, int, float] = field(init=False)

    def __post_init__(self) -> None:
        obs = self.observer
        self.before = (obs.requests, obs.retries, obs.waited_seconds)

    def counts(self) -> dict[str, Any]:
        """Extracted's seconds, requests, retries and waited_seconds for this source."""
        obs = self.observer
        return {"seconds": time.monotonic() - self.started, "requests": obs.requests - self.before[0],
                "retries": obs.retries - self.before[1], "waited_seconds": obs.waited_seconds - self.before[2]}
