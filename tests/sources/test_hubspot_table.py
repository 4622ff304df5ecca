"""HubSpot deals held as columns (DealTable): the frames and pending upserts built from it are the
ones the dict-per-deal path builds (`frames()` over `stored()` payloads), and save_state streams
lazy or pre-encoded upserts to the same stored records."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from config.models import HubSpotSourceConfig
from connectors.sources.hubspot.extract import parse_pipelines
from connectors.sources.hubspot.rows import (
    LINE_ITEM_PRODUCT,
    DealTable,
    Resolver,
    StoredPayloads,
    frames,
    stored,
    table_frames,
)
from connectors.state import source_state
from connectors.state.db import make_engine
from connectors.state.source_state import iter_records, load_records, save_state
from tests.fakes.hubspot import (
    DEFAULT_PIPELINES,
    STAGE_MAP,
    TOKEN,
    Harness,
    demo_harness,
)

OWNERS = {"69864216": ("Ann Lee", "West"), "69864217": ("Bo Chen", None)}
PREFIX = "hs_date_entered_"


def props(stage: str | None, owner: str | None = "69864216", **extra: Any) -> dict[str, Any]:
    p = {"dealname": "Deal", "amount": "100.5", "dealstage": stage, "pipeline": "default",
         "hubspot_owner_id": owner, "createdate": "2026-01-02T03:04:05.678Z", "closedate": None,
         "product_line": "Widgets", f"{PREFIX}appointmentscheduled": "2026-01-02T03:04:05.678Z",
         f"{PREFIX}qualifiedtobuy": None}
    return {**p, **extra}


# (id, properties[, line item product]) in listing order: ids out of order, a non-numeric id, "7" and
# "007" (equal numbers keep their listing order), differing property sets and key orders, None and
# "" values, unknown stage / owner / pipeline, a deal without a stage, renewals (numeric stage ids)
DEALS: list[tuple[str, dict[str, Any], Any]] = [
    ("300", props("closedwon", dealname="Zoë \"q\"", **{f"{PREFIX}closedwon": "2026-03-01T00:00:00Z"}), "Gizmo"),
    ("7", props("qualifiedtobuy", amount="", **{f"{PREFIX}qualifiedtobuy": "2026-02-01T00:00:00Z"}), None),
    ("abc", props("mystery", owner="555"), "Gadget"),
    ("007", dict(reversed(list(props("closedlost", owner="").items()))), ...),
    ("12", {"dealname": "Bare", "pipeline": "75e28846", "dealstage": "1002", f"{PREFIX}1002": "2026-04-01Z",
            "custom_x": "only here"}, "Widget"),
    ("5", props(None, pipeline="gone", product_line=None, **{f"{PREFIX}appointmentscheduled": ""}), None),
    ("41", props("contractsent", owner="69864217", hs_object_id="41"), ...),
]


def config(**kw: Any) -> HubSpotSourceConfig:
    base = {"type": "hubspot", "name": "hubspot_main", "token": TOKEN, "stage_map": STAGE_MAP,
            "product_property": "product_line"}
    return HubSpotSourceConfig(**{**base, **kw})


def raw_deal(deal_id: str, p: dict[str, Any], product: Any) -> dict[str, Any]:
    deal: dict[str, Any] = {"id": deal_id, "properties": dict(p)}
    if product is not ...:
        deal[LINE_ITEM_PRODUCT] = product
    return deal


def resolver(cfg: HubSpotSourceConfig) -> Resolver:
    pipelines, stages = parse_pipelines({"results": DEFAULT_PIPELINES}, cfg.stage_map)
    return Resolver(cfg, pipelines, stages, OWNERS)


def same_frame(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal columns, dtypes and values, None told apart from NaN."""
    assert list(a.columns) == list(b.columns)
    assert [str(t) for t in a.dtypes] == [str(t) for t in b.dtypes]
    pd.testing.assert_frame_equal(a, b)

    def typed(v: Any) -> tuple[str, Any]:
        return type(v).__name__, "NaN" if isinstance(v, float) and math.isnan(v) else v

    for c in a.columns:
        assert [typed(v) for v in a[c].tolist()] == [typed(v) for v in b[c].tolist()], c


CONFIGS = {
    "raw sheet": {"raw_sheet": "HubSpot raw"},
    "no raw sheet": {},
    "line items, raw sheet": {"raw_sheet": "HubSpot raw", "product_from_line_items": True},
    "line items, no product property": {"raw_sheet": "HubSpot raw", "product_from_line_items": True,
                                        "product_property": None},
}


