"""The snapshot store: save / replace / load through SQLAlchemy Core, portable DDL."""

from __future__ import annotations

import math
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from config.snapshot_types import SnapshotRecord, empty_snapshot_deals
from connectors.state import snapshots as store
from connectors.state.db import make_engine


def record(as_of: str, open_deals: float, ids: list[str], win_rate: float | None = 0.5) -> SnapshotRecord:
    deals = pd.DataFrame({
        "deal_id": pd.Series(ids, dtype=object),
        "owner": pd.Series(["ann"] * (len(ids) - 1) + [None] if ids else [], dtype=object),
        "product": pd.Series(["P"] * len(ids), dtype=object),
        "stage": pd.Series(["Contact"] * len(ids), dtype=object),
        "amount": pd.Series([100.0] * (len(ids) - 1) + [float("nan")] if ids else [], dtype=float),
        "close_date": pd.Series([pd.Timestamp("2026-07-01")] * (len(ids) - 1) + [pd.NaT] if ids else [],
                                dtype="datetime64[ns]"),
    })
    return SnapshotRecord(date.fromisoformat(as_of), {"open_deals": open_deals, "win_rate": win_rate}, deals)


@pytest.fixture
def engine(tmp_path) -> sa.Engine:
    return make_engine(f"sqlite:///{tmp_path / 'state' / 'state.db'}")


def test_roundtrip_and_previous_is_strictly_before(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        store.save_snapshot(conn, "r", record("2026-06-01", 2, ["crm:a", "crm:b"]))
        store.save_snapshot(conn, "r", record("2026-06-08", 3, ["crm:a", "crm:b", "crm:c"], win_rate=None))
        store.save_snapshot(conn, "other", record("2026-06-05", 9, ["x:1"]))
    h = store.load_history(engine, "r", date(2026, 6, 8))
    assert h.previous_as_of == date(2026, 6, 1)
    assert h.previous_deals["deal_id"].tolist() == ["crm:a", "crm:b"]
    assert h.previous_deals["owner"].tolist() == ["ann", None]
    assert h.previous_deals["amount"].iloc[0] == 100.0 and math.isnan(h.previous_deals["amount"].iloc[1])
    assert h.previous_deals["close_date"].iloc[0] == pd.Timestamp("2026-07-01")
    assert pd.isna(h.previous_deals["close_date"].iloc[1])
    assert sorted(set(h.metrics["as_of"])) == [date(2026, 6, 1), date(2026, 6, 8)]
    wr = h.metrics[(h.metrics["as_of"] == date(2026, 6, 8)) & (h.metrics["metric"] == "win_rate")]["value"]
    assert math.isnan(wr.iloc[0])  # an empty metric stays empty
    assert h.previous_metrics() == {"open_deals": 2.0, "win_rate": 0.5}
    # on a later date, the latest snapshot is the previous one
    assert store.load_history(engine, "r", date(2026, 6, 9)).previous_as_of == date(2026, 6, 8)
    # before any snapshot: nothing
    empty = store.load_history(engine, "r", date(2026, 6, 1))
    assert empty.previous_as_of is None and empty.previous_deals.empty
    assert list(empty.metrics["as_of"]) == [date(2026, 6, 1)] * 2


def test_rerun_replaces_the_snapshot(engine: sa.Engine) -> None:
    for n in (1, 2, 3):
        with engine.begin() as conn:
            store.save_snapshot(conn, "r", record("2026-06-01", n, [f"crm:{i}" for i in range(n)]))
    assert store.stored_dates(engine, "r") == [date(2026, 6, 1)]
    h = store.load_history(engine, "r", date(2026, 6, 2))
    assert h.previous_deals["deal_id"].tolist() == ["crm:0", "crm:1", "crm:2"]
    assert h.previous_metrics()["open_deals"] == 3.0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.snapshot_metrics)).scalar_one() == 2


def test_failed_transaction_keeps_the_old_snapshot(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        store.save_snapshot(conn, "r", record("2026-06-01", 1, ["crm:a"]))
    with pytest.raises(RuntimeError), engine.begin() as conn:
        store.save_snapshot(conn, "r", record("2026-06-01", 5, ["crm:b"]))
        raise RuntimeError("the run failed after saving")
    assert store.load_history(engine, "r", date(2026, 6, 2)).previous_metrics()["open_deals"] == 1.0


def test_empty_deals_snapshot(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        store.save_snapshot(conn, "r", SnapshotRecord(date(2026, 6, 1), {"open_deals": 0.0}, empty_snapshot_deals()))
    h = store.load_history(engine, "r", date(2026, 6, 2))
    assert h.previous_as_of == date(2026, 6, 1) and h.previous_deals.empty
    assert list(h.previous_deals.columns) == ["deal_id", "owner", "product", "stage", "amount", "close_date"]


@pytest.mark.parametrize("table", [store.snapshots, store.snapshot_metrics, store.snapshot_deals,
                                   store.snapshot_deal_parts])
def test_tables_compile_for_postgres(table: sa.Table) -> None:
    ddl = str(sa.schema.CreateTable(table).compile(dialect=postgresql.dialect()))
    assert f"CREATE TABLE {table.name}" in ddl
    assert "PRIMARY KEY (report, as_of" in ddl


def _deal_rows(engine: sa.Engine) -> list[tuple]:
    """(deal_id, SQLite rowid of its block) of report r's deals: a rewritten block gets a new rowid."""
    with engine.connect() as conn:
        blocks = conn.exec_driver_sql(
            "SELECT data, rowid FROM snapshot_deal_parts WHERE report = 'r' ORDER BY as_of, part").all()
    return [(i, rowid) for data, rowid in blocks for i in store.decode_deals(data)["deal_id"]]


def test_a_rerun_with_the_same_deals_keeps_them_and_rewrites_the_metrics(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        store.save_snapshot(conn, "r", record("2026-06-01", 2, ["crm:a", "crm:b"]))
        store.save_snapshot(conn, "other", record("2026-06-01", 1, ["x:1"]))  # rows after them: a rewrite moves rowids
    before = _deal_rows(engine)
    same_deals = record("2026-06-01", 2, ["crm:a", "crm:b"])
    same_deals.metrics["open_deals"] = 7.0  # metrics are always written
    with engine.begin() as conn:
        store.save_snapshot(conn, "r", same_deals)
    assert _deal_rows(engine) == before  # not deleted and inserted again
    assert store.load_history(engine, "r", date(2026, 6, 2)).previous_metrics()["open_deals"] == 7.0
    changed = record("2026-06-01", 2, ["crm:a", "crm:c"])
    with engine.begin() as conn:
        store.save_snapshot(conn, "r", changed)
    assert [r[0] for r in _deal_rows(engine)] == ["crm:a", "crm:c"]
    with engine.begin() as conn:  # snapshot rows removed by hand: the same deals are written again
        for table in (store.snapshots, store.snapshot_deal_parts):
            conn.execute(sa.delete(table))
        store.save_snapshot(conn, "r", changed)
    assert [r[0] for r in _deal_rows(engine)] == ["crm:a", "crm:c"]


def test_deals_digest_follows_values_and_order() -> None:
    a = record("2026-06-01", 2, ["crm:a", "crm:b"]).deals
    assert store.deals_digest(a) == store.deals_digest(a.copy())
    assert store.deals_digest(a) != store.deals_digest(a.iloc[::-1].reset_index(drop=True))
    b = a.copy()
    b.loc[0, "amount"] = b.loc[0, "amount"] + 1
    assert store.deals_digest(a) != store.deals_digest(b)
