"""Salesforce as the real service behaves (issue 19): REQUEST_LIMIT_EXCEEDED is two different limits
(the concurrent long-running one clears by itself; the daily allocation does not), and deleted
records are seen only while they sit in the Recycle Bin. The fake does both (tests/fakes/salesforce.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from config.models import SalesforceSourceConfig
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.extracted import Extracted
from connectors.sources.salesforce.query import parse_cursor, reconciled_at
from connectors.state.db import make_engine
from connectors.state.source_state import get_cursor, load_records, save_state
from tests.fakes.salesforce import RUN_1, SalesforceFake, make_cfg, make_ctx, oid, run, running_fake

DAY = timedelta(days=1)


@pytest.fixture()
def fake(tmp_path: Path):
    with running_fake(tmp_path) as sf:
        yield sf


@pytest.fixture()
def engine(tmp_path: Path):
    return make_engine("sqlite:///" + str(tmp_path / "state.db"))


def commit(engine, out: Extracted) -> None:
    p = out.pending_state
    with engine.begin() as conn:
        save_state(conn, out.source, p.cursor, p.upserts, p.deletes, p.replace_all)


def ids(out: Extracted) -> list[str]:
    return out.records["opportunity_id"].tolist()


def reconcile_queries(fake: SalesforceFake) -> list[str]:
    return [q for kind, q in fake.queries if kind == "query" and q.startswith("SELECT Id FROM Opportunity")]


# ----------------------------------------------------------------------------- REQUEST_LIMIT_EXCEEDED


def test_the_concurrent_request_limit_is_retried_with_backoff(fake: SalesforceFake) -> None:
    clean = run(fake)
    n = fake.data_requests
    fake.faults = {n + 2: "busy", n + 3: "busy"}  # the first query page, twice
    out = run(fake)
    pd.testing.assert_frame_equal(out.records, clean.records)
    assert out.retries == 2 and out.requests == clean.requests + 2


def test_a_concurrent_limit_that_does_not_clear_gives_up_as_retriable(fake: SalesforceFake) -> None:
    fake.faults = {n: "busy" for n in range(2, 12)}
    with pytest.raises(RetriableAPIError, match=r"gave up after 4 attempts.*ConcurrentPerOrgLongTxn Limit exceeded"):
        run(fake)


def test_the_daily_limit_used_up_by_another_integration_is_fatal_and_not_retried(fake: SalesforceFake, engine) -> None:
    commit(engine, run(fake, make_ctx(engine)))
    before = get_cursor(engine, "sfdc"), load_records(engine, "sfdc")
    fake.faults = {fake.data_requests + 3: "exhaust"}
    n = fake.data_requests
    with pytest.raises(FatalAPIError) as err:
        run(fake, make_ctx(engine, RUN_1 + DAY), daily_api_reserve=0)
    msg = str(err.value)
    assert "daily API request allocation is used up" in msg and "TotalRequests Limit exceeded" in msg
    assert "api-usage=15001/15000" in msg and "the next run resumes from the same cursor" in msg
    assert fake.data_requests == n + 3  # the 403 is not retried
    assert (get_cursor(engine, "sfdc"), load_records(engine, "sfdc")) == before


def test_a_run_stops_cleanly_before_going_below_the_reserve_and_the_next_resumes(fake: SalesforceFake, engine) -> None:
    commit(engine, run(fake, make_ctx(engine)))
    before = get_cursor(engine, "sfdc"), load_records(engine, "sfdc")
    fake.update(oid(2), "2025-05-02T10:00:00.000+0000", Amount=9000.0)
    fake.api_max, fake.api_used = 1004, 0  # /limits, then 3 more before only the reserve of 1000 is left
    with pytest.raises(FatalAPIError) as err:
        run(fake, make_ctx(engine, RUN_1 + DAY))
    msg = str(err.value)
    assert "stopped before going below daily_api_reserve (1000)" in msg and "1000 of 1004" in msg
    assert "the next run resumes from the same cursor" in msg
    assert fake.api_used == 4 and fake.api_used <= fake.api_max  # never refused
    assert (get_cursor(engine, "sfdc"), load_records(engine, "sfdc")) == before
    fake.api_max, fake.api_used = 15000, 0  # a day later, with the requests freed (and a bigger allocation)
    fake.queries.clear()
    out = run(fake, make_ctx(engine, RUN_1 + 2 * DAY))
    assert "SystemModstamp >= 2025-05-01T23:59:00Z" in fake.queries[0][1]  # the same window, from the kept cursor
    assert out.records.set_index("opportunity_id").loc[oid(2), "amount"] == 9000.0


def test_an_allowance_at_the_reserve_stops_before_any_query(fake: SalesforceFake) -> None:
    fake.api_max, fake.api_used = 1500, 499  # /limits answers Remaining 1000
    with pytest.raises(FatalAPIError, match=r"daily_api_reserve \(1000\)"):
        run(fake)
    assert fake.queries == [] and fake.api_used == 500


def test_the_reserve_is_configurable_and_never_negative(fake: SalesforceFake) -> None:
    fake.api_max, fake.api_used = 1500, 499
    assert len(run(fake, daily_api_reserve=10).records) == 5
    with pytest.raises(ValidationError, match="daily_api_reserve"):
        make_cfg(fake, daily_api_reserve=-1)


# ----------------------------------------------------------------------------- purged deletions


def test_a_deal_purged_from_the_recycle_bin_leaves_when_ids_are_reconciled(fake: SalesforceFake, engine) -> None:
    first = run(fake, make_ctx(engine))
    assert reconciled_at(first.pending_state.cursor) == datetime(2025, 5, 2, tzinfo=UTC)  # a full read reconciles
    commit(engine, first)
    fake.delete(oid(5), "2025-05-03T08:00:00.000+0000")
    fake.purge(oid(5))  # 15 days in the Recycle Bin: queryAll no longer reports it
    fake.purge(oid(3))
    soon = run(fake, make_ctx(engine, RUN_1 + 3 * DAY))
    assert oid(5) in ids(soon) and not reconcile_queries(fake)  # not due yet (reconcile_days: 7)
    fake.queries.clear()
    later = run(fake, make_ctx(engine, RUN_1 + 8 * DAY))
    assert ids(later) == [oid(1), oid(2), oid(4)]
    assert later.pending_state.deletes == [oid(3), oid(5)]
    assert reconcile_queries(fake) == ["SELECT Id FROM Opportunity ORDER BY Id LIMIT 2000"]
    assert ("ids reconciled: 2 stored opportunities no longer in Salesforce (deleted and purged from the "
            "Recycle Bin) left the state") in later.notes
    assert reconciled_at(later.pending_state.cursor) == datetime(2025, 5, 10, tzinfo=UTC)
    commit(engine, later)
    assert sorted(r["Id"] for r in load_records(engine, "sfdc")) == [oid(1), oid(2), oid(4)]
    fake.queries.clear()
    run(fake, make_ctx(engine, RUN_1 + 9 * DAY))
    assert not reconcile_queries(fake)


def test_ids_are_read_by_keyset_over_id_one_page_a_query(fake: SalesforceFake, engine) -> None:
    fake.page_size = 2000
    for n in range(10, 460):
        fake.add({"Id": oid(n), "Name": f"Deal {n}", "StageName": "Prospecting",
                  "SystemModstamp": "2025-04-01T08:00:00.000+0000", "CreatedDate": "2025-03-01T09:00:00.000+0000"})
    commit(engine, run(fake, make_ctx(engine), page_size=200))
    fake.purge(oid(300))
    fake.queries.clear()
    out = run(fake, make_ctx(engine, RUN_1 + DAY), page_size=200, reconcile_days=0)
    assert out.pending_state.deletes == [oid(300)] and len(out.records) == 454
    assert reconcile_queries(fake) == [
        "SELECT Id FROM Opportunity ORDER BY Id LIMIT 200",
        f"SELECT Id FROM Opportunity WHERE Id > '{oid(204)}' ORDER BY Id LIMIT 200",
        f"SELECT Id FROM Opportunity WHERE Id > '{oid(405)}' ORDER BY Id LIMIT 200",
    ]


def test_runs_further_apart_than_the_recycle_bin_keeps_reconcile_whatever_the_interval(fake: SalesforceFake, engine) -> None:
    commit(engine, run(fake, make_ctx(engine), reconcile_days=30))
    fake.purge(oid(2))
    out = run(fake, make_ctx(engine, RUN_1 + 14 * DAY), reconcile_days=30)
    assert out.pending_state.deletes == [oid(2)]


def test_reconciling_keeps_the_where_and_drops_what_no_longer_matches(fake: SalesforceFake, engine) -> None:
    where = "StageName != 'Closed Lost'"
    commit(engine, run(fake, make_ctx(engine), where=where))
    fake.purge(oid(1))
    out = run(fake, make_ctx(engine, RUN_1 + 8 * DAY), where=where)
    assert out.pending_state.deletes == [oid(1)]
    assert reconcile_queries(fake)[-1] == f"SELECT Id FROM Opportunity WHERE ({where}) ORDER BY Id LIMIT 2000"


def test_a_cursor_from_before_reconciling_reconciles_on_the_next_run(fake: SalesforceFake, engine) -> None:
    first = run(fake, make_ctx(engine))
    old_cursor = first.pending_state.cursor.split(";r=")[0]  # as the previous version wrote it
    with engine.begin() as conn:
        save_state(conn, "sfdc", old_cursor, first.pending_state.upserts, [], True)
    assert parse_cursor(old_cursor) == parse_cursor(first.pending_state.cursor)  # same window, same fingerprint
    fake.purge(oid(4))
    out = run(fake, make_ctx(engine, RUN_1 + DAY))
    assert not out.pending_state.replace_all and out.pending_state.deletes == [oid(4)]


def test_nothing_changed_but_reconciled_still_moves_the_reconcile_time(fake: SalesforceFake, engine) -> None:
    commit(engine, run(fake, make_ctx(engine)))
    out = run(fake, make_ctx(engine, RUN_1 + 8 * DAY))
    assert out.pending_state.deletes == [] and reconcile_queries(fake)
    assert reconciled_at(out.pending_state.cursor) == datetime(2025, 5, 10, tzinfo=UTC)


def test_reconcile_days_is_validated() -> None:
    with pytest.raises(ValidationError, match="reconcile_days"):
        SalesforceSourceConfig.model_validate({"type": "salesforce", "name": "s", "domain": "https://a.my.salesforce.com",
                                               "client_id": "x", "client_secret": "y", "reconcile_days": -1})
