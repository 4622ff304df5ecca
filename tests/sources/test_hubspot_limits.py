"""HubSpot as the real service behaves (issue 19): URLs past ~8 KB answer 414, stage-entry property
names differ between portals, associations embedded in list results stop at 100, stages may lack
`isClosed`. The fake does each of these (tests/fakes/hubspot.py); the source must cope."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pandas as pd
import pytest

from connectors.sources.hubspot.extract import REFRESH_NOTE
from tests.fakes.hubspot import T0, Harness, demo_harness

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)
LIST = "/crm/v3/objects/deals"
BATCH = "/crm/v3/objects/deals/batch/read"
ASSOCIATIONS = "/crm/v4/associations/deals/line_items/batch/read"
BIG = "88112233"


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path) as harness:
        yield harness


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {r["opportunity_id"]: r for r in frame.to_dict("records")}


def url_length(req) -> int:
    return len(req.path) + (1 + len(urlencode(req.query, doseq=True)) if req.query else 0)


def add_big_pipeline(hub, n: int) -> list[str]:
    """A pipeline of `n` stages with HubSpot's nine-digit custom stage ids, and five deals in it
    that entered its first, a middle and its last stage (800..804: seed_demo has 101..105, 201, 202).
    Returns the stage ids."""
    ids = [str(100_000_000 + i) for i in range(n)]
    hub.pipelines.append({"id": BIG, "label": "Enterprise", "displayOrder": 2, "archived": False, "stages": [
        {"id": sid, "label": f"Step {i}", "displayOrder": i,
         "metadata": {"isClosed": "true" if i == n - 1 else "false", "probability": "1.0" if i == n - 1 else "0.5"}}
        for i, sid in enumerate(ids)]})
    for k in range(5):
        hub.add_deal(f"80{k}", T0, pipeline=BIG, dealstage=ids[-1], dealname=f"Big {k}", amount="100",
                     hubspot_owner_id="69864216", **{f"hs_date_entered_{ids[0]}": "2026-01-02T00:00:00.000Z",
                                                     f"hs_date_entered_{ids[n // 2]}": "2026-02-02T00:00:00.000Z",
                                                     f"hs_date_entered_{ids[-1]}": "2026-03-02T00:00:00.000Z"})
    return ids


# ----------------------------------------------------------------------------- 414 URI Too Long


@pytest.mark.parametrize("n_stages", [300, 500])
def test_hundreds_of_stages_never_make_a_url_hubspot_refuses(h: Harness, n_stages: int):
    ids = add_big_pipeline(h.hub, n_stages)
    h.hub.max_page = 2
    ex = h.run(started=RUN1)
    assert all(url_length(r) <= h.hub.url_limit for r in h.server.requests)
    recs = by_id(ex.records)
    assert len(recs) == 12
    big = recs["803"]
    assert (big["stage"], big["status"], big["stage_entered_date"]) == (f"Step {n_stages - 1}", "won",
                                                                        "2026-03-02T00:00:00.000Z")
    hist = ex.history[ex.history["opportunity_id"] == "803"]
    assert hist[["stage", "entered_date"]].to_numpy().tolist() == [
        ["Step 0", "2026-01-02T00:00:00.000Z"], [f"Step {n_stages // 2}", "2026-02-02T00:00:00.000Z"],
        [f"Step {n_stages - 1}", "2026-03-02T00:00:00.000Z"]]
    # every property is read, each exactly once per deal page: part in the list URL, the rest by batch read
    lists = [r for r in h.requests("GET", LIST) if r.q("archived") == "false"]
    reads = h.requests("POST", BATCH)
    listed = {p for r in lists[:1] for p in r.q("properties").split(",")}
    batched = set(reads[0].json()["properties"])
    assert not listed & batched and {f"hs_date_entered_{s}" for s in ids} <= listed | batched
    # requests stay proportional to the deals, whatever the number of stages
    assert len(lists) == math.ceil(12 / 2) and len(reads) == len(lists)
    assert all(len(r.json()["inputs"]) <= 2 for r in reads)
    # pipelines, properties; owners x2; account details (the record links)
    assert ex.requests == len(h.server.requests) == 2 + 2 * len(lists) + 2 + 1


def test_a_deal_archived_between_its_list_page_and_the_batch_read_is_left_out(h: Harness):
    add_big_pipeline(h.hub, 300)

    def archive_during_the_batch_read(req) -> None:
        if req.path == BATCH and "802" in {x["id"] for x in req.json()["inputs"]}:
            h.hub.archive("802", RUN1)

    h.hub.on_request = archive_during_the_batch_read
    ex = h.run(started=RUN1, state=False)
    assert "802" not in set(ex.records["opportunity_id"]) and len(ex.records) == 11


def test_incremental_search_reads_every_property_of_a_big_portal(h: Harness):
    add_big_pipeline(h.hub, 500)
    h.commit(h.run(started=RUN1))
    h.hub.update("803", RUN1 + timedelta(minutes=5), amount="999")
    ex = h.run(started=RUN2)
    assert by_id(ex.records)["803"]["amount"] == "999"
    assert len(ex.history[ex.history["opportunity_id"] == "803"]) == 3


# ----------------------------------------------------------------------------- stage-entry property names


V1_HISTORY = [("101", "Appointment Scheduled", "2026-01-05T09:30:00.000Z"),
              ("101", "Contract Sent", "2026-03-02T11:00:00.000Z"),
              ("102", "Closed Won", "2026-10-15T08:00:00.000Z")]


def test_stage_entry_properties_are_the_names_the_portal_has(h: Harness):
    h.hub.use_stage_property_prefix("hs_v2_date_entered_")
    ex = h.run(started=RUN1)
    assert sorted(map(tuple, ex.history.to_numpy().tolist())) == V1_HISTORY
    assert by_id(ex.records)["101"]["stage_entered_date"] == "2026-03-02T11:00:00.000Z"
    wanted = h.requests("GET", LIST)[0].q("properties").split(",")
    assert "hs_v2_date_entered_contractsent" in wanted
    assert not [p for p in wanted if p.startswith("hs_date_entered_")]
    assert len(h.requests("GET", "/crm/v3/properties/deals")) == 1


def test_a_portal_moving_to_v2_names_is_read_again_in_full(h: Harness):
    h.commit(h.run(started=RUN1))
    h.hub.use_stage_property_prefix("hs_v2_date_entered_")
    ex = h.run(started=RUN2)
    assert ex.pending_state.replace_all and ex.notes[0] == REFRESH_NOTE
    assert sorted(map(tuple, ex.history.to_numpy().tolist())) == V1_HISTORY
    h.commit(ex)
    again = h.run(started=RUN2 + timedelta(hours=1))  # and incremental from then on
    assert again.pending_state is not None and not again.pending_state.replace_all


# ----------------------------------------------------------------------------- line items


def test_a_deal_with_more_line_items_than_one_page_keeps_its_largest(h: Harness):
    for i in range(1, 601):
        h.hub.add_line_item(f"7{i:04d}", f"Item {i}", "10")
    h.hub.line_items["70120"]["amount"] = "5000"  # past the 100 embedded in a list answer
    h.hub.line_items["70550"]["amount"] = "9000"  # past one page (500) of the associations batch read
    h.hub.deals["101"]["line_items"] = [f"7{i:04d}" for i in range(1, 131)]
    h.hub.deals["102"]["line_items"] = [f"7{i:04d}" for i in range(1, 601)]
    ex = h.run(h.cfg(product_from_line_items=True), started=RUN1)
    recs = by_id(ex.records)
    assert (recs["101"]["product"], recs["102"]["product"]) == ("Item 120", "Item 550")
    assoc = h.requests("POST", ASSOCIATIONS)
    assert len(assoc) == 2  # every deal at once, then the rest of deal 102's
    assert assoc[1].json()["inputs"] == [{"id": "102", "after": assoc[1].json()["inputs"][0]["after"]}]
    assert not [r for r in h.server.requests if r.path.startswith("/crm/v4/objects/")]
    assert len(h.requests("POST", "/crm/v3/objects/line_items/batch/read")) == 6  # 600 items, 100 a request


def test_line_item_associations_are_read_1000_deals_at_a_time(h: Harness):
    h.hub.add_line_item("9001", "Licence", "10")
    h.hub.add_deals([(str(5000 + k), "2026-11-20T10:00:00.000Z", {"dealname": f"D{k}"}) for k in range(1100)])
    for k in range(1100):
        h.hub.deals[str(5000 + k)]["line_items"] = ["9001"]
    ex = h.run(h.cfg(product_from_line_items=True), started=RUN1, state=False)
    assert (ex.records["product"] == "Licence").sum() == 1100
    assoc = h.requests("POST", ASSOCIATIONS)
    assert [len(r.json()["inputs"]) for r in assoc] == [1000, 107]


# ----------------------------------------------------------------------------- isClosed


def test_a_stage_without_is_closed_is_counted_open_and_the_run_says_so(h: Harness):
    del h.hub.pipelines[1]["stages"][0]["metadata"]["isClosed"]  # Renewals / Renewal Due
    ex = h.run(started=RUN1)
    assert by_id(ex.records)["105"]["status"] == "open"
    note = "1 HubSpot deal stage(s) without isClosed metadata are counted as open: Renewals / Renewal Due"
    assert note in ex.notes
    only_default = h.run(h.cfg(pipelines=["default"]), started=RUN1, state=False)
    assert note not in only_default.notes  # a pipeline not read is not reported
