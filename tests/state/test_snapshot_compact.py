"""The compact snapshot store: deltas, full dates, out-of-order saves, pushes and old databases."""

from __future__ import annotations

import random
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.snapshot_types import SnapshotRecord
from connectors.state import snapshots as store
from connectors.state.db import make_engine

D0 = date(2026, 6, 1)


def deals(rows: dict[str, tuple]) -> pd.DataFrame:
    """deal_id -> (owner, amount, close ISO or None)."""
    ids = sorted(rows)
    return pd.DataFrame({
        "deal_id": pd.Series(ids, dtype=object),
        "owner": pd.Series([rows[i][0] for i in ids], dtype=object),
        "product": pd.Series(["P"] * len(ids), dtype=object),
        "stage": pd.Series(["Contact"] * len(ids), dtype=object),
        "amount": pd.Series([rows[i][1] for i in ids], dtype=float),
        "close_date": pd.to_datetime(pd.Series([rows[i][2] for i in ids], dtype=object)).astype("datetime64[ns]"),
    })


def save(engine: sa.Engine, as_of: date, frame: pd.DataFrame, report: str = "r") -> None:
    with engine.begin() as conn:
        store.save_snapshot(conn, report, SnapshotRecord(as_of, {"open_deals": float(len(frame))}, frame))


def state(engine: sa.Engine, as_of: date, report: str = "r") -> pd.DataFrame:
    h = store.load_history(engine, report, as_of + timedelta(days=1))
    assert h.previous_as_of == as_of
    return h.previous_deals


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    a = a.sort_values("deal_id").reset_index(drop=True)
    b = b.sort_values("deal_id").reset_index(drop=True)
    return list(a["deal_id"]) == list(b["deal_id"]) and all(
        a[c].astype(object).where(a[c].notna(), None).tolist() == b[c].astype(object).where(b[c].notna(), None).tolist()
        for c in ("owner", "product", "stage", "amount", "close_date"))


def parts(engine: sa.Engine, report: str = "r") -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT as_of, part, kind, rows FROM snapshot_deal_parts WHERE report = :r ORDER BY as_of, part"),
            {"r": report})]


@pytest.fixture
def engine(tmp_path) -> sa.Engine:
    return make_engine(f"sqlite:///{tmp_path / 'state.db'}")


def test_block_codec_roundtrips_every_kind_of_value() -> None:
    frame = deals({"crm:a": ("ann", 100.5, "2026-07-01"), "crm:b": (None, float("nan"), None),
                   "crm:ü ✓": ("zoë", 0.0, "1900-01-01")})
    frame.insert(1, "present", [True, False, True])
    back = store.decode_deals(store.encode_deals(frame))
    assert back["deal_id"].tolist() == ["crm:a", "crm:b", "crm:ü ✓"]
    assert back["present"].tolist() == [True, False, True]
    assert back["owner"].tolist() == ["ann", None, "zoë"]
    assert back["amount"].iloc[0] == 100.5 and np.isnan(back["amount"].iloc[1])
    assert back["close_date"].tolist()[0] == pd.Timestamp("2026-07-01") and pd.isna(back["close_date"].iloc[1])
    empty = store.decode_deals(store.encode_deals(frame.iloc[:0]))
    assert empty.empty and list(empty.columns) == list(frame.columns)


def test_each_date_stores_only_what_changed(engine: sa.Engine) -> None:
    base = {f"crm:{i:04d}": ("ann", 100.0, "2026-07-01") for i in range(1000)}
    save(engine, D0, deals(base))
    for week in range(1, 6):
        for i in range(week * 10, week * 10 + 10):  # 10 amounts change a week
            base[f"crm:{i:04d}"] = ("ann", 100.0 + week, "2026-07-01")
        save(engine, D0 + timedelta(weeks=week), deals(base))
    assert [(p[2], p[3]) for p in parts(engine)] == [("full", 1000)] + [("delta", 10)] * 5
    assert same(state(engine, D0 + timedelta(weeks=5)), deals(base))
    assert state(engine, D0 + timedelta(weeks=1)).set_index("deal_id").loc["crm:0010", "amount"] == 101.0


