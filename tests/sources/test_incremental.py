"""The one incremental protocol (connectors/sources/incremental.py) HubSpot and Salesforce share:
the window's start and signpost, the cursor to commit, a failed run, deletions and the merge."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.extracted import ExtractContext
from connectors.http.session import Observer
from connectors.sources.hubspot.extract import CURSOR as HUBSPOT_CURSOR
from connectors.sources.hubspot.table import DealTable
from connectors.sources.incremental import (
    CursorFormat,
    Meter,
    Records,
    Window,
    deleted_ids,
    merge,
    open_window,
    plan,
    signpost_of,
)
from connectors.sources.salesforce.query import CURSOR as SALESFORCE_CURSOR
from connectors.state.db import make_engine
from connectors.state.source_state import SourceVersion, get_cursor, load_records, save_state

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)
FP = "abc123"
FORMATS = [pytest.param(HUBSPOT_CURSOR, id="hubspot"), pytest.param(SALESFORCE_CURSOR, id="salesforce")]


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return make_engine("sqlite:///" + str(tmp_path / "state.db"))


def ctx(engine: sa.Engine | None, started: datetime, *, full_refresh: bool = False,
        cached_version: str | None = None) -> ExtractContext:
    return ExtractContext(engine=engine, observer=Observer(), as_of=date(2026, 11, 27), run_started=started,
                          tz=UTC, full_refresh=full_refresh, cached_version=cached_version)


def commit(engine: sa.Engine, source: str, win: Window, upserts: list[tuple[str, dict]],
           deletes: list[str] = (), same: bool = False) -> None:
    """What the flow does once the whole run succeeded."""
    pending = win.pending(upserts, deletes, win.version(same, source, len(upserts), len(deletes)))
    assert pending is not None
    with engine.begin() as conn:
        save_state(conn, source, pending.cursor, pending.upserts, pending.deletes, pending.replace_all,
                   version=pending.version)


# ----------------------------------------------------------------------------- the window


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("cursor_at", "overlap", "start"), [
    (RUN1, 0, RUN1),
    (RUN1, 120, RUN1 - timedelta(seconds=120)),
    (RUN2, 0, RUN2),  # the cursor is the signpost: an empty window
    (RUN2 + timedelta(hours=3), 60, RUN2 - timedelta(seconds=60)),  # a cursor ahead of this run's start
])
def test_start_is_cursor_minus_overlap_never_past_the_signpost(fmt: CursorFormat, cursor_at: datetime,
                                                               overlap: int, start: datetime) -> None:
    win = plan(fmt.format(cursor_at, FP), RUN2, overlap, FP, fmt)
    assert win.incremental and win.since == cursor_at
    assert win.start == start and win.start <= win.signpost == RUN2
    assert fmt.parse(win.cursor) == (RUN2, FP)  # the cursor to commit is the signpost, whatever the stored one


@pytest.mark.parametrize(("started", "whole_seconds", "signpost"), [
    (datetime(2026, 11, 27, 9, 0, 5, 987_000, tzinfo=UTC), False, datetime(2026, 11, 27, 9, 0, 5, 987_000, tzinfo=UTC)),
    (datetime(2026, 11, 27, 9, 0, 5, 987_000, tzinfo=UTC), True, datetime(2026, 11, 27, 9, 0, 5, tzinfo=UTC)),
    (datetime(2026, 11, 27, 10, 0, 5, 250_000, tzinfo=timezone(timedelta(hours=1))), True,
     datetime(2026, 11, 27, 9, 0, 5, tzinfo=UTC)),
    (datetime(2026, 11, 27, 9, 0, 5), False, datetime(2026, 11, 27, 9, 0, 5, tzinfo=UTC)),  # naive: UTC
])
def test_signpost_is_the_run_start_in_utc_never_later(started: datetime, whole_seconds: bool,
                                                      signpost: datetime) -> None:
    got = signpost_of(started, whole_seconds)
    assert got == signpost and got.tzinfo is UTC
    assert got <= (started if started.tzinfo else started.replace(tzinfo=UTC))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("stored", "full_refresh", "notes"), [
    (None, False, ()),  # first run
    ("", False, ()),
    ("not a cursor;abc123", False, ()),  # unreadable: read everything, quietly
    ("CURSOR", True, ()),  # --full-refresh
    ("OTHER", False, ("query changed",)),  # written for another query shape
])
def test_full_read_when_the_cursor_cannot_be_continued(fmt: CursorFormat, stored: str | None,
                                                       full_refresh: bool, notes: tuple[str, ...]) -> None:
    if stored == "CURSOR":
        stored = fmt.format(RUN1, FP)
    elif stored == "OTHER":
        stored = fmt.format(RUN1, "other")
    win = plan(stored, RUN2, 120, FP, fmt, full_refresh=full_refresh, refresh_note="query changed")
    assert not win.incremental and win.since is None and win.start is None
    assert win.notes == notes
    assert fmt.parse(win.cursor) == (RUN2, FP)


# ----------------------------------------------------------------------------- with the state database


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_run_leaves_the_cursor_and_the_next_run_reads_its_window_again(
        engine: sa.Engine, fmt: CursorFormat) -> None:
    first = open_window(ctx(engine, RUN1), "crm", FP, fmt, 0)
    assert not first.incremental and first.keeps_state
    commit(engine, "crm", first, [("1", {"v": 1})])
    assert get_cursor(engine, "crm") == fmt.format(RUN1, FP)

    failed = open_window(ctx(engine, RUN2), "crm", FP, fmt, 30)
    assert failed.start == RUN1 - timedelta(seconds=30)
    # ... the run fails before the flow commits: nothing is written
    assert get_cursor(engine, "crm") == fmt.format(RUN1, FP)

    retry = open_window(ctx(engine, RUN2 + timedelta(minutes=5)), "crm", FP, fmt, 30)
    assert retry.since == RUN1 and retry.start == failed.start  # the failed run's window is read again
    commit(engine, "crm", retry, [("2", {"v": 2})])
    assert get_cursor(engine, "crm") == fmt.format(RUN2 + timedelta(minutes=5), FP)
    assert [p["v"] for p in load_records(engine, "crm")] == [1, 2]  # incremental: merged, not replaced


@pytest.mark.parametrize(("has_engine", "keeps_state", "incremental", "expect_incremental", "expect_keeps"), [
    (True, True, True, True, True),
    (True, True, False, False, True),  # HubSpot with `incremental: false`: full reads, state kept
    (True, False, True, False, False),  # Salesforce with `incremental: false`: no state at all
    (False, True, True, False, False),  # no state database
])
def test_what_the_window_reads_and_keeps(engine: sa.Engine, has_engine: bool, keeps_state: bool,
                                         incremental: bool, expect_incremental: bool, expect_keeps: bool) -> None:
    commit(engine, "crm", open_window(ctx(engine, RUN1), "crm", FP, HUBSPOT_CURSOR, 0), [("1", {})])
    win = open_window(ctx(engine if has_engine else None, RUN2), "crm", FP, HUBSPOT_CURSOR, 0,
                      incremental=incremental, keeps_state=keeps_state)
    assert (win.incremental, win.keeps_state) == (expect_incremental, expect_keeps)
    assert (win.stored is not None) == expect_keeps
    pending = win.pending([], [], win.version(False, "crm"))
    assert (pending is not None) == expect_keeps
    if pending is not None:
        assert pending.replace_all == (not expect_incremental) and pending.cursor == win.cursor


def test_a_cursor_with_no_records_behind_it_is_a_first_run_when_records_are_needed(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        save_state(conn, "crm", SALESFORCE_CURSOR.format(RUN1, FP), [])
    assert open_window(ctx(engine, RUN2), "crm", FP, SALESFORCE_CURSOR, 0).incremental
    win = open_window(ctx(engine, RUN2), "crm", FP, SALESFORCE_CURSOR, 0, needs_records=True)
    assert not win.incremental and win.stored_ids == frozenset()
    commit(engine, "crm", win, [("7", {})])
    again = open_window(ctx(engine, RUN2 + timedelta(hours=1)), "crm", FP, SALESFORCE_CURSOR, 0, needs_records=True)
    assert again.incremental and again.stored_ids == {"7"}


def test_full_refresh_reads_no_cursor_but_keeps_the_stored_version(engine: sa.Engine) -> None:
    commit(engine, "crm", open_window(ctx(engine, RUN1), "crm", FP, HUBSPOT_CURSOR, 0), [("1", {})])
    win = open_window(ctx(engine, RUN2, full_refresh=True), "crm", FP, HUBSPOT_CURSOR, 0)
    assert not win.incremental and win.stored is not None
    assert win.version(True, "crm").version != win.stored.version  # a full read is a new version


# ----------------------------------------------------------------------------- versions, deltas


STORED = SourceVersion("v-stored", {})


@pytest.mark.parametrize(("incremental", "same", "keeps"), [
    (True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_version_kept_only_by_an_incremental_run_that_changed_nothing(incremental: bool, same: bool,
                                                                      keeps: bool) -> None:
    win = Window(signpost=RUN2, cursor="c2", since=RUN1 if incremental else None,
                 start=RUN1 if incremental else None, keeps_state=True, stored=STORED)
    version = win.version(same, "crm", 3, 1, detail={"k": 1})
    assert (version.version == "v-stored") == keeps and version.detail == {"k": 1}
    assert version == win.version(same, "crm", 3, 1, detail={"k": 1})  # the same run, the same token
    assert win.holds("v-stored") and not win.holds("v-other") and not win.holds(None)


def test_delta_names_the_changed_and_gone_ids_of_an_incremental_run_only() -> None:
    inc = Window(signpost=RUN2, cursor="c", since=RUN1, start=RUN1, stored=STORED)
    assert inc.delta(iter(["2", "9"])) == {"delta_base": "v-stored", "delta_ids": frozenset({"2", "9"})}
    assert Window(signpost=RUN2, cursor="c").delta(["2"]) == {"delta_base": None, "delta_ids": None}


def test_reused_moves_only_the_cursor() -> None:
    obs = Observer()
    meter = Meter(obs)
    obs.requests += 2
    ex = Window(signpost=RUN2, cursor="c2", since=RUN1, start=RUN1, keeps_state=True, stored=STORED).reused(
        "crm", "nothing changed", meter)
    assert ex.reused and ex.version == "v-stored" and ex.records.empty and ex.notes == ["nothing changed"]
    assert (ex.pending_state.cursor, list(ex.pending_state.upserts), ex.pending_state.deletes) == ("c2", [], [])
    assert ex.requests == 2 and not ex.pending_state.replace_all


# ----------------------------------------------------------------------------- deletions, merge


@pytest.mark.parametrize(("gone", "changed", "stored", "deleted"), [
    ({"3", "1"}, {}, {"1", "2", "3"}, ["1", "3"]),
    ({"1"}, {"1": {}}, {"1", "2"}, []),  # deleted, then read again in the window: it stays
    ({"9"}, {}, {"1"}, []),  # never stored: nothing to delete
    (set(), {"2": {}}, {"1"}, []),
])
def test_deleted_ids_are_the_stored_ids_gone_and_not_read_again(gone: set[str], changed: dict,
                                                                stored: set[str], deleted: list[str]) -> None:
    assert deleted_ids(gone, changed, stored) == deleted


@pytest.mark.parametrize(("changed", "deletes", "after"), [
    ({"2": "B"}, [], {"1": "a", "2": "B", "3": "c"}),
    ({"4": "d"}, ["1"], {"2": "b", "3": "c", "4": "d"}),
    ({}, ["9"], {"1": "a", "2": "b", "3": "c"}),  # deleting an id never stored is no error
    ({"2": "B"}, ["2"], {"1": "a", "2": "B", "3": "c"}),  # in both: kept with its new record (as save_state)
])
def test_merge_into_records(changed: dict[str, str], deletes: list[str], after: dict[str, str]) -> None:
    store = Records({"1": "a", "2": "b", "3": "c"})
    assert merge(store, changed, deletes) is store and store == after


def test_merge_into_hubspot_deal_table() -> None:
    table = DealTable()
    table.add([("1", {"amount": "1"}), ("2", {"amount": "2"}), ("3", {"amount": "3"})])
    merge(table, {"2": {"amount": "20"}, "4": {"amount": "4"}}, ["3"])
    table.finish()
    assert [table.deal(i) for i in range(len(table))] == [
        {"id": "1", "properties": {"amount": "1"}}, {"id": "2", "properties": {"amount": "20"}},
        {"id": "4", "properties": {"amount": "4"}}]
