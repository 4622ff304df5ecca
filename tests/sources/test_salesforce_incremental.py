"""Salesforce incremental sync on SystemModstamp: state committed the way the flow does it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from config.models import DEFAULT_STAGES
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.extracted import Extracted
from connectors.state.db import make_engine
from connectors.state.source_state import get_cursor, load_records, save_state
from tests.fakes.salesforce import STAGE_MAP, SalesforceFake, make_ctx, oid, run, running_fake
from transforms.canonical import canonicalize

RUN_2 = datetime(2025, 5, 3, tzinfo=UTC)
RUN_3 = datetime(2025, 5, 4, tzinfo=UTC)


@pytest.fixture()
def fake(tmp_path: Path):
    with running_fake(tmp_path) as sf:
        yield sf


@pytest.fixture()
def engine(tmp_path: Path):
    return make_engine("sqlite:///" + str(tmp_path / "state.db"))


def commit(engine, out: Extracted) -> None:
    """What the flow does once the whole run succeeded."""
    p = out.pending_state
    with engine.begin() as conn:
        save_state(conn, out.source, p.cursor, p.upserts, p.deletes, p.replace_all)


def ids(out: Extracted) -> list[str]:
    return out.records["opportunity_id"].tolist()


def first_run(fake: SalesforceFake, engine, **over: object) -> Extracted:
    out = run(fake, make_ctx(engine), **over)
    commit(engine, out)
    fake.served.clear()
    fake.queries.clear()
    return out


def test_second_run_reads_only_changes_and_drops_deleted(fake: SalesforceFake, engine) -> None:
    out1 = first_run(fake, engine)
    p1 = out1.pending_state
    assert p1.replace_all and p1.cursor.startswith("2025-05-02T00:00:00Z;q=") and len(p1.upserts) == 5

    fake.update(oid(2), "2025-05-02T10:00:00.000+0000", StageName="Needs Analysis", Amount=9000.0)
    fake.add_history(oid(2), "Prospecting", "2025-03-02T09:00:00.000+0000")
    fake.add_history(oid(2), "Needs Analysis", "2025-05-02T10:00:00.000+0000")
    fake.delete(oid(4), "2025-05-02T11:00:00.000+0000")
    fake.update(oid(3), "2025-05-03T00:00:00.000+0000", Amount=4500.0)  # exactly at run 2's signpost

    out2 = run(fake, make_ctx(engine, RUN_2))
    assert fake.rows_served("Opportunity") == 1 and fake.rows_served("Opportunity", "queryAll") == 1
    window = "SystemModstamp >= 2025-05-01T23:59:00Z AND SystemModstamp < 2025-05-03T00:00:00Z"
    assert [q for _, q in fake.queries if "FROM Opportunity " in q] == [
        fake.queries[0][1], f"SELECT Id FROM Opportunity WHERE IsDeleted = true AND {window}"]
    assert fake.queries[0][1].endswith(f"FROM Opportunity WHERE {window}")
    assert ids(out2) == [oid(1), oid(2), oid(3), oid(5)]
    rec = out2.records.set_index("opportunity_id")
    assert (rec.loc[oid(2), "stage"], rec.loc[oid(2), "amount"]) == ("Needs Analysis", 9000.0)
    assert rec.loc[oid(3), "amount"] == 4000.0  # stamped at the signpost: next run
    assert out2.history.groupby("opportunity_id").size().to_dict() == {oid(1): 3, oid(2): 2, oid(3): 1}
    p2 = out2.pending_state
    assert (p2.replace_all, [k for k, _ in p2.upserts], p2.deletes) == (False, [oid(2)], [oid(4)])
    assert p2.cursor.startswith("2025-05-03T00:00:00Z;q=")

    result = canonicalize(out2.records, source="sfdc", stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP, tz=UTC)
    assert result.rejected.empty
    assert result.loaded.set_index("opportunity_id")["stage"].to_dict() == {
        oid(1): "Proposal", oid(2): "Contact", oid(3): "Won", oid(5): "Contact"}

    commit(engine, out2)
    assert sorted(r["Id"] for r in load_records(engine, "sfdc")) == ids(out2)
    out3 = run(fake, make_ctx(engine, RUN_3))
    assert out3.records.set_index("opportunity_id").loc[oid(3), "amount"] == 4500.0
    full = run(fake, make_ctx(engine, RUN_3, full_refresh=True))
    pd.testing.assert_frame_equal(out3.records, full.records)
    pd.testing.assert_frame_equal(out3.history, full.history)


@pytest.mark.parametrize("failure", ["limit", "5xx", "drop_then_limit", "not_committed"])
def test_a_failed_run_leaves_the_cursor_unmoved(fake: SalesforceFake, engine, failure: str) -> None:
    first_run(fake, engine)
    cursor_1, stored_1 = get_cursor(engine, "sfdc"), load_records(engine, "sfdc")
    fake.update(oid(2), "2025-05-02T10:00:00.000+0000", Amount=9000.0)
    n = fake.data_requests
    if failure == "limit":  # /limits and the changed page, then daily_api_reserve (1000) stops the run
        fake.api_max = fake.api_used + 1002
    elif failure == "5xx":
        fake.faults = {n + k: "503" for k in range(2, 12)}
    elif failure == "drop_then_limit":
        fake.faults = {n + 2: "drop"}
        fake.api_max = fake.api_used + 1003
    if failure == "not_committed":
        out = run(fake, make_ctx(engine, RUN_2))  # extract succeeds, a later step fails: no commit
        assert out.records.set_index("opportunity_id").loc[oid(2), "amount"] == 9000.0
    else:
        with pytest.raises((FatalAPIError, RetriableAPIError)):
            run(fake, make_ctx(engine, RUN_2))
    assert get_cursor(engine, "sfdc") == cursor_1 and load_records(engine, "sfdc") == stored_1
    fake.faults, fake.api_max = {}, 15000
    fake.queries.clear()
    out = run(fake, make_ctx(engine, RUN_3))
    assert "SystemModstamp >= 2025-05-01T23:59:00Z AND SystemModstamp < 2025-05-04T00:00:00Z" in fake.queries[0][1]
    assert out.records.set_index("opportunity_id").loc[oid(2), "amount"] == 9000.0


def test_full_refresh_rebuilds_the_state(fake: SalesforceFake, engine) -> None:
    first_run(fake, engine)
    del fake.opportunities[oid(5)]  # purged from the recycle bin: invisible to an incremental read
    assert oid(5) in ids(run(fake, make_ctx(engine, RUN_2)))
    out = run(fake, make_ctx(engine, RUN_2, full_refresh=True))
    assert ids(out) == [oid(n) for n in range(1, 5)]
    assert out.pending_state.replace_all and "SystemModstamp >=" not in fake.queries[-3][1]
    commit(engine, out)
    assert sorted(r["Id"] for r in load_records(engine, "sfdc")) == [oid(n) for n in range(1, 5)]


def test_where_narrows_and_changed_rows_leaving_it_drop_out(fake: SalesforceFake, engine) -> None:
    out1 = first_run(fake, engine, where="StageName != 'Closed Lost'")
    assert ids(out1) == [oid(1), oid(2), oid(3), oid(5)]
    fake.update(oid(2), "2025-05-02T10:00:00.000+0000", StageName="Closed Lost", IsClosed=True)
    out2 = run(fake, make_ctx(engine, RUN_2), where="StageName != 'Closed Lost'")
    assert ids(out2) == [oid(1), oid(3), oid(5)] and out2.pending_state.deletes == [oid(2)]
    assert fake.queries[0][1].endswith("AND (StageName != 'Closed Lost')")
    assert fake.queries[-1] == ("queryAll", "SELECT Id FROM Opportunity WHERE SystemModstamp >= "
                                "2025-05-01T23:59:00Z AND SystemModstamp < 2025-05-03T00:00:00Z")


def test_a_changed_query_rebuilds_with_a_note(fake: SalesforceFake, engine) -> None:
    first_run(fake, engine)
    out = run(fake, make_ctx(engine, RUN_2), product_field="Name")
    assert out.pending_state.replace_all
    assert out.notes == ["the query changed (fields, where or product_field): state rebuilt from a full read"]
    assert "SystemModstamp >=" not in fake.queries[0][1]


@pytest.mark.parametrize("mode", ["no_engine", "incremental_off"])
def test_without_state_every_run_is_full(fake: SalesforceFake, engine, mode: str) -> None:
    over = {"incremental": False} if mode == "incremental_off" else {}
    ctx_engine = engine if mode == "incremental_off" else None
    for started in (RUN_2, RUN_3):
        out = run(fake, make_ctx(ctx_engine, started), raw_sheet=None, **over)
        assert out.pending_state is None and len(out.records) == 5 and out.raw is None
    assert not any("SystemModstamp >=" in q for _, q in fake.queries)
    assert get_cursor(engine, "sfdc") is None