def test_a_long_chain_of_deltas_ends_with_a_full_date(engine: sa.Engine) -> None:
    base = {f"crm:{i}": ("ann", 1.0, "2026-07-01") for i in range(10)}
    save(engine, D0, deals(base))
    for week in range(1, 8):  # 3 of 10 deals change every week: the 4th delta would make the chain longer
        for i in range(3):
            base[f"crm:{(week * 3 + i) % 10}"] = ("ann", week + 0.5, "2026-07-01")
        save(engine, D0 + timedelta(weeks=week), deals(base))
    kinds = [p[2] for p in parts(engine)]
    assert kinds == ["full", "delta", "delta", "delta", "full", "delta", "delta", "delta"]
    assert same(state(engine, D0 + timedelta(weeks=7)), deals(base))


def test_closed_deals_leave_a_tombstone_and_pushes_are_kept(engine: sa.Engine) -> None:
    save(engine, D0, deals({"crm:a": ("ann", 1.0, "2026-07-01"), "crm:b": ("bob", 2.0, "2026-07-01"),
                            "crm:c": ("bob", 3.0, None)}))
    save(engine, D0 + timedelta(days=7), deals({"crm:a": ("ann", 1.0, "2026-08-01"), "crm:c": ("bob", 3.0, "2026-09-01")}))
    save(engine, D0 + timedelta(days=14), deals({"crm:a": ("ann", 1.0, "2026-09-01"), "crm:b": ("bob", 2.0, "2026-12-01"),
                                                 "crm:c": ("bob", 3.0, "2026-08-01")}))
    h = store.load_history(engine, "r", D0 + timedelta(days=15))
    assert sorted(h.previous_deals["deal_id"]) == ["crm:a", "crm:b", "crm:c"]
    # a: pushed twice; b: closed in between (no consecutive pair); c: a date set, then pulled in
    assert sorted(zip(h.pushes["deal_id"], h.pushes["as_of"], strict=True)) == [
        ("crm:a", D0 + timedelta(days=7)), ("crm:a", D0 + timedelta(days=14))]
    assert state(engine, D0 + timedelta(days=7))["deal_id"].tolist() == ["crm:a", "crm:c"]
    before = store.load_history(engine, "r", D0 + timedelta(days=8))
    assert before.pushes["deal_id"].tolist() == ["crm:a"]  # only pushes up to the previous snapshot


def test_a_date_saved_between_others_rebases_the_next_one(engine: sa.Engine) -> None:
    first = deals({"crm:a": ("ann", 1.0, "2026-07-01")})
    third = deals({"crm:a": ("ann", 3.0, "2026-09-01"), "crm:c": ("cy", 3.0, None)})
    save(engine, D0, first)
    save(engine, D0 + timedelta(days=14), third)
    middle = deals({"crm:a": ("ann", 2.0, "2026-08-01"), "crm:b": ("bob", 2.0, None)})
    save(engine, D0 + timedelta(days=7), middle)
    assert same(state(engine, D0), first) and same(state(engine, D0 + timedelta(days=7)), middle)
    assert same(state(engine, D0 + timedelta(days=14)), third)
    h = store.load_history(engine, "r", D0 + timedelta(days=15))
    assert h.pushes["deal_id"].tolist() == ["crm:a", "crm:a"]  # 07-01 -> 08-01 -> 09-01
    save(engine, D0, third)  # the first date replaced: everything after it still reads back
    assert same(state(engine, D0), third) and same(state(engine, D0 + timedelta(days=7)), middle)
    assert same(state(engine, D0 + timedelta(days=14)), third)


