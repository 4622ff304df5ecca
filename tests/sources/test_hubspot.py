"""HubSpot source against the fake HubSpot over HTTPS: mapping, paging, pipelines, owners, products."""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import trustme
from pydantic import ValidationError

from config.loader import load_config
from config.models import DEFAULT_STAGES, HubSpotSourceConfig
from connectors.errors import FatalAPIError
from connectors.sources.hubspot.extract import parse_pipelines, stage_text
from tests.fakes.hubspot import (
    DEFAULT_PIPELINES,
    TOKEN,
    demo_harness,
)
from transforms.canonical import canonicalize, canonicalize_history

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "hubspot.yaml"


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path) as harness:
        yield harness


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {r["opportunity_id"]: r for r in frame.to_dict("records")}


def test_full_run_maps_every_deal(h):
    ex = h.run(h.cfg(product_property="product_line"), started=RUN1)
    recs = by_id(ex.records)
    assert sorted(recs) == ["101", "102", "103", "104", "105", "201", "202"]
    acme = recs["101"]
    assert acme["name"] == "Acme renewal"
    assert acme["amount"] == "12500"  # strings stay strings: canonicalize parses them once
    assert acme["stage"] == "Contract Sent" and acme["status"] == "open" and acme["_pipeline"] == "Sales Pipeline"
    assert (acme["owner"], acme["team"]) == ("Ann Lee", "West")
    assert acme["deal_type"] == "existingbusiness"
    assert acme["close_date"] == "2026-06-30T00:00:00Z"
    assert acme["stage_entered_date"] == "2026-03-02T11:00:00.000Z"
    assert acme["last_activity_date"] == "2026-11-18T16:05:00.000Z"
    assert acme["next_step_date"] == "2026-12-02T09:00:00.000Z"
    assert acme["currency"] == "USD" and acme["product"] == "Widgets"
    assert (recs["102"]["status"], recs["104"]["status"]) == ("won", "lost")
    assert recs["103"]["owner"] == "Old Timer"  # archived owner, looked up in the archived list
    assert (recs["103"]["stage"], recs["103"]["_pipeline"]) == ("Closed Won", "Renewals")
    # the two plain deals: no close date, no owner
    assert recs["201"]["name"] == "Wayne pilot" and recs["201"]["amount"] == "640"
    assert recs["201"]["stage"] == "Qualified To Buy"
    assert pd.isna(recs["201"]["close_date"]) and pd.isna(recs["201"]["owner"])
    assert list(ex.records["_row"]) == list(range(1, 8))
    hist = sorted(map(tuple, ex.history.to_numpy().tolist()))
    assert hist == [("101", "Appointment Scheduled", "2026-01-05T09:30:00.000Z"),
                    ("101", "Contract Sent", "2026-03-02T11:00:00.000Z"),
                    ("102", "Closed Won", "2026-10-15T08:00:00.000Z")]
    assert ex.raw is None  # no raw_sheet configured
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in h.server.requests)
    assert ex.requests == len(h.server.requests) == 6  # pipelines, properties, 1 deals page, owners, archived owners,
    # account details (the record links)
    assert ("page", {"source": "hubspot_main", "records": 7, "pages": 1}) in h.events


def test_canonicalize_loads_good_deals_and_rejects_unmapped_stage_naming_pipeline(h):
    cfg = h.cfg(product_property="product_line")
    ex = h.run(cfg, started=RUN1)
    res = canonicalize(ex.records, source=cfg.name, stages=list(DEFAULT_STAGES), stage_map=cfg.stage_map, tz=UTC)
    loaded = by_id(res.loaded)
    assert res.rows_read == 7 and len(res.loaded) == 6
    assert res.rejected[["row", "reason"]].to_dict("records") == [{
        "row": 5,
        "reason": "stage 'Renewal Due' in pipeline 'Renewals' is not a configured stage (map it in the "
                  "source's stage_map or add it to pipeline.stages)",
    }]
    assert loaded["101"]["amount"] == 12500.0 and loaded["102"]["amount"] == 8000.5
    assert loaded["101"]["stage"] == "Closing" and loaded["102"]["stage"] == "Won"
    assert loaded["101"]["deal_type"] == "existing" and loaded["102"]["deal_type"] == "new"
    assert loaded["101"]["close_date"] == pd.Timestamp("2026-06-30")
    assert loaded["101"]["stage_entered_date"] == pd.Timestamp("2026-03-02")
    assert loaded["201"]["created_date"] == pd.Timestamp("2023-03-14")
    hist = canonicalize_history(ex.history, source=cfg.name, tz=UTC, stages=list(DEFAULT_STAGES),
                                stage_map=cfg.stage_map)
    assert hist[["opportunity_id", "stage"]].to_numpy().tolist() == [
        ["101", "Lead generation"], ["101", "Closing"], ["102", "Won"]]


