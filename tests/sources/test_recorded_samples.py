"""The fakes against the recorded real answers in ../shared/fixtures/real/ (SOURCES.md there says whose).

The fakes build their bodies from the vendors' documented shapes, so they run without that
folder; these tests replay the recordings and check the fakes still answer in the same shape.
Without the folder each test skips with one line (under CI it fails: tests/shared_fixtures.py).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import pandas as pd
import pytest
import requests

from tests.fakes.graph import CHUNK_UNIT, FakeGraph
from tests.fakes.hubspot import DEFAULT_PIPELINES, TOKEN, FakeClock, FakeHubSpot, Harness, seed_demo
from tests.fakes.salesforce import JWT_GRANT, SalesforceFake
from tests.fakes.server import FakeServer, Request, Response
from tests.fakes.tableau import FakeTableau
from tests.shared_fixtures import recorded_text

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def req(method: str, path: str, body: bytes | dict | None = None, **headers: str) -> Request:
    data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    return Request(method, path, {}, {"host": "127.0.0.1:1", **{k.replace("_", "-"): v for k, v in headers.items()}},
                   data)


def body_of(resp: Response) -> dict:
    return json.loads(resp.payload()[0])


def sample(folder: str, name: str) -> dict:
    return json.loads(recorded_text(folder, name))


def keys(d: dict) -> set[str]:
    return set(d)


# ----------------------------------------------------------------------------- HubSpot


def test_the_recorded_deals_page_maps_through_the_connector(tmp_path):
    page = sample("hubspot", "dlt_deals_data.json")
    clock = FakeClock()
    hub = FakeHubSpot.from_page(page, clock.now)
    with FakeServer(hub, tmp_path) as srv:
        ex = Harness(hub, srv, clock, tmp_path).run(started=RUN1)
    recs = {r["opportunity_id"]: r for r in ex.records.to_dict("records")}
    assert sorted(recs) == sorted(d["id"] for d in page["results"]) and len(recs) == 2
    labels = {s["id"]: s["label"] for p in DEFAULT_PIPELINES for s in p["stages"]}
    for deal in page["results"]:
        props, rec = deal["properties"], recs[deal["id"]]
        assert (rec["name"], rec["amount"]) == (props["dealname"], props["amount"])
        assert rec["stage"] == labels[props["dealstage"]] and rec["created_date"] == props["createdate"]
        assert pd.isna(rec["close_date"]) and pd.isna(rec["owner"])  # closedate null, no owner property


def test_seeded_deals_are_served_in_the_recorded_shape(tmp_path):
    recorded = sample("hubspot", "dlt_deals_data.json")["results"][0]
    hub = FakeHubSpot(clock=lambda: 0.0)
    seed_demo(hub)
    with FakeServer(hub, tmp_path) as srv:
        got = requests.get(f"{srv.url}/crm/v3/objects/deals", params={"properties": ",".join(recorded["properties"])},
                           headers={"Authorization": f"Bearer {TOKEN}"}, verify=srv.ca_path, timeout=10).json()
    plain = next(d for d in got["results"] if d["id"] == "201")
    assert keys(plain) == keys(recorded)
    assert keys(plain["properties"]) == keys(recorded["properties"])
    assert (plain["properties"]["dealstage"], plain["properties"]["closedate"]) == \
        (recorded["properties"]["dealstage"], recorded["properties"]["closedate"])


# ----------------------------------------------------------------------------- Salesforce


def _token(fake: SalesforceFake, **form: str) -> Response:
    return fake(req("POST", "/services/oauth2/token", urlencode(form).encode()))


def test_salesforce_token_answers_have_the_recorded_keys():
    fake = SalesforceFake(instance_url="https://127.0.0.1:1")
    ok = _token(fake, grant_type="client_credentials", client_id=fake.client_id, client_secret=fake.client_secret)
    assert ok.status == 200 and keys(sample("salesforce", "oauth_token_success.json")) <= keys(body_of(ok))
    assert body_of(ok)["token_type"] == "Bearer" and body_of(ok)["instance_url"] == fake.instance_url
    bad_id = _token(fake, grant_type="client_credentials", client_id="nope", client_secret="x")
    assert (bad_id.status, body_of(bad_id)) == (400, sample("salesforce", "oauth_error_invalid_client_id.json"))
    bad_grant = _token(fake, grant_type=JWT_GRANT, assertion="not-a-jwt")
    assert (bad_grant.status, body_of(bad_grant)) == (400, sample("salesforce", "oauth_error_invalid_grant.json"))


def test_salesforce_limits_answer_has_the_recorded_daily_api_entry():
    fake = SalesforceFake(instance_url="https://127.0.0.1:1")
    token = body_of(_token(fake, grant_type="client_credentials", client_id=fake.client_id,
                           client_secret=fake.client_secret))["access_token"]
    got = body_of(fake(req("GET", "/services/data/v66.0/limits", authorization=f"Bearer {token}")))
    want = sample("salesforce", "limits.json")["DailyApiRequests"]
    assert keys(got["DailyApiRequests"]) == keys(want)
    assert got["DailyApiRequests"]["Max"] == want["Max"]  # the fake's default: a Developer Edition's 15,000
    assert got["DailyApiRequests"]["Remaining"] == want["Max"] - 1  # this request counted


# ----------------------------------------------------------------------------- Microsoft Graph


@pytest.fixture
def graph() -> FakeGraph:
    g = FakeGraph(lambda t: True)
    g.add_drive("b!drive01", me=True)
    g.put_file("b!drive01", "Reports/old.xlsx", b"x")
    return g


def _session(graph: FakeGraph, name: str) -> tuple[Response, str]:
    made = graph(req("POST", f"/v1.0/drives/b!drive01/root:/Reports/{name}:/createUploadSession",
                     {"item": {"@microsoft.graph.conflictBehavior": "fail"}}, authorization="Bearer t"))
    return made, "/up/" + body_of(made)["uploadUrl"].split("/up/", 1)[1].split("?", 1)[0]


def _chunk(graph: FakeGraph, url: str, start: int, n: int, total: int) -> Response:
    return graph(Request("PUT", url, {}, {"content-range": f"bytes {start}-{start + n - 1}/{total}"}, b"\0" * n))


def test_upload_session_answers_have_the_recorded_keys(graph):
    made, url = _session(graph, "new.xlsx")
    assert made.status == 200 and keys(body_of(made)) == keys(sample("msgraph", "createUploadSession_200.json"))
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
    assert iso.match(body_of(made)["expirationDateTime"])
    assert iso.match(sample("msgraph", "createUploadSession_200.json")["expirationDateTime"])
    part = _chunk(graph, url, 0, CHUNK_UNIT, 2 * CHUNK_UNIT)
    assert part.status == 202
    assert keys(body_of(part)) == keys(sample("msgraph", "uploadChunk_202_nextExpectedRanges.json"))
    assert body_of(part)["nextExpectedRanges"] == [f"{CHUNK_UNIT}-"]
    status = graph(Request("GET", url, {}, {}, b""))
    assert keys(body_of(status)) == keys(sample("msgraph", "uploadSession_status_200.json"))


def test_graph_errors_carry_the_recorded_codes(graph):
    _, url = _session(graph, "new.xlsx")
    _chunk(graph, url, 0, CHUNK_UNIT, 2 * CHUNK_UNIT)
    overlap = _chunk(graph, url, 0, CHUNK_UNIT, 2 * CHUNK_UNIT)
    want = sample("msgraph", "error_invalidRange.json")["error"]
    got = body_of(overlap)["error"]
    assert overlap.status == 416 and got["code"] == want["code"] and keys(want) <= keys(got)
    assert keys(want["innerError"]) <= keys(got["innerError"])

    _, url = _session(graph, "old.xlsx")  # the name exists and the session says fail
    _chunk(graph, url, 0, CHUNK_UNIT, CHUNK_UNIT + 1)
    exists = _chunk(graph, url, CHUNK_UNIT, 1, CHUNK_UNIT + 1)
    want = sample("msgraph", "uploadChunk_final_409_nameAlreadyExists.json")["error"]
    got = body_of(exists)["error"]
    assert exists.status == 409 and got["code"] == want["code"] and keys(want) <= keys(got)
    assert got["message"].split(". ")[0] == want["message"].split(". ")[0]


def test_drive_items_have_the_recorded_keys(graph):
    item = body_of(graph(req("GET", "/v1.0/drives/b!drive01/root:/Reports/old.xlsx", authorization="Bearer t")))
    for name in ("putContent_201_driveItem.json", "uploadChunk_final_201_driveItem.json"):
        assert keys(sample("msgraph", name)) <= keys(item)


# ----------------------------------------------------------------------------- Tableau


def shape(xml: bytes | str) -> dict[str, set[str]]:
    """Each element's path of tag names -> the attribute names seen there, namespaces dropped."""
    out: dict[str, set[str]] = {}

    def walk(el: ET.Element, path: str) -> None:
        here = f"{path}/{el.tag.split('}')[-1]}"
        out.setdefault(here, set()).update(a for a in el.attrib if not a.startswith("{"))
        for child in el:
            walk(child, here)

    walk(ET.fromstring(xml.encode() if isinstance(xml, str) else xml), "")
    return out


