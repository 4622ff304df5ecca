"""HubSpot incremental sync: search from the stored cursor to the run's signpost, merged into the
stored state; archived deals leave it; the 10,000-result search cap is sliced by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from config.models import DEFAULT_STAGES
from connectors.sources.hubspot.extract import from_state
from connectors.state.source_state import get_cursor, load_records
from tests.fakes.hubspot import Harness, demo_harness, iso, to_ms
from transforms.canonical import canonicalize

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)
RUN3 = RUN2 + timedelta(hours=1)
SEARCH = "/crm/v3/objects/deals/search"
LIST = "/crm/v3/objects/deals"
SEVEN = ["101", "102", "103", "104", "105", "201", "202"]


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path) as harness:
        yield harness


def ids(ex) -> list[str]:
    return sorted(ex.records["opportunity_id"])


def lists(h: Harness, archived: str) -> int:
    return sum(1 for r in h.requests("GET", LIST) if r.q("archived") == archived)


def test_second_run_pages_only_through_changed_deals(h):
    first = h.run(started=RUN1)
    assert first.pending_state.replace_all and len(first.pending_state.upserts) == 7
    h.commit(first)
    assert get_cursor(h.engine, "hubspot_main").startswith("2026-11-27T08:00:00.000Z;")

    h.hub.update("101", RUN1 + timedelta(minutes=10), amount="13000", dealstage="closedwon")
    h.hub.add_deal("106", RUN1 + timedelta(minutes=20), dealname="Stark upsell", amount="2500",
                   hubspot_owner_id="69864217", dealtype="existingbusiness")
    h.hub.archive("104", RUN1 + timedelta(minutes=30))
    h.hub.update("102", RUN2 + timedelta(minutes=5), amount="1")  # after the signpost: next run
    h.server.requests.clear()

    second = h.run(started=RUN2)
    assert len(h.requests("POST", SEARCH)) == 1  # one page holds both changed deals (101, 106)
    assert lists(h, "false") == 0 and lists(h, "true") == 1  # no full listing; archived ids once
    assert ids(second) == sorted(["101", "102", "103", "105", "106", "201", "202"])
    recs = second.records.set_index("opportunity_id")
    assert (recs.loc["101", "amount"], recs.loc["101", "stage"], recs.loc["101", "status"]) == ("13000", "Closed Won", "won")
    assert (recs.loc["106", "owner"], recs.loc["106", "deal_type"]) == ("Bo Chen", "existingbusiness")
    assert recs.loc["102", "amount"] == "8000.50"  # changed after the signpost: not yet
    assert list(second.records["_row"]) == list(range(1, 8))
    ps = second.pending_state
    assert sorted(k for k, _ in ps.upserts) == ["101", "106"] and ps.deletes == ["104"] and not ps.replace_all
    assert ps.cursor.startswith("2026-11-27T09:00:00.000Z;")
    body = h.requests("POST", SEARCH)[0].json()
    assert body["filterGroups"][0]["filters"] == [
        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(to_ms(RUN1))},
        {"propertyName": "hs_lastmodifieddate", "operator": "LT", "value": str(to_ms(RUN2))},
    ]
    assert body["sorts"] == [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}]
    h.commit(second)
    stored = {p["opportunity_id"]: p for p in load_records(h.engine, "hubspot_main")}
    assert "104" not in stored and stored["101"]["_hubspot"]["properties"]["amount"] == "13000"
    assert stored["101"]["amount"] == "13000" and stored["101"]["stage"] == "Closed Won"

    third = h.run(started=RUN3)
    assert third.records.set_index("opportunity_id").loc["102", "amount"] == "1"
    assert [k for k, _ in third.pending_state.upserts] == ["102"]


def test_overlap_rereads_before_the_cursor(h):
    h.commit(h.run(started=RUN1))
    h.run(h.cfg(search_overlap_seconds=120), started=RUN2)
    gte = h.requests("POST", SEARCH)[0].json()["filterGroups"][0]["filters"][0]
    assert gte["value"] == str(to_ms(RUN1 - timedelta(seconds=120)))


def test_full_refresh_rebuilds_the_state(h):
    h.commit(h.run(started=RUN1))
    h.hub.update("103", RUN1 + timedelta(minutes=1), dealname="Initech renewal 2027")
    h.server.requests.clear()
    ex = h.run(started=RUN2, full_refresh=True)
    assert lists(h, "false") == 1 and not h.requests("POST", SEARCH)
    assert ex.pending_state.replace_all and len(ex.pending_state.upserts) == 7
    assert ex.records.set_index("opportunity_id").loc["103", "name"] == "Initech renewal 2027"
    assert ex.notes[0] == "full refresh: 7 deal(s)"


def test_reading_more_properties_than_stored_forces_a_full_refresh(h):
    h.commit(h.run(started=RUN1))
    h.server.requests.clear()
    ex = h.run(h.cfg(product_property="product_line"), started=RUN2)
    assert lists(h, "false") == 1 and ex.pending_state.replace_all
    assert ex.notes[0] == "the deal properties read changed since the last run: full refresh"
    assert ex.records.set_index("opportunity_id").loc["101", "product"] == "Widgets"


def test_a_deal_moved_out_of_the_selected_pipelines_leaves_the_state(h):
    cfg = h.cfg(pipelines=["Sales Pipeline"])
    h.commit(h.run(cfg, started=RUN1))
    assert "101" in {p["opportunity_id"] for p in load_records(h.engine, "hubspot_main")}
    h.hub.update("101", RUN1 + timedelta(minutes=1), pipeline="75e28846", dealstage="1001")
    ex = h.run(cfg, started=RUN2)
    assert "101" not in ids(ex) and ex.pending_state.deletes == ["101"]
    h.commit(ex)
    assert "101" not in {p["opportunity_id"] for p in load_records(h.engine, "hubspot_main")}


def test_line_item_products_of_changed_deals_only(h):
    cfg = h.cfg(product_from_line_items=True)
    h.hub.add_line_item("9001", "Platform licence", "9000")
    h.hub.deals["101"]["line_items"] = ["9001"]
    h.commit(h.run(cfg, started=RUN1))
    h.hub.add_line_item("9002", "Services", "500")
    h.hub.add_deal("106", RUN1 + timedelta(minutes=1), line_items=["9002"], dealname="Wayne")
    h.server.requests.clear()
    ex = h.run(cfg, started=RUN2)
    recs = ex.records.set_index("opportunity_id")
    assert recs.loc["106", "product"] == "Services" and recs.loc["101", "product"] == "Platform licence"
    assoc = [r for r in h.server.requests if r.path.startswith("/crm/v4/")]
    assert [(r.path, r.json()["inputs"]) for r in assoc] == [
        ("/crm/v4/associations/deals/line_items/batch/read", [{"id": "106"}])]


def test_without_a_state_store_every_run_lists_everything(h):
    h.run(started=RUN1, state=False)
    ex = h.run(started=RUN2, state=False)
    assert ex.pending_state is None and ids(ex) == sorted(SEVEN)
    assert lists(h, "false") == 2 and not h.requests("POST", SEARCH)


def test_search_slices_by_time_and_never_pages_into_the_10000_cap(h):
    h.commit(h.run(started=RUN1))
    n = 10_050
    for i in range(n):  # two deals per millisecond: each next slice re-reads the boundary's twin
        h.hub.add_deal(str(20_000 + i), RUN1 + timedelta(milliseconds=1 + i // 2), dealname=f"Bulk {i}")
    h.server.requests.clear()
    ex = h.run(started=RUN2)
    searches = [r.json() for r in h.requests("POST", SEARCH)]
    assert not any(b.get("after") for b in searches)  # every page is a fresh query: no deep paging
    lows = [int(b["filterGroups"][0]["filters"][0]["value"]) for b in searches]
    assert lows == sorted(set(lows)) and lows[0] == to_ms(RUN1)
    assert lows[1] == to_ms(RUN1) + 100  # 200 results = 100 ms; the next slice starts at the last
    assert len(searches) == 51  # 198 new deals per page (2 re-read), 10,050 deals
    assert len(ex.records) == 7 + n and ex.records["opportunity_id"].is_unique
    assert len(ex.pending_state.upserts) == n
    assert iso(RUN2) in ex.pending_state.cursor


def test_a_deal_modified_while_paging_does_not_hide_later_deals(h):
    """Offset paging would skip a deal when an earlier one leaves the window mid-run."""
    h.commit(h.run(started=RUN1))
    changed = ["101", "102", "103", "105", "201", "202"]
    for i, deal_id in enumerate(changed):
        h.hub.update(deal_id, RUN1 + timedelta(minutes=i + 1))
    h.server.requests.clear()

    def touch_first(req) -> None:  # before the 2nd search page: 101 changes again, after the signpost
        if req.path.endswith("/search") and len(h.requests("POST", SEARCH)) == 2:
            h.hub.update("101", RUN2 + timedelta(seconds=1), amount="99")

    h.hub.on_request = touch_first
    ex = h.run(h.cfg(search_page_size=2), started=RUN2)
    assert sorted(k for k, _ in ex.pending_state.upserts) == sorted(changed)
    assert ex.records.set_index("opportunity_id").loc["101", "amount"] == "12500"  # the new one: next run


def test_a_full_page_within_one_millisecond_is_read_by_offset(h):
    h.commit(h.run(started=RUN1))
    same = RUN1 + timedelta(minutes=5)
    for i in range(5):
        h.hub.add_deal(str(300 + i), same, dealname=f"Import {i}")
    h.hub.add_deal("399", same + timedelta(milliseconds=1), dealname="Later")
    h.server.requests.clear()
    ex = h.run(h.cfg(search_page_size=2), started=RUN2)
    bodies = [r.json() for r in h.requests("POST", SEARCH)]
    ops = [(b["filterGroups"][0]["filters"][0]["operator"], b.get("after")) for b in bodies]
    # from RUN1: 2 at `same`; from `same`: 2 again, no progress -> that millisecond by offset; then on
    assert ops == [("GTE", None), ("GTE", None), ("EQ", None), ("EQ", "2"), ("EQ", "4"), ("GTE", None)]
    assert sorted(k for k, _ in ex.pending_state.upserts) == ["300", "301", "302", "303", "304", "399"]

def test_a_renamed_owner_rewrites_only_the_affected_stored_rows(h):
    h.commit(h.run(started=RUN1))
    h.hub.owners[0]["lastName"] = "Lee-Park"  # owner 69864216: deals 101, 104, 105; no deal changed
    ex = h.run(started=RUN2)
    assert ex.notes[0].endswith(": 0 changed, 0 archived deal(s)")
    assert sorted(k for k, _ in ex.pending_state.upserts) == ["101", "104", "105"]
    assert {p["owner"] for _, p in ex.pending_state.upserts} == {"Ann Lee-Park"}


@pytest.mark.parametrize(("rename", "expected"), [
    (False, ["101", "106"]),  # owners resolve as stored: only the changed deals are upserted
    (True, ["101", "104", "105", "106"]),  # a renamed owner: its stored deals' rows move too
])
def test_a_run_upserts_the_changed_deals_and_those_whose_row_moved(h, rename, expected):
    h.commit(h.run(started=RUN1))
    h.hub.update("101", RUN1 + timedelta(minutes=10), amount="13000")
    h.hub.add_deal("106", RUN1 + timedelta(minutes=20), dealname="Stark upsell", amount="2500",
                   hubspot_owner_id="69864217")
    if rename:
        h.hub.owners[0]["lastName"] = "Lee-Park"  # owner 69864216: deals 101, 104, 105
    ex = h.run(started=RUN2)
    assert sorted(k for k, _ in ex.pending_state.upserts) == expected
    payloads = dict(ex.pending_state.upserts)
    assert payloads["101"]["amount"] == "13000" and payloads["106"]["owner"] == "Bo Chen"
    assert {payloads[k]["owner"] for k in expected if k != "106"} == {"Ann Lee-Park" if rename else "Ann Lee"}


def test_stored_state_rebuilds_the_frames_without_hubspot(h):
    cfg = h.cfg(raw_sheet="HubSpot raw")
    ex = h.run(cfg, started=RUN1)
    h.commit(ex)
    payloads = load_records(h.engine, "hubspot_main")
    stale = from_state(cfg, payloads)
    assert stale.stale and stale.notes == ["source 'hubspot_main' failed; data from an earlier run"]
    # the record links need the account details (a request): rows rebuilt from stored state have none
    assert ex.records["record_url"].str.startswith("https://app.hubspot.com/contacts/2519445/record/0-3/").all()
    live = ex.records.drop(columns="record_url")
    pd.testing.assert_frame_equal(stale.records, live)
    pd.testing.assert_frame_equal(stale.history, ex.history)
    pd.testing.assert_frame_equal(stale.raw, ex.raw)
    # the flow's generic fallback (payloads as rows) canonicalizes the same deals
    generic = pd.DataFrame.from_records(payloads)
    generic["_row"] = range(1, len(generic) + 1)
    a = canonicalize(generic, source=cfg.name, stages=list(DEFAULT_STAGES), stage_map=cfg.stage_map, tz=UTC)
    b = canonicalize(live, source=cfg.name, stages=list(DEFAULT_STAGES), stage_map=cfg.stage_map, tz=UTC)
    pd.testing.assert_frame_equal(a.loaded, b.loaded)
    assert list(a.rejected["reason"]) == list(b.rejected["reason"])