@pytest.mark.parametrize("page", [1, 2, 3])
def test_tiny_pages_follow_paging_after_until_absent(h, page):
    h.hub.max_page = page
    clean = h.run(started=RUN1, state=False)
    lists = h.requests("GET", "/crm/v3/objects/deals")
    assert len(lists) == math.ceil(7 / page)
    afters = [r.q("after") for r in lists]
    assert afters[0] is None and len(set(afters[1:])) == len(afters) - 1
    assert sorted(clean.records["opportunity_id"]) == ["101", "102", "103", "104", "105", "201", "202"]
    pages = [d for k, d in h.events if k == "page"]
    assert [p["pages"] for p in pages] == list(range(1, len(lists) + 1))
    assert pages[-1]["records"] == 7


@pytest.mark.parametrize("selection", [["Renewals"], ["75e28846"], [" renewals "]])
def test_pipelines_filter_by_id_or_label(h, selection):
    ex = h.run(h.cfg(pipelines=selection), started=RUN1)
    assert sorted(ex.records["opportunity_id"]) == ["103", "105"]
    assert set(ex.records["_pipeline"]) == {"Renewals"}
    wanted = h.requests("GET", "/crm/v3/objects/deals")[0].q("properties").split(",")
    assert "hs_date_entered_1001" in wanted and "hs_date_entered_contractsent" not in wanted


def test_unknown_pipeline_is_a_clear_error(h):
    with pytest.raises(FatalAPIError) as err:
        h.run(h.cfg(pipelines=["Enterprise"]), started=RUN1)
    assert "pipelines: 'Enterprise' is neither the id nor the label" in str(err.value)
    assert "default (Sales Pipeline), 75e28846 (Renewals)" in str(err.value)


def test_qualified_stage_keys_tell_repeated_labels_apart():
    body = {"results": DEFAULT_PIPELINES}
    smap = {"Closed Won": "Won", "Renewals / Closed Won": "Won", "contractsent": "Closing"}
    _, stages = parse_pipelines(body, smap)
    assert stages["closedwon"].text == "Closed Won"
    assert stages["1002"].text == "Renewals / Closed Won"
    assert stages["contractsent"].text == "contractsent"  # mapped by id
    assert stages["qualifiedtobuy"].text == "Qualified To Buy"  # unmapped: the label
    assert (stages["1002"].probability, stages["1002"].status) == (1.0, "won")
    assert stage_text("Renewals", "1001", "Renewal Due", {}) == "Renewal Due"


def test_product_from_line_items_uses_the_largest_item(h):
    h.hub.add_line_item("9001", "Support plan", "1200")
    h.hub.add_line_item("9002", "Platform licence", "9000")
    h.hub.add_line_item("9003", "Training", "300")
    h.hub.deals["101"]["line_items"] = ["9001", "9002"]
    h.hub.deals["102"]["line_items"] = ["9003"]
    ex = h.run(h.cfg(product_from_line_items=True, raw_sheet="HubSpot raw"), started=RUN1)
    recs = by_id(ex.records)
    assert recs["101"]["product"] == "Platform licence"
    assert recs["102"]["product"] == "Training"
    assert pd.isna(recs["104"]["product"])
    assert [r.q("associations") for r in h.requests("GET", "/crm/v3/objects/deals")] == [None]
    assoc = h.requests("POST", "/crm/v4/associations/deals/line_items/batch/read")
    assert len(assoc) == 1 and sorted(i["id"] for i in assoc[0].json()["inputs"]) == sorted(by_id(ex.records))
    reads = h.requests("POST", "/crm/v3/objects/line_items/batch/read")
    assert len(reads) == 1 and sorted(i["id"] for i in reads[0].json()["inputs"]) == ["9001", "9002", "9003"]
    raw = ex.raw.set_index("id")
    assert raw.loc["101", "line_item_product"] == "Platform licence"