def covers(got: dict[str, set[str]], want: dict[str, set[str]]) -> bool:
    """Every element of `want` is in `got`, with at least its attributes."""
    return all(path in got and attrs <= got[path] for path, attrs in want.items())


def error_of(xml: bytes | str) -> tuple[str | None, str | None, str | None]:
    ns = {"t": "http://tableau.com/api"}
    err = ET.fromstring(xml.encode() if isinstance(xml, str) else xml).find("t:error", ns)
    assert err is not None
    return err.get("code"), err.findtext("t:summary", None, ns), err.findtext("t:detail", None, ns)


def _sign_in(fake: FakeTableau, secret: str) -> Response:
    xml = (f'<tsRequest><credentials personalAccessTokenName="etl-bot" personalAccessTokenSecret="{secret}">'
           f'<site contentUrl="Samples"/></credentials></tsRequest>')
    return fake(req("POST", "/api/3.24/auth/signin", xml.encode()))


def test_tableau_sign_in_answers_have_the_recorded_shape():
    fake = FakeTableau()
    ok = _sign_in(fake, "pat-secret-1")
    assert ok.status == 200 and covers(shape(ok.body), shape(recorded_text("tableau", "auth_sign_in.xml")))
    bad = _sign_in(fake, "wrong")
    assert bad.status == 401 and error_of(bad.body) == error_of(recorded_text("tableau", "auth_sign_in_error.xml"))


def test_tableau_unknown_resource_has_the_recorded_error():
    code, summary, detail = error_of(FakeTableau()(req("GET", "/api/9.9/serverinfo")).body)
    want = error_of(recorded_text("tableau", "server_info_404.xml"))
    assert (code, summary) == want[:2]
    assert re.sub(r"'[^']*'", "'X'", detail or "") == re.sub(r"'[^']*'", "'X'", want[2] or "")


def test_tableau_workbook_elements_have_the_recorded_shape():
    fake = FakeTableau()
    fake.add_view("9f1c2d3e-4b5a-4c6d-8e7f-001122334455", "Sales Pipeline", "Opportunities", b"a\n1\n")
    token = ET.fromstring(_sign_in(fake, "pat-secret-1").body).find("{http://tableau.com/api}credentials").get("token")
    listed = fake(req("GET", "/api/3.24/sites/6b7179ba-b82b-4f0f-91ed-812074ac5da6/workbooks", x_tableau_auth=token))
    want = {k: v for k, v in shape(recorded_text("tableau", "workbook_get_page_1.xml")).items() if "/workbook" in k}
    assert want and covers(shape(listed.body), want)
