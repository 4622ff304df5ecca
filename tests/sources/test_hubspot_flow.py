"""The example HubSpot config through the flow (plain functions, no Prefect) against the fake."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import openpyxl
import pytest
import yaml

from config.loader import load_config
from connectors.state.db import make_engine
from connectors.state.source_state import get_cursor
from flows.pipeline import run_pipeline
from tests.fakes.hubspot import TOKEN, demo_server
from tests.fakes.server import FakeServer

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "hubspot.yaml"
AS_OF = date(2026, 11, 27)


@pytest.fixture
def fake(tmp_path: Path):
    with demo_server(tmp_path) as (hub, srv):
        yield hub, srv


def write_config(srv: FakeServer, tmp_path: Path) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["sources"][0].update(base_url=srv.url, ca_bundle=srv.ca_path)
    cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    path = tmp_path / "hubspot.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_flow(path: Path):
    return run_pipeline(path, AS_OF, loaded=load_config(path, env={"HUBSPOT_TOKEN": TOKEN}))


def test_example_config_runs_and_the_second_run_is_incremental(fake, tmp_path: Path) -> None:
    hub, srv = fake
    path = write_config(srv, tmp_path)
    first = run_flow(path)
    report = first.sources[0]
    assert (report.name, report.rows_read, report.rows_loaded, report.rows_rejected) == ("hubspot_main", 7, 7, 0)
    book = openpyxl.load_workbook(first.outputs[0], read_only=True)
    assert "HubSpot raw" in book.sheetnames
    assert book["HubSpot raw"].max_row == 8  # header + 7 deals

    changed = datetime.now(UTC) - timedelta(seconds=2)  # after run 1's signpost, before run 2's
    hub.update("101", changed, amount="20000")
    hub.archive("104", changed)
    srv.requests.clear()
    second = run_flow(path)
    assert (second.sources[0].rows_read, second.sources[0].rows_loaded) == (6, 6)
    assert [r.path for r in srv.requests if r.path == "/crm/v3/objects/deals/search"] == [
        "/crm/v3/objects/deals/search"]
    assert all(r.q("archived") == "true" for r in srv.requests if r.path == "/crm/v3/objects/deals")
    sheet = openpyxl.load_workbook(second.outputs[0], read_only=True)["Opportunities"]
    rows = list(sheet.iter_rows(values_only=True))
    amounts = {r[0]: r[rows[0].index("amount")] for r in rows[1:]}
    assert amounts["101"] == 20000.0 and "104" not in amounts
    engine = make_engine("sqlite:///" + str(tmp_path / ".state" / "pipeline-sync.db"))
    assert get_cursor(engine, "hubspot_main") is not None


def about_rows(output: str) -> list[tuple[str, str]]:
    sheet = openpyxl.load_workbook(output, read_only=True)["About"]
    return [(k, v) for k, v in sheet.iter_rows(min_row=2, values_only=True)]


def test_a_stage_without_is_closed_is_named_in_about_under_its_source(fake, tmp_path: Path) -> None:
    # GET /crm/v3/pipelines/deals gives each stage a free-form `metadata` object; for deals only
    # `probability` is required (https://developers.hubspot.com/docs/api/crm/pipelines, "Create a
    # pipeline": "metadata: ... For deals, probability is required"; the reference shows `"metadata": {}`
    # at https://developers.hubspot.com/docs/api-reference/latest/crm/pipelines/get-pipelines), so a
    # stage may come without isClosed.
    hub, srv = fake
    renewals = next(p for p in hub.pipelines if p["label"] == "Renewals")
    del renewals["stages"][0]["metadata"]["isClosed"]
    path = write_config(srv, tmp_path)
    note = "1 HubSpot deal stage(s) without isClosed metadata are counted as open: Renewals / Renewal Due"
    seen = []
    for _ in range(2):  # a full refresh, then an incremental run (into the same file: read each at once)
        rows = about_rows(run_flow(path).outputs[0])
        keys = [k for k, _ in rows]
        assert keys.index("source hubspot_main: note") > keys.index("source hubspot_main: rows read")
        assert [v for k, v in rows if k == "note" and "isClosed" in str(v)] == []  # under the source only
        seen.append([v for k, v in rows if k == "source hubspot_main: note"])
    assert seen[0] == ["full refresh: 7 deal(s)", note]
    assert len(seen[1]) == 2 and seen[1][0].startswith("incremental since ") and seen[1][1] == note


DETAILS = "/account-info/v3/details"
ACTED_ON = ["101", "105", "202", "201"]  # the fake's open deals with a flag, most severe first


def _links(book: Path) -> dict[str, tuple[object, str | None]]:
    """Actions: opportunity id -> (the record_url cell's value, its hyperlink target)."""
    rows = list(openpyxl.load_workbook(book)["Actions"].iter_rows())
    head = [c.value for c in rows[0]]
    at, link = head.index("opportunity_id"), head.index("record_url")
    return {r[at].value: (r[link].value, r[link].hyperlink.target if r[link].hyperlink else None) for r in rows[1:]}


@pytest.mark.parametrize("domain", ["app.hubspot.com", "app-eu1.hubspot.com"])  # uiDomain: EU portals differ
def test_actions_link_each_deal_to_its_hubspot_record(fake, tmp_path: Path, domain: str) -> None:
    hub, srv = fake
    hub.ui_domain, hub.portal_id = domain, 146013
    path = write_config(srv, tmp_path)
    links = _links(run_flow(path).outputs[0])
    assert list(links) == ACTED_ON
    for deal, (value, target) in links.items():
        expected = f"https://{domain}/contacts/146013/record/0-3/{deal}"
        assert value == expected and target == expected
    assert len([r for r in srv.requests if r.path == DETAILS]) == 1  # one request a run

    changed = datetime.now(UTC) - timedelta(seconds=2)  # an incremental run that builds rows: asks again
    hub.update("105", changed, amount="7500")
    srv.requests.clear()
    again = _links(run_flow(path).outputs[0])
    assert again == links and len([r for r in srv.requests if r.path == DETAILS]) == 1
    srv.requests.clear()  # nothing changed: the rows (and their links) are reused, nothing asked
    assert _links(run_flow(path).outputs[0]) == links and not [r for r in srv.requests if r.path == DETAILS]


def test_a_token_without_the_account_scope_gives_no_links_and_a_note(fake, tmp_path: Path, caplog) -> None:
    hub, srv = fake
    hub.forbidden = {DETAILS}  # HubSpot's 403 MISSING_SCOPES
    result = run_flow(write_config(srv, tmp_path))
    assert (result.sources[0].rows_loaded, result.sources[0].stale) == (7, False)  # the run goes on
    assert _links(result.outputs[0]) == dict.fromkeys(ACTED_ON, (None, None))
    assert ("hubspot_main': no links to the deal records: the token may not read the account details "
            f"(HTTP 403 on {DETAILS})") in caplog.text


def test_a_record_url_template_on_the_source_wins(fake, tmp_path: Path) -> None:
    hub, srv = fake
    path = write_config(srv, tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"][0]["record_url_template"] = "https://crm.example.com/hs/{opportunity_id}"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    links = _links(run_flow(path).outputs[0])
    assert links == {d: (f"https://crm.example.com/hs/{d}",) * 2 for d in ACTED_ON}
    assert not [r for r in srv.requests if r.path == DETAILS]