def test_an_earlier_versions_rows_are_read_and_converted_on_the_next_save(engine: sa.Engine) -> None:
    old = {D0: {"crm:a": ("ann", 1.0, "2026-07-01"), "crm:b": ("bob", None, None)},
           D0 + timedelta(days=7): {"crm:a": ("ann", 1.5, "2026-08-01")}}
    with engine.begin() as conn:  # as the version before the compact store wrote them
        for as_of, rows in old.items():
            conn.execute(store.snapshots.insert().values(report="r", as_of=as_of, saved_at=pd.Timestamp.now("UTC")))
            conn.execute(store.snapshot_deals.insert(), [
                {"report": "r", "as_of": as_of, "deal_id": k, "owner": v[0], "product": "P", "stage": "Contact",
                 "amount": v[1], "close_date": None if v[2] is None else date.fromisoformat(v[2])}
                for k, v in rows.items()])
    h = store.load_history(engine, "r", D0 + timedelta(days=8))
    assert same(h.previous_deals, deals(old[D0 + timedelta(days=7)]))
    assert h.pushes["deal_id"].tolist() == ["crm:a"]
    save(engine, D0 + timedelta(days=14), deals({"crm:a": ("ann", 2.0, "2026-08-01")}))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.snapshot_deals)).scalar() == 0
    assert [p[2] for p in parts(engine)] == ["full", "full", "delta"]  # 2 changes for 1 open deal: whole
    for as_of, rows in old.items():
        assert same(state(engine, as_of), deals(rows))
    assert store.load_history(engine, "r", D0 + timedelta(days=15)).pushes["deal_id"].tolist() == ["crm:a"]


IDS = [f"crm:{c}" for c in "abcdefgh"]
OWNERS = ["ann", "bob", None]
CLOSES = [None, "2026-06-15", "2026-07-01", "2026-09-30", "2027-01-01"]
deal_state = st.tuples(st.sampled_from(OWNERS), st.sampled_from([None, 0.0, 10.0, 20.5]), st.sampled_from(CLOSES))
snapshot = st.dictionaries(st.sampled_from(IDS), deal_state, max_size=len(IDS))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(saves=st.lists(st.tuples(st.integers(0, 6), snapshot), min_size=1, max_size=12))
def test_any_order_of_saves_reads_back_the_last_save_of_each_date(saves) -> None:
    engine = make_engine("sqlite://")  # in memory: one connection per thread
    last: dict[date, dict] = {}
    for day, rows in saves:
        as_of = D0 + timedelta(days=7 * day)
        save(engine, as_of, deals(rows))
        last[as_of] = rows
    for as_of, rows in last.items():
        assert same(state(engine, as_of), deals(rows)), as_of
    # pushes = consecutive stored dates where a deal open at both got a later close_date
    days = sorted(last)
    want = sorted((k, b) for a, b in zip(days, days[1:], strict=False) for k in set(last[a]) & set(last[b])
                  if last[a][k][2] and last[b][k][2] and last[b][k][2] > last[a][k][2])
    got = store.load_history(engine, "r", days[-1] + timedelta(days=1)).pushes
    assert sorted(zip(got["deal_id"], got["as_of"], strict=True)) == want


def test_reports_are_kept_apart(engine: sa.Engine) -> None:
    save(engine, D0, deals({"crm:a": ("ann", 1.0, None)}), report="one")
    save(engine, D0, deals({"crm:b": ("bob", 2.0, None)}), report="two")
    assert state(engine, D0, "one")["deal_id"].tolist() == ["crm:a"]
    assert state(engine, D0, "two")["deal_id"].tolist() == ["crm:b"]


def test_random_weekly_year_reads_back(engine: sa.Engine) -> None:
    rng = random.Random(7)
    base = {f"crm:{i}": ("ann", float(i), "2026-07-01") for i in range(300)}
    saved = {}
    for week in range(20):
        for k in rng.sample(sorted(base), 15):
            base[k] = (rng.choice(OWNERS), float(rng.randint(0, 5)), rng.choice(CLOSES))
        for k in rng.sample(sorted(base), 3):
            del base[k]
        base[f"crm:new{week}"] = ("bob", 1.0, None)
        as_of = D0 + timedelta(weeks=week)
        save(engine, as_of, deals(base))
        saved[as_of] = dict(base)
    for as_of in rng.sample(sorted(saved), 5):
        assert same(state(engine, as_of), deals(saved[as_of]))
