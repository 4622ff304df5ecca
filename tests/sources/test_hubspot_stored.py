"""HubSpot's stored deals read back by an incremental run (connectors/sources/hubspot/incremental.py):
only the raw-deal part of each stored payload is decoded, stored rows are screened by a digest of
their text built column by column, the stored deals are read on a worker thread while the search
runs; and whatever path it takes, an incremental run gives the frames and the stored state a full
pull gives on the same data."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from connectors.sources.hubspot import incremental
from connectors.sources.hubspot.incremental import RowTexts, StoppedReading, raw_deals, read_stored
from connectors.sources.hubspot.resolve import HISTORY_KEY, RAW_KEY
from connectors.sources.hubspot.rows import DealTable, stored, table_frames
from connectors.state import source_state
from connectors.state.db import make_engine
from connectors.state.source_state import load_records, payload_text, save_state
from tests.fakes.hubspot import Harness, demo_harness
from tests.sources.test_hubspot_table import CONFIGS, DEALS, config, raw_deal, resolver, same_frame

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)


def payload(deal_id: str = "9", **props: Any) -> dict[str, Any]:
    deal = {"id": deal_id, "properties": {"dealname": "Zoë \"q\" , \"_hubspot\": }", "amount": "1.5", **props}}
    return stored(deal, {"name": "Zoë", "owner": None, "opportunity_id": deal_id}, [["Won", "2026-01-01Z"]])


def reordered(p: dict[str, Any]) -> dict[str, Any]:  # the raw deal first, then the row
    return {RAW_KEY: p[RAW_KEY], **{k: v for k, v in p.items() if k != RAW_KEY}}


def middle(p: dict[str, Any]) -> dict[str, Any]:  # the raw deal between the row and the history
    rest = {k: v for k, v in p.items() if k not in (RAW_KEY, HISTORY_KEY)}
    return {**rest, RAW_KEY: p[RAW_KEY], HISTORY_KEY: p[HISTORY_KEY]}


TEXTS = {  # how a stored payload's text may look: each is decoded to the same raw deal (or None)
    "as save_state writes it": lambda p: payload_text(p),
    "keys sorted": lambda p: json.dumps(p, sort_keys=True),
    "indented": lambda p: json.dumps(p, indent=1),
    "compact separators": lambda p: json.dumps(p, separators=(",", ":")),
    "raw deal first": lambda p: payload_text(reordered(p)),
    "raw deal in the middle": lambda p: payload_text(middle(p)),
    "no raw deal": lambda p: payload_text({k: v for k, v in p.items() if k != RAW_KEY}),
    "not ascii-escaped": lambda p: json.dumps(p, ensure_ascii=False),
}


@pytest.mark.parametrize("shape", TEXTS.values(), ids=TEXTS.keys())
@pytest.mark.parametrize("mixed", [False, True], ids=["alone", "among written ones"])
def test_raw_deals_are_what_decoding_the_whole_payload_gives(shape: Any, mixed: bool) -> None:
    payloads = [payload(str(i), hs_object_id=str(i)) for i in range(4)]
    texts = [shape(p) for p in payloads]
    if mixed:  # the others as save_state writes them, around the odd one
        texts = [payload_text(payloads[0]), texts[1], payload_text(payloads[2]), payload_text(payloads[3])]
    expected = [json.loads(t).get(RAW_KEY) for t in texts]
    assert raw_deals(texts) == expected
    has_raw = shape is not TEXTS["no raw deal"]
    assert [d and d["id"] for d in expected] == [str(i) if has_raw or (mixed and i != 1) else None for i in range(4)]


# a deal whose values are not all str: the generic JSON path (HubSpot sends str, stored states may not)
ODD = ("77", {"dealname": "Odd", "amount": 12.5, "dealstage": "closedwon", "pipeline": "default",
              "hubspot_owner_id": 69864216, "createdate": True, "product_line": "Ünïcode ✓ \"x\" {y}",
              "hs_date_entered_closedwon": 20260301}, ...)


@pytest.mark.parametrize("shared", [False, True], ids=["table columns", "after table_frames shares them"])
@pytest.mark.parametrize("kw", CONFIGS.values(), ids=CONFIGS.keys())
def test_row_texts_are_the_stored_payload_text_before_its_raw_deal(kw: dict[str, Any], shared: bool) -> None:
    cfg = config(**kw)
    deals = [raw_deal(*d) for d in [*DEALS, ODD]]
    table = DealTable.of(deals)
    res = resolver(cfg)
    if shared:
        table_frames(cfg, table, res)  # the raw sheet's str columns now serve the table (NaN for None)
    by_id = {d["id"]: d for d in deals}
    expected = []
    for deal_id in table.ids:
        text = payload_text(stored(by_id[deal_id], *res.row(by_id[deal_id])))
        expected.append(text[:text.index(', "_hubspot": ')])
    texts = RowTexts(table, res)
    assert texts.between(0, len(table)) == expected
    assert texts.between(2, 5) == expected[2:5] and texts.between(3, 3) == []


def test_reading_the_stored_deals_stops_when_asked(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_state, "_INSERT_ROWS", 2)
    engine = make_engine("sqlite:///" + str(tmp_path / "state.db"))
    payloads = [payload(str(i)) for i in range(5)]
    with engine.begin() as conn:
        save_state(conn, "hub", "c", [(str(i), p) for i, p in enumerate(payloads)])
    table, rows = read_stored(engine, "hub")
    assert sorted(table.ids) == ["0", "1", "2", "3", "4"] and list(rows.kind) == [1] * 5
    stop = threading.Event()
    stop.set()
    with pytest.raises(StoppedReading):
        read_stored(engine, "hub", stop)


def readers() -> list[str]:
    """The stored-deal reading threads alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith("stored-")]


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path) as harness:
        yield harness