@pytest.mark.parametrize("kw", CONFIGS.values(), ids=CONFIGS.keys())
def test_table_frames_and_payloads_equal_the_dict_path(kw: dict[str, Any]) -> None:
    cfg = config(**kw)
    deals = [raw_deal(*d) for d in DEALS]
    res = resolver(cfg)
    payloads = [stored(d, *res.row(d)) for d in deals]
    records, history, raw = frames(cfg, payloads)

    table = DealTable.of(deals)
    new = resolver(cfg)
    t_records, t_history, t_raw = table_frames(cfg, table, new)
    same_frame(t_records, records)
    same_frame(t_history, history)
    if cfg.raw_sheet:
        same_frame(t_raw, raw)
    else:
        assert t_raw is None
    assert new.notes() == res.notes() and new.unknown_owners == {"555"}

    lazy = StoredPayloads(table, new, range(len(table)))
    by_id = {d["id"]: p for d, p in zip(deals, payloads, strict=True)}
    assert list(records["opportunity_id"]) == ["5", "7", "007", "12", "41", "300", "abc"]
    assert lazy == [(k, by_id[k]) for k in records["opportunity_id"]]  # in id order, built when read
    assert json.dumps(lazy[3][1]) == json.dumps(by_id["12"])  # same key order, so the same stored text
    assert lazy[1:3] == [("7", by_id["7"]), ("007", by_id["007"])] and len(lazy) == 7


def test_a_deal_listed_again_is_replaced_in_place_and_a_removed_one_leaves() -> None:
    table = DealTable()
    table.add([("2", {"dealname": "old", "dealstage": "closedwon"}), ("1", {"dealname": "one"})])
    table.add([("3", {"dealname": "three"}), ("2", {"dealname": "new", "amount": "5"})])
    table.remove("1")
    assert table.live_ids() == ["2", "3"]
    table.finish()
    assert [table.deal(i) for i in range(len(table))] == [
        {"id": "2", "properties": {"dealname": "new", "amount": "5"}},
        {"id": "3", "properties": {"dealname": "three"}},
    ]


def test_repeated_values_share_one_string_and_hs_object_id_shares_the_id() -> None:
    # built at run time, so equal texts start as distinct objects (as json.loads makes them)
    deals = [(str(i), {"dealstage": "".join(["closed", "won"]), "hs_object_id": str(i)}) for i in range(1, 4)]
    table = DealTable()
    table.add(deals)
    table.finish()
    stages = table.columns["dealstage"]
    assert stages[0] is stages[1] is stages[2]
    assert all(table.columns["hs_object_id"][i] is table.ids[i] for i in range(3))


def test_frames_changed_after_the_run_leave_the_pending_payloads_as_read() -> None:
    cfg = config(raw_sheet="HubSpot raw")
    table = DealTable.of(raw_deal(*d) for d in DEALS)
    res = resolver(cfg)
    records, _, raw = table_frames(cfg, table, res)
    before = list(StoredPayloads(table, res, range(len(table))))
    raw.loc[0, "dealname"] = "edited"
    records.loc[0, "name"] = "edited"
    raw["amount"] = "0"
    assert list(StoredPayloads(table, res, range(len(table)))) == before
    assert before[0][1]["_hubspot"]["properties"]["dealname"] == "Deal"


def test_no_deals_give_the_empty_shapes() -> None:
    cfg = config(raw_sheet="HubSpot raw")
    table = DealTable.of([])
    for got, want in zip(table_frames(cfg, table, resolver(cfg)), frames(cfg, []), strict=True):
        same_frame(got, want)


# ----------------------------------------------------------------------------- save_state


@pytest.fixture()
def engine(tmp_path: Path) -> sa.Engine:
    return make_engine("sqlite:///" + str(tmp_path / "state.db"))


def stored_texts(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(source_state.records.c.record_id,
                                                         source_state.records.c.payload)
                                               .order_by(source_state.records.c.record_id))]


PAYLOADS = [(str(i), {"opportunity_id": str(i), "name": f"Zoë {i}", "_history": [["Won", None]], "n": i})
            for i in range(1, 8)]