def test_raw_sheet_gets_the_properties_as_is(h):
    ex = h.run(h.cfg(raw_sheet="HubSpot raw"), started=RUN1)
    raw = ex.raw
    assert list(raw["id"]) == list(ex.records["opportunity_id"])
    assert {"dealname", "amount", "dealstage", "pipeline", "hubspot_owner_id", "hs_date_entered_contractsent"} <= set(raw)
    acme = raw.set_index("id").loc["101"]
    assert (acme["dealstage"], acme["amount"], acme["pipeline"]) == ("contractsent", "12500", "default")


def test_fields_override_adds_and_drops_properties(h):
    h.hub.deals["101"]["properties"]["hs_analytics_source"] = "ORGANIC_SEARCH"
    ex = h.run(h.cfg(fields={"lead_source": "hs_analytics_source", "currency": None}), started=RUN1)
    wanted = h.requests("GET", "/crm/v3/objects/deals")[0].q("properties").split(",")
    assert "hs_analytics_source" in wanted and "deal_currency_code" not in wanted
    assert by_id(ex.records)["101"]["lead_source"] == "ORGANIC_SEARCH"
    assert "currency" not in ex.records


def test_fields_cannot_override_what_the_connector_fills():
    with pytest.raises(ValidationError) as err:
        HubSpotSourceConfig(type="hubspot", name="x", token="t", fields={"owner": "hs_owner"})
    assert "fields: owner cannot be set here" in str(err.value)


def test_bad_token_fails_fast_without_leaking_it(h, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "pat-na1-00000000-dead-beef-0000-000000000000"
    with pytest.raises(FatalAPIError) as err:
        h.run(h.cfg(token=secret), started=RUN1)
    msg = str(err.value)
    assert "HTTP 401" in msg and "Authentication credentials not found" in msg
    assert msg.endswith("(check the source's `token`: a HubSpot private-app access token, e.g. ${HUBSPOT_TOKEN})")
    assert secret not in msg and secret not in caplog.text
    assert secret not in repr(h.cfg(token=secret))
    assert len(h.server.requests) == 1  # a 401 is not retried


def test_a_missing_scope_names_the_scopes(h):
    h.hub.forbidden = {"/crm/v3/owners"}
    with pytest.raises(FatalAPIError) as err:
        h.run(started=RUN1, state=False)
    assert re.match(r"HubSpot refused GET https://127.0.0.1:\d+/crm/v3/owners with HTTP 403: This app hasn't been "
                    "granted all required scopes", str(err.value))
    assert "crm.objects.owners.read" in str(err.value)


def test_example_config_loads(tmp_path):
    loaded = load_config(EXAMPLE, env={"HUBSPOT_TOKEN": TOKEN})
    src = next(s for s in loaded.config.sources if s.type == "hubspot")
    assert src.token == TOKEN and TOKEN in loaded.secrets
    assert src.stage_map["Contract Sent"] in {s.name for s in loaded.config.pipeline.stages}


def test_ca_bundle_wins_over_requests_ca_bundle(h, tmp_path, monkeypatch):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other))
    assert len(h.run(started=RUN1, state=False).records) == 7  # cfg.ca_bundle = the fake's CA
    with pytest.raises(FatalAPIError, match=r"^HubSpot: the TLS certificate of 127.0.0.1 is not trusted .*set `ca_bundle:`"):
        h.run(h.cfg(ca_bundle=None), started=RUN1, state=False)


def test_an_empty_account_gives_empty_frames_with_their_columns(h):
    h.hub.deals.clear()
    ex = h.run(h.cfg(raw_sheet="HubSpot raw"), started=RUN1)
    assert ex.records.empty and {"opportunity_id", "stage", "amount", "_row"} <= set(ex.records)
    assert list(ex.history.columns) == ["opportunity_id", "stage", "entered_date"] and ex.history.empty
    assert ex.pending_state.replace_all and ex.pending_state.upserts == []
    res = canonicalize(ex.records, source="hubspot_main", stages=list(DEFAULT_STAGES), stage_map={}, tz=UTC)
    assert (res.rows_read, len(res.loaded), len(res.rejected)) == (0, 0, 0)