def reencode(engine: sa.Engine) -> None:
    """Every stored payload rewritten with the same content in another text (the raw deal first, other
    spacing; as another encoder could have): decoded whole, compared whole."""
    table = source_state.records
    with engine.begin() as conn:
        for i, (rid, text) in enumerate(conn.execute(sa.select(table.c.record_id, table.c.payload)).all()):
            p = json.loads(text)
            conn.execute(sa.update(table).where(table.c.record_id == rid)
                         .values(payload=json.dumps(reordered(p)) if i % 2 else json.dumps(p, indent=1)))


CASES = {  # (commit the rows' version, rename an owner, stored texts re-encoded, the state in memory)
    "as the flow commits": (True, False, False, False),
    "no version stored": (False, False, False, False),
    "an owner renamed": (True, True, False, False),
    "owner renamed, no version": (False, True, False, False),
    "other stored encoding": (True, False, True, False),
    "in-memory state (read on the caller's thread)": (True, True, False, True),
}


@pytest.mark.parametrize(("version", "rename", "reencoded", "memory"), CASES.values(), ids=CASES.keys())
def test_an_incremental_run_gives_the_full_pulls_frames_and_state(h: Harness, version: bool, rename: bool,
                                                                   reencoded: bool, memory: bool) -> None:
    if memory:
        h.engine = make_engine("sqlite://")  # one connection per thread: never read on the worker
    cfg = h.cfg(raw_sheet="HubSpot raw", pipelines=["Sales Pipeline"])
    h.hub.add_deal("108", RUN1 - timedelta(days=1), dealname="Owned", amount="5", hubspot_owner_id="69864216")
    h.commit(h.run(cfg, started=RUN1), version=version)
    if reencoded:
        reencode(h.engine)
    h.hub.update("102", RUN1 + timedelta(minutes=5), amount="9")
    h.hub.add_deal("107", RUN1 + timedelta(minutes=6), dealname="New", amount="1", hubspot_owner_id="69864217")
    h.hub.archive("202", RUN1 + timedelta(minutes=7))
    h.hub.update("104", RUN1 + timedelta(minutes=8), pipeline="75e28846", dealstage="1001")  # leaves the selection
    if rename:
        h.hub.owners[0]["lastName"] = "Lee-Park"  # owner of 101, 104, 108: 101's and 108's rows move
    inc = h.run(cfg, started=RUN2)
    assert not readers()  # the worker is gone
    full = h.run(cfg, started=RUN2, full_refresh=True)
    assert inc.notes[0].endswith(": 3 changed, 2 archived deal(s)") and full.pending_state.replace_all
    for a, b in ((inc.records, full.records), (inc.history, full.history), (inc.raw, full.raw)):
        same_frame(a, b)
    assert list(inc.records["opportunity_id"]) == ["101", "102", "107", "108", "201"]
    recs = inc.records.set_index("opportunity_id")
    assert recs.loc["102", "amount"] == "9" and recs.loc["108", "owner"] == ("Ann Lee-Park" if rename else "Ann Lee")
    ps = inc.pending_state
    # the changed deals, and the stored ones whose row moved (a re-encoded stored text is compared whole: equal)
    assert [k for k, _ in ps.upserts] == (["101", "102", "107", "108"] if rename else ["102", "107"])
    assert sorted(ps.deletes) == ["104", "202"] and not ps.replace_all
    h.commit(inc)
    after_inc = {p["opportunity_id"]: p for p in load_records(h.engine, "hubspot_main")}
    assert after_inc == {k: p for k, p in full.pending_state.upserts}  # the state a full pull stores


def test_a_failed_search_stops_the_stored_read(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.commit(h.run(started=RUN1))
    started = threading.Event()
    real = incremental.read_stored

    def slow(engine: sa.Engine, source: str, stop: threading.Event | None = None) -> Any:
        started.set()
        assert stop is not None and stop.wait(10)  # runs until the failed run stops it
        return real(engine, source, stop)

    monkeypatch.setattr(incremental, "read_stored", slow)

    def fail(*a: Any, **k: Any) -> None:
        assert started.wait(10)
        raise RuntimeError("search failed")

    monkeypatch.setattr(incremental, "search_changed", fail)
    with pytest.raises(RuntimeError, match="search failed"):
        h.run(started=RUN2)
    assert not readers()


def test_records_frame_of_the_stored_state_matches(h: Harness) -> None:
    """The stale fallback reads the same payloads the incremental run's raw-part decode reads."""
    h.commit(h.run(started=RUN1))
    table, _ = read_stored(h.engine, "hubspot_main")
    table.finish()
    raw = {p["opportunity_id"]: p[RAW_KEY] for p in load_records(h.engine, "hubspot_main")}
    assert [table.deal(i) for i in range(len(table))] == [raw[k] for k in table.ids]
    assert pd.Index(table.ids).is_unique
