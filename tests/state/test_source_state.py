"""The per-source state store: cursors and current records round-trip, upsert, delete, replace."""

from __future__ import annotations

import gc
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.state.db import make_engine
from connectors.state.source_state import get_cursor, json_text, load_records, save_state


@pytest.fixture()
def engine(tmp_path: Path) -> sa.Engine:
    return make_engine("sqlite:///" + str(tmp_path / "state.db"))


def rec(rid: str, **extra: object) -> dict:
    return {"id": rid, "name": f"Deal {rid}", **extra}


def save(engine: sa.Engine, source: str, upserts: list[tuple[str, dict]], *, cursor: str | None = "c",
         deletes: list[str] | tuple[str, ...] = (), replace_all: bool = False) -> None:
    with engine.begin() as conn:
        save_state(conn, source, cursor, upserts, deletes, replace_all)


def test_payloads_round_trip_in_record_id_order(engine: sa.Engine) -> None:
    odd = {"id": "9", "name": "Zoë \"quoted\" \\ ,]} [{", "amount": 1250.5, "n": 3, "none": None,
           "history": [["Qualification", "2026-01-02T00:00:00Z"], ["Won", None]],
           "raw": {"id": "9", "properties": {"dealstage": "closedwon", "amount": "1250.50"}},
           "when": datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC), "day": date(2026, 3, 4), "flag": True, "empty": ""}
    save(engine, "hub", [("9", odd), ("10", rec("10")), ("1", rec("1", emoji="📈"))], cursor="2026-01-01;fp")
    loaded = load_records(engine, "hub")
    # ordered by record_id as text; values not JSON-native are stored as their str()
    assert [r["id"] for r in loaded] == ["1", "10", "9"]
    assert loaded[0] == {"id": "1", "name": "Deal 1", "emoji": "📈"}
    assert loaded[2] == {**odd, "when": "2026-03-04 05:06:07+00:00", "day": "2026-03-04"}
    assert get_cursor(engine, "hub") == "2026-01-01;fp"


def test_an_unknown_source_has_no_records_and_no_cursor(engine: sa.Engine) -> None:
    save(engine, "hub", [("1", rec("1"))])
    assert load_records(engine, "other") == []
    assert get_cursor(engine, "other") is None


def test_upserts_replace_and_add_and_leave_the_rest(engine: sa.Engine) -> None:
    save(engine, "hub", [(str(i), rec(str(i))) for i in range(1, 6)], cursor="c1")
    save(engine, "sf", [("1", rec("1", owner="sf"))], cursor="s1")
    save(engine, "hub", [("2", rec("2", amount=99)), ("7", rec("7"))], cursor="c2")
    loaded = {r["id"]: r for r in load_records(engine, "hub")}
    assert sorted(loaded) == ["1", "2", "3", "4", "5", "7"]
    assert loaded["2"] == {"id": "2", "name": "Deal 2", "amount": 99}
    assert loaded["3"] == rec("3")
    assert load_records(engine, "sf") == [rec("1", owner="sf")]
    assert (get_cursor(engine, "hub"), get_cursor(engine, "sf")) == ("c2", "s1")


def test_a_none_cursor_keeps_the_stored_one(engine: sa.Engine) -> None:
    save(engine, "hub", [("1", rec("1"))], cursor="c1")
    save(engine, "hub", [("2", rec("2"))], cursor=None)
    assert get_cursor(engine, "hub") == "c1"
    assert [r["id"] for r in load_records(engine, "hub")] == ["1", "2"]


def test_the_last_upsert_of_an_id_wins(engine: sa.Engine) -> None:
    save(engine, "hub", [("1", rec("1", v=1)), ("1", rec("1", v=2))])
    assert load_records(engine, "hub") == [rec("1", v=2)]


@pytest.mark.parametrize("n", [3, 499, 500, 501, 1_201])
def test_deletes_remove_only_their_ids_of_their_source(engine: sa.Engine, n: int) -> None:
    ids = [f"{i:05d}" for i in range(n + 2)]
    save(engine, "hub", [(i, rec(i)) for i in ids])
    save(engine, "sf", [(i, rec(i)) for i in ids[:2]])
    save(engine, "hub", [], deletes=[*ids[:n], "unknown"], cursor="c2")
    assert [r["id"] for r in load_records(engine, "hub")] == ids[n:]
    assert [r["id"] for r in load_records(engine, "sf")] == ids[:2]
    assert get_cursor(engine, "hub") == "c2"


def test_an_id_both_deleted_and_upserted_is_kept_with_the_new_payload(engine: sa.Engine) -> None:
    save(engine, "hub", [("1", rec("1")), ("2", rec("2"))])
    save(engine, "hub", [("1", rec("1", v="new"))], deletes=["1", "2"])
    assert load_records(engine, "hub") == [rec("1", v="new")]


def test_replace_all_drops_what_the_upserts_do_not_name(engine: sa.Engine) -> None:
    save(engine, "hub", [(str(i), rec(str(i))) for i in range(1, 1_100)], cursor="c1")
    save(engine, "sf", [("5", rec("5"))])
    save(engine, "hub", [("3", rec("3", v=3)), ("2000", rec("2000"))], replace_all=True, cursor="c2")
    assert load_records(engine, "hub") == [rec("2000"), rec("3", v=3)]
    assert load_records(engine, "sf") == [rec("5")]
    save(engine, "hub", [], replace_all=True, cursor="c3")
    assert load_records(engine, "hub") == []
    assert get_cursor(engine, "hub") == "c3"


@pytest.mark.parametrize("n", [0, 1, 999, 2_500])
def test_many_records_round_trip(engine: sa.Engine, n: int) -> None:
    upserts = [(str(i), {"id": str(i), "amount": i * 1.5, "tags": [i, None, "x"]}) for i in range(n)]
    save(engine, "hub", upserts, replace_all=True)
    assert load_records(engine, "hub") == [p for _, p in sorted(upserts)]


def test_nothing_is_saved_when_the_callers_transaction_fails(engine: sa.Engine) -> None:
    save(engine, "hub", [("1", rec("1"))], cursor="c1")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        save_state(conn, "hub", "c2", [("2", rec("2"))], ["1"], replace_all=True)
        raise RuntimeError("a destination failed")
    assert load_records(engine, "hub") == [rec("1")]
    assert get_cursor(engine, "hub") == "c1"


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_the_garbage_collector_as_it_was(engine: sa.Engine, enabled: bool) -> None:
    save(engine, "hub", [("1", rec("1"))])
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        assert load_records(engine, "hub") == [rec("1")]
        with engine.begin() as conn:
            save_state(conn, "hub", None, [("2", rec("2"))])
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("value", [
    "plain", "Zoë \"quoted\" \\ ,]} [{ 📈", "", None, True, False, 0, -12, 1250.5, 1e-7, float("nan"),
    float("inf"), datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC), date(2026, 3, 4), ["Won", None], {"a": [1, "b"]},
], ids=repr)
def test_json_text_is_the_text_save_state_stores_for_a_value(engine: sa.Engine, value: object) -> None:
    save(engine, "hub", [("1", {"k": value, "z": 1})])
    with engine.connect() as conn:
        text = conn.execute(sa.text("SELECT payload FROM source_records")).scalar_one()
    assert text == '{"k": ' + json_text(value) + ', "z": 1}'