@pytest.mark.parametrize("encoded", [False, True], ids=["dicts", "pre-encoded"])
@pytest.mark.parametrize("replace_all", [True, False])
def test_save_state_streams_lazy_and_pre_encoded_upserts_last_one_wins(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, encoded: bool, replace_all: bool) -> None:
    monkeypatch.setattr(source_state, "_INSERT_ROWS", 3)  # ids repeat across insert chunks
    with engine.begin() as conn:
        save_state(conn, "hub", "c0", [("1", {"old": 1}), ("9", {"gone": 1}), ("8", {"kept": True})])
    later = {"opportunity_id": "2", "name": "later", "_history": []}
    pairs = [*PAYLOADS[:4], ("2", later), *PAYLOADS[4:], ("1", PAYLOADS[0][1])]

    def upserts():  # one pass only, as a generator
        for k, p in pairs:
            yield k, json.dumps(p) if encoded else p

    with engine.begin() as conn:
        save_state(conn, "hub", "c1", upserts(), deletes=["9"], replace_all=replace_all)
    want = {k: p for k, p in pairs} | ({} if replace_all else {"8": {"kept": True}})
    assert load_records(engine, "hub") == [want[k] for k in sorted(want)]
    if encoded:  # a pre-encoded payload is stored as given
        assert dict(stored_texts(engine))["2"] == json.dumps(later)


def test_iter_records_reads_what_load_records_reads_a_chunk_at_a_time(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        save_state(conn, "hub", "c", PAYLOADS)
    chunks = list(iter_records(engine, "hub", chunk=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [p for c in chunks for _, p in c] == load_records(engine, "hub")
    assert [k for c in chunks for k, _ in c] == ["1", "2", "3", "4", "5", "6", "7"]


# ----------------------------------------------------------------------------- incremental, streamed


RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path) as harness:
        yield harness


@pytest.mark.parametrize("rows", [2, 5_000], ids=["chunks of 2", "one chunk"])
def test_incremental_run_streams_stored_deals_in_chunks(h: Harness, monkeypatch: pytest.MonkeyPatch,
                                                         rows: int) -> None:
    monkeypatch.setattr(source_state, "_INSERT_ROWS", rows)
    cfg = h.cfg(raw_sheet="HubSpot raw", pipelines=["Sales Pipeline"])  # 103 and 105 are renewals
    h.hub.add_deal("108", RUN1 - timedelta(days=1), dealname="Owned", amount="5", hubspot_owner_id="69864216")
    first = h.run(cfg, started=RUN1)
    h.commit(first)
    h.hub.owners[0]["lastName"] = "Lee-Park"  # owner of 101, 104, 108: 108's row moves, the deal did not
    h.hub.update("102", RUN1 + timedelta(minutes=5), amount="9")
    h.hub.add_deal("107", RUN1 + timedelta(minutes=6), dealname="New", amount="1", hubspot_owner_id="69864217")
    h.hub.archive("101", RUN1 + timedelta(minutes=7))
    h.hub.update("104", RUN1 + timedelta(minutes=8), pipeline="75e28846", dealstage="1001")  # leaves the selection
    ex = h.run(cfg, started=RUN2)
    ps = ex.pending_state
    assert [k for k, _ in ps.upserts] == ["102", "107", "108"]  # in id order
    assert ps.deletes == ["101", "104"] and not ps.replace_all
    recs = ex.records.set_index("opportunity_id")
    assert sorted(recs.index) == sorted(set(first.records["opportunity_id"]) - {"101", "104"} | {"107"})
    assert recs.loc["102", "amount"] == "9" and recs.loc["108", "owner"] == "Ann Lee-Park"
    assert list(ex.raw["id"]) == list(ex.records["opportunity_id"])
    h.commit(ex)
    stored = {p["opportunity_id"]: p for p in load_records(h.engine, "hubspot_main")}
    assert stored.keys() == set(recs.index) and stored["107"]["_hubspot"]["properties"]["dealname"] == "New"


def test_a_stored_payload_with_other_key_order_or_spacing_is_not_rewritten(h: Harness) -> None:
    h.commit(h.run(started=RUN1))
    table = source_state.records
    with h.engine.begin() as conn:  # same content, other text: keys sorted, other separators
        text = conn.execute(sa.select(table.c.payload).where(table.c.record_id == "102")).scalar_one()
        conn.execute(sa.update(table).where(table.c.record_id == "102")
                     .values(payload=json.dumps(json.loads(text), indent=1)))
        text = conn.execute(sa.select(table.c.payload).where(table.c.record_id == "104")).scalar_one()
        conn.execute(sa.update(table).where(table.c.record_id == "104")
                     .values(payload=json.dumps(json.loads(text), sort_keys=True)))
        text = conn.execute(sa.select(table.c.payload).where(table.c.record_id == "101")).scalar_one()
        edited = json.loads(text) | {"owner": "Someone Else"}  # a stored row that no longer resolves so
        conn.execute(sa.update(table).where(table.c.record_id == "101").values(payload=json.dumps(edited)))
    ex = h.run(started=RUN2)
    assert ex.notes[0].endswith(": 0 changed, 0 archived deal(s)")
    assert [k for k, _ in ex.pending_state.upserts] == ["101"]
    assert ex.pending_state.upserts[0][1]["owner"] == "Ann Lee"
