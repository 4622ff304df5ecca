"""Tableau source driven through the real tableauserverclient against the HTTPS fake."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import pytest
import requests
import trustme

from config.models import DEFAULT_STAGES, TableauSourceConfig
from connectors.errors import FatalAPIError, RetriableAPIError, SourceDataError
from connectors.extracted import ExtractContext
from connectors.http.session import Observer, RetryPolicy
from connectors.sources.tableau import extract
from tests.fakes.server import FakeServer
from tests.fakes.tableau import (
    FakeTableau,
    Fault,
    opportunities_csv,
)
from tests.shared_fixtures import recorded_bytes, recorded_text
from transforms.canonical import canonicalize

OPP_VIEW = "9f1c2d3e-4b5a-4c6d-8e7f-001122334455"
DASH_VIEW = "9f1c2d3e-4b5a-4c6d-8e7f-001122334466"
SECRET = "pat-secret-1"
COLUMNS = {"Opportunity ID": "opportunity_id", "Opportunity Name": "name", "Stage": "stage",
           "Amount": "amount", "Created Date": "created_date", "Close Date": "close_date", "Region": "team"}


@pytest.fixture(autouse=True)
def _state_home(tmp_path, monkeypatch):
    """Token locks go to a per-test folder (ExtractContext without state_dir: $XDG_STATE_HOME)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))


@pytest.fixture
def fake() -> FakeTableau:
    f = FakeTableau()
    f.add_view(OPP_VIEW, "Sales Pipeline", "Opportunities", opportunities_csv(3000))
    f.add_view(DASH_VIEW, "Sales Pipeline", "Pipeline Dashboard", opportunities_csv(5), sheet_type="dashboard")
    return f


@pytest.fixture(scope="module")
def _server(tmp_path_factory):
    """One HTTPS server for the module (shutting one down costs ~0.5 s); each test gets a fresh fake."""
    current: list[FakeTableau] = []
    with FakeServer(lambda req: current[-1](req), tmp_path_factory.mktemp("tableau")) as s:
        yield s, current


@pytest.fixture
def srv(_server, fake: FakeTableau) -> FakeServer:
    s, current = _server
    current.append(fake)
    s.requests.clear()
    return s


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def policy(sleeps: list[float]) -> RetryPolicy:
    return RetryPolicy(max_attempts=3, backoff_base=0.01, jitter=False, sleep=sleeps.append)


@pytest.fixture
def overview(fake: FakeTableau) -> str:
    """The recorded Superstore views (two recorded list pages) and the Overview view's recorded export; its id."""
    fake.add_recorded_views([recorded_text("tableau", f"queryset_slicing_page_{n}.xml") for n in (1, 2)])
    view = next(v for v in fake.views if v.content_url == "Superstore/sheets/Overview")
    fake.view_data[view.id] = recorded_bytes("tableau", "populate_csv.csv")
    return view.id


def make_cfg(srv: FakeServer, **over: Any) -> TableauSourceConfig:
    data: dict[str, Any] = {"type": "tableau", "name": "tableau", "server_url": srv.url, "site": "Samples",
                            "token_name": "etl-bot", "token_secret": SECRET, "view": "Sales Pipeline/Opportunities",
                            "columns": COLUMNS, "ca_bundle": srv.ca_path}
    data.update(over)
    return TableauSourceConfig.model_validate(data)


def make_ctx() -> ExtractContext:
    return ExtractContext(engine=None, observer=Observer(), as_of=date(2026, 3, 31),
                          run_started=datetime(2026, 3, 31, 6, tzinfo=UTC), tz=UTC)


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))


# ----------------------------------------------------------------------------- view mode


def test_view_by_name_maps_parses_and_signs_out(srv, fake, policy):
    cfg = make_cfg(srv, raw_sheet="Tableau export")
    ctx = make_ctx()
    out = extract(cfg, ctx, policy=policy)

    rows = csv_rows(opportunities_csv(3000))
    assert len(out.records) == 3000
    assert out.records["_row"].tolist() == list(range(2, 3002))
    first = out.records.iloc[0]
    assert (first["opportunity_id"], first["stage"], first["team"]) == ("OPP-000001", "Qualification", "West")
    assert first["amount"] == 1737.0 and rows[1][4] == "$1,737"
    assert (first["created_date"], first["close_date"]) == ("2025-02-02", "2026-02-03")
    assert "Win Probability" not in out.records  # unmapped, non-canonical headers stay in raw only
    # raw_sheet: the CSV exactly as Tableau sent it
    assert out.raw.columns.tolist() == rows[0]
    assert out.raw.astype(str).values.tolist() == rows[1:]
    assert out.notes == []
    assert fake.sign_ins == 1 and fake.sign_outs == 1 and fake.live_sessions() == []
    assert out.requests == len(srv.requests) == ctx.observer.requests
    assert [r.path.split("/api/")[1].split("/", 1)[0] for r in srv.requests] == ["3.24"] * len(srv.requests)

    res = canonicalize(out.records, source="tableau", stages=list(DEFAULT_STAGES), stage_map={}, tz=UTC)
    assert len(res.loaded) == 3000 and res.rejected.empty
    assert res.loaded["amount"].sum() == pytest.approx(sum(float(r[4].strip("$").replace(",", "")) for r in rows[1:]))


def test_recorded_view_csv_through_real_client(srv, fake, overview, policy):
    """The recorded Superstore export: every cell reaches `raw` untouched; numbers parse."""
    cfg = make_cfg(srv, view="Superstore/Overview", raw_sheet="Superstore",
                   columns={"Region": "opportunity_id", "Measure Names": "stage", "Sales": "amount",
                            "Profit": "created_date"})
    out = extract(cfg, make_ctx(), policy=policy)
    rows = csv_rows(fake.view_data[overview])
    assert out.raw.columns.tolist() == rows[0]
    assert out.raw.values.tolist() == rows[1:]
    assert out.records["amount"].tolist()[::6] == [311784.0, 422611.0, 515262.0, 571239.0]
    assert any("Measure Names" in n for n in out.notes)
    assert fake.sign_outs == 1


def test_view_missing_required_field_is_a_clear_error_and_still_signs_out(srv, fake, policy):
    fake.add_view("9f1c2d3e-4b5a-4c6d-8e7f-001122334477", "Sales Pipeline", "Undated",
                  b"Opportunity ID,Stage,Region,Amount\nOPP-1,Won,East,\"$1,200\"\n")
    cfg = make_cfg(srv, view="Sales Pipeline/Undated", columns={"Opportunity ID": "opportunity_id", "Stage": "stage"})
    with pytest.raises(SourceDataError, match=r"created_date.*Columns available: Opportunity ID, Stage, Region, Amount"):
        extract(cfg, make_ctx(), policy=policy)
    assert fake.sign_outs == 1 and fake.live_sessions() == []


def test_columns_naming_an_absent_header(srv, fake, policy):
    cfg = make_cfg(srv, columns={**COLUMNS, "Owner": "owner"})
    with pytest.raises(SourceDataError, match=r"'Owner'.*its columns are: Opportunity ID"):
        extract(cfg, make_ctx(), policy=policy)


def test_filters_and_max_age_reach_the_server_and_filter_rows(srv, fake, policy):
    cfg = make_cfg(srv, view=OPP_VIEW, max_age=5,
                   filters={"Region": ["East", "West"], "vf_Stage": "Won", "Parameters.Quarter": "Q1"})
    out = extract(cfg, make_ctx(), policy=policy)
    assert fake.data_queries == [{"maxAge": "5", "vf_Region": "East,West", "vf_Stage": "Won",
                                  "vf_Parameters.Quarter": "Q1"}]
    expected = [r for r in csv_rows(opportunities_csv(3000))[1:] if r[2] in ("East", "West") and r[3] == "Won"]
    assert out.records["opportunity_id"].tolist() == [r[0] for r in expected]
    assert len(expected) > 100


def test_paged_lookup_finds_the_view_on_page_two(srv, fake, policy):
    for i in range(150):  # same view name in many workbooks: the right one is on page 2
        fake.add_view(f"aaaaaaaa-0000-4000-8000-{i:012d}", f"Region {i}", "Opportunities", opportunities_csv(2))
    fake.views.append(fake.views.pop(next(i for i, v in enumerate(fake.views) if v.id == OPP_VIEW)))
    out = extract(make_cfg(srv), make_ctx(), policy=policy)
    assert len(out.records) == 3000
    pages = [r.query for r in srv.requests if r.path.endswith("/views")]
    assert [p["pageNumber"] for p in pages] == [["1"], ["2"]]
    assert all(p["filter"] == ["name:eq:Opportunities"] and p["pageSize"] == ["100"] for p in pages)


def test_lookup_matches_the_recorded_content_url(srv, fake, overview, policy):
    """'Superstore/Overview' matches the recorded view's contentUrl without asking for the workbook."""
    extract(make_cfg(srv, view="Superstore/Overview", columns={"Region": "opportunity_id",
                     "Measure Names": "stage", "Profit": "created_date"}), make_ctx(), policy=policy)
    assert not [r for r in srv.requests if "/workbooks/" in r.path]
    # the recorded list entry has no sheetType, so the single-view answer is asked for it
    assert [r.path.rsplit("/", 1)[-1] for r in srv.requests if "/views/" in r.path][:1] == [overview]
    assert [r.path.rsplit("/", 2)[-2] for r in srv.requests if r.path.endswith("/data")] == [overview]


@pytest.mark.parametrize(("view", "message"), [
    ("Sales Pipeline/Nope", r"'Sales Pipeline/Nope' was not found on site 'Samples'"),
    ("Elsewhere/Opportunities", r"views named 'Opportunities' exist in workbooks: Sales Pipeline"),
    ("00000000-0000-4000-8000-000000000000", r"view '00000000-0000-4000-8000-000000000000' was not found"),
])
def test_view_not_found(srv, fake, policy, view, message):
    with pytest.raises(FatalAPIError, match=message):
        extract(make_cfg(srv, view=view), make_ctx(), policy=policy)
    assert fake.sign_outs == 1


def test_ambiguous_view_lists_ids(srv, fake, policy):
    other = "bbbbbbbb-0000-4000-8000-000000000001"
    fake.add_view(other, "Sales Pipeline", "Opportunities", opportunities_csv(1), workbook_id="cccccccc-0000-4000-8000-000000000001")
    with pytest.raises(FatalAPIError, match=rf"ambiguous.*{OPP_VIEW}, {other}"):
        extract(make_cfg(srv), make_ctx(), policy=policy)


def test_dashboard_warns(srv, fake, policy, caplog):
    with caplog.at_level(logging.WARNING, logger="connectors.sources.tableau"):
        out = extract(make_cfg(srv, view="Sales Pipeline/Pipeline Dashboard"), make_ctx(), policy=policy)
    assert len(out.records) == 5
    assert "is a dashboard: Tableau returns only the data of its first sheet" in out.notes[0]
    assert out.notes[0] in caplog.text
    # five rows whose days are all <= 12: day/month order cannot be told, and the note says so
    assert out.notes[1:] == [
        "created_date: dates like '2/2/2025' read as month/day/year; set date_format if the view uses day/month",
        "close_date: dates like '2/3/2026' read as month/day/year; set date_format if the view uses day/month",
    ]


# ----------------------------------------------------------------------------- sessions and errors


def test_session_expiry_mid_run_signs_in_again(srv, fake, policy):
    fake.faults.append(Fault("data", "expire"))
    out = extract(make_cfg(srv), make_ctx(), policy=policy)
    assert len(out.records) == 3000
    assert fake.sign_ins == 2 and fake.sign_outs == 1 and fake.live_sessions() == []
    data_calls = [r for r in srv.requests if r.path.endswith("/data")]
    assert len(data_calls) == 2 and data_calls[0].headers["x-tableau-auth"] != data_calls[1].headers["x-tableau-auth"]


def test_session_lifetime_from_the_fake_expires_and_recovers(srv, fake, policy):
    fake.session_ttl_requests = 2  # lookup page + workbook call, then the data call finds it expired
    out = extract(make_cfg(srv, view="Sales Pipeline/Opportunities"), make_ctx(), policy=policy)
    assert len(out.records) == 3000 and fake.sign_ins == 2


def test_expiry_twice_in_one_call_is_fatal(srv, fake, policy):
    fake.faults += [Fault("data", "expire"), Fault("data", "expire")]
    with pytest.raises(FatalAPIError, match="401002"):
        extract(make_cfg(srv), make_ctx(), policy=policy)
    assert fake.sign_ins == 2 and fake.live_sessions() == []


def test_bad_token_is_fatal_and_names_the_keys_not_the_secret(srv, fake, policy, caplog):
    cfg = make_cfg(srv, token_secret="wrong-secret-value")
    with caplog.at_level(logging.DEBUG), pytest.raises(FatalAPIError) as err:
        extract(cfg, make_ctx(), policy=policy)
    msg = str(err.value)
    assert "401001" in msg and "token_name 'etl-bot'" in msg and "token_secret" in msg
    assert "wrong-secret-value" not in msg and "wrong-secret-value" not in caplog.text
    assert fake.sign_ins == 0 and fake.sign_outs == 0


def test_tokens_and_secrets_never_logged(srv, fake, policy, caplog):
    fake.faults.append(Fault("data", "expire"))
    with caplog.at_level(logging.DEBUG):
        extract(make_cfg(srv), make_ctx(), policy=policy)
    assert SECRET not in caplog.text
    assert all(s.token not in caplog.text for s in fake.sessions)


@pytest.mark.parametrize(("detail", "waits"), [
    ("Too many requests for 'api.rest.views'. Please retry after 1 minutes.", [60.0]),
    ("Too many requests. Please retry after 30 seconds.", [30.0]),
    ("Too many requests.", [0.01]),  # no hint: the policy's backoff
])
def test_429000_waits_then_succeeds(srv, fake, policy, sleeps, detail, waits):
    fake.faults.append(Fault("data", "429", detail))
    out = extract(make_cfg(srv), make_ctx(), policy=policy)
    assert len(out.records) == 3000 and sleeps == waits
    assert out.retries == 1 and out.waited_seconds == waits[0]


def test_429000_with_a_long_wait_gives_up_at_once(srv, fake, policy, sleeps):
    fake.faults.append(Fault("views", "429", "Too many requests for 'api.rest.views'. Please retry after 29 minutes."))
    with pytest.raises(RetriableAPIError, match="run again after 29 minutes"):
        extract(make_cfg(srv), make_ctx(), policy=policy)
    assert sleeps == [] and fake.sign_outs == 1


def test_5xx_retried_then_gives_up(srv, fake, policy, sleeps):
    fake.faults += [Fault("data", "500")] * 3
    with pytest.raises(RetriableAPIError, match="gave up after 3 attempts.*HTTP 500"):
        extract(make_cfg(srv), make_ctx(), policy=policy)
    assert sleeps == [0.01, 0.02] and fake.sign_outs == 1


def test_api_version_is_configurable_and_too_new_is_explained(srv, fake, policy):
    out = extract(make_cfg(srv, api_version="3.27"), make_ctx(), policy=policy)
    assert len(out.records) == 3000 and all("/api/3.27/" in r.path for r in srv.requests)
    with pytest.raises(FatalAPIError, match=r"404003.*api_version '3.30'"):
        extract(make_cfg(srv, api_version="3.30"), make_ctx(), policy=policy)


def test_ca_bundle_wins_over_requests_ca_bundle(srv, fake, policy, tmp_path, monkeypatch):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other))
    assert len(extract(make_cfg(srv), make_ctx(), policy=policy).records) == 3000
    with pytest.raises(RetriableAPIError, match="SSLError"):
        extract(make_cfg(srv, ca_bundle=None), make_ctx(), policy=policy)


def test_sequential_runs_each_use_their_own_session(srv, fake, policy):
    for _ in range(2):
        extract(make_cfg(srv), make_ctx(), policy=policy)
    assert fake.sign_ins == 2 and fake.sign_outs == 2
    assert not [r for r in srv.requests if r.path.endswith("/data") and r.headers.get("x-tableau-auth") is None]


# ----------------------------------------------------------------------------- datasource mode (VDS)

DS = "1a2a3b4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def ds_rows(fake: FakeTableau) -> list[dict[str, Any]]:
    from tests.fakes.tableau import FakeDatasource

    rows = [{"Opportunity Id": f"OPP-{i}", "Stage Name": ["Proposal", "Won", "Lost"][i % 3],
             "Amount": 1000.0 * i, "Created": f"2025-0{1 + i % 9}-15", "Region": ["East", "West"][i % 2]}
            for i in range(1, 41)]
    fake.datasources[DS] = FakeDatasource(rows)
    return rows


def ds_cfg(srv: FakeServer, **over: Any) -> TableauSourceConfig:
    base = {"columns": {"Opportunity Id": "opportunity_id", "Stage Name": "stage", "Amount": "amount",
                        "Created": "created_date"}}
    return make_cfg(srv, mode="datasource", view=None, datasource_luid=DS, **{**base, **over})


def test_datasource_query(srv, fake, ds_rows, policy):
    out = extract(ds_cfg(srv, filters={"Region": ["West"]}, raw_sheet="VDS"), make_ctx(), policy=policy)
    west = [r for r in ds_rows if r["Region"] == "West"]
    assert out.records["opportunity_id"].tolist() == [r["Opportunity Id"] for r in west]
    assert out.records["amount"].tolist() == [r["Amount"] for r in west]
    assert out.records["_row"].tolist() == list(range(1, len(west) + 1))
    assert out.raw.to_dict("records") == [{k: r[k] for k in ("Opportunity Id", "Stage Name", "Amount", "Created")}
                                          for r in west]
    assert fake.vds_queries == [{
        "datasource": {"datasourceLuid": DS},
        "query": {"fields": [{"fieldCaption": c} for c in ("Opportunity Id", "Stage Name", "Amount", "Created")],
                  "filters": [{"field": {"fieldCaption": "Region"}, "filterType": "SET", "values": ["West"],
                               "exclude": False}]},
        "options": {"returnFormat": "OBJECTS", "disaggregate": False}}]
    vds = [r for r in srv.requests if "vizql-data-service" in r.path]
    assert vds[0].headers["x-tableau-auth"] == fake.sessions[0].token
    assert fake.sign_outs == 1


def test_datasource_explicit_fields_with_alias(srv, fake, ds_rows, policy):
    cfg = ds_cfg(srv, fields=[{"fieldCaption": "Opportunity Id"}, {"fieldCaption": "Stage Name"},
                              {"fieldCaption": "Amount", "function": "SUM", "fieldAlias": "Pipeline"},
                              {"fieldCaption": "Created"}],
                 columns={"Opportunity Id": "opportunity_id", "Stage Name": "stage", "Pipeline": "amount",
                          "Created": "created_date"},
                 filters={"Created": {"filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "RANGE",
                                      "minDate": "2025-01-01", "maxDate": "2025-12-31"}})
    out = extract(cfg, make_ctx(), policy=policy)
    assert out.records["amount"].tolist() == [r["Amount"] for r in ds_rows]
    assert fake.vds_queries[0]["query"]["filters"] == [{"field": {"fieldCaption": "Created"},
                                                        "filterType": "QUANTITATIVE_DATE",
                                                        "quantitativeFilterType": "RANGE",
                                                        "minDate": "2025-01-01", "maxDate": "2025-12-31"}]


@pytest.mark.parametrize(("setup", "message"), [
    (lambda f: setattr(f, "vds_enabled", False), r"has no VizQL Data Service \(HTTP 404"),
    (lambda f: setattr(f.datasources[DS], "api_access", False), r"HTTP 403.*'API Access' capability"),
    (lambda f: f.datasources.pop(DS), r"does not know data source .*HTTP 404: 404000.*check datasource_luid"),
])
def test_datasource_refusals_are_explained(srv, fake, ds_rows, policy, setup, message):
    setup(fake)
    with pytest.raises(FatalAPIError, match=message):
        extract(ds_cfg(srv), make_ctx(), policy=policy)
    assert fake.sign_outs == 1


def test_datasource_unknown_field_gives_the_server_message(srv, fake, ds_rows, policy):
    with pytest.raises(FatalAPIError, match=r"has no such field \(HTTP 404: 404934: Unknown Field: Owner\.\)"):
        extract(ds_cfg(srv, columns={"Opportunity Id": "opportunity_id", "Stage Name": "stage",
                                     "Created": "created_date", "Owner": "owner"}), make_ctx(), policy=policy)


@pytest.mark.parametrize(("kind", "sleeps_expected", "sign_ins"), [("expire", [], 2), ("429", [60.0], 1)])
def test_datasource_expiry_and_rate_limit(srv, fake, ds_rows, policy, sleeps, kind, sleeps_expected, sign_ins):
    fake.faults.append(Fault("vds", kind))
    out = extract(ds_cfg(srv), make_ctx(), policy=policy)
    assert len(out.records) == 40 and sleeps == sleeps_expected and fake.sign_ins == sign_ins
    assert fake.live_sessions() == []


def test_records_frame_is_pandas(srv, fake, policy):
    out = extract(make_cfg(srv), make_ctx(), policy=policy)
    assert isinstance(out.records, pd.DataFrame) and out.history is None and out.stale is False


def test_two_runs_with_one_token_never_overlap(srv, fake, policy):
    """Run A pauses inside its data download; run B with the same token waits instead of signing in."""
    import threading

    from connectors.http.session import build_session

    in_download, release, b_waiting = threading.Event(), threading.Event(), threading.Event()

    def pausing_session() -> requests.Session:
        s = build_session(srv.ca_path)

        def pause(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
            if resp.url.split("?")[0].endswith("/data"):
                in_download.set()
                release.wait(30)

        s.hooks["response"].append(pause)
        return s

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for another run" in record.getMessage():
                b_waiting.set()

    handler = Waiting()
    logger = logging.getLogger("connectors.sources.tableau")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    results: dict[str, Any] = {}
    try:
        a = threading.Thread(target=lambda: results.setdefault(
            "a", extract(make_cfg(srv), make_ctx(), policy=policy, session_factory=pausing_session)))
        b = threading.Thread(target=lambda: results.setdefault("b", extract(make_cfg(srv), make_ctx(), policy=policy)))
        a.start()
        assert in_download.wait(30)
        b.start()
        assert b_waiting.wait(30)
        assert fake.sign_ins == 1  # B has not signed in while A's session is in use
        release.set()
        a.join(30)
        b.join(30)
    finally:
        release.set()
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(results["a"].records) == len(results["b"].records) == 3000
    assert fake.sign_ins == 2 and fake.sign_outs == 2
    assert len(fake.sessions) == 2 and fake.live_sessions() == []  # no session was ended early (no re-sign-in)


def test_headers_named_like_fields_map_themselves_as_in_the_csv_source(srv, fake, policy):
    out = extract(make_cfg(srv, columns={}), make_ctx(), policy=policy)
    assert sorted(c for c in out.records.columns if c != "_row") == [
        "amount", "close_date", "created_date", "opportunity_id", "stage"]
    assert out.records["amount"].iloc[0] == 1737.0


# ----------------------------------------------------------------------------- unchanged answers


@pytest.mark.parametrize("mode", ["view", "datasource"])
def test_the_same_answer_as_last_time_is_not_parsed_again(srv, fake, ds_rows, policy, mode):
    import dataclasses

    cfg = make_cfg(srv, raw_sheet="Export") if mode == "view" else ds_cfg(srv, raw_sheet="Export")
    first = extract(cfg, make_ctx(), policy=policy)
    assert first.version and not first.reused and len(first.records)
    again = extract(cfg, dataclasses.replace(make_ctx(), cached_version=first.version), policy=policy)
    assert (again.reused, again.version, len(again.records), again.raw) == (True, first.version, 0, None)
    assert fake.sign_outs == 2  # the data was still downloaded and the session closed
    if mode == "view":
        fake.view_data[OPP_VIEW] = opportunities_csv(2999)
    else:
        ds_rows.pop()
    changed = extract(cfg, dataclasses.replace(make_ctx(), cached_version=first.version), policy=policy)
    assert not changed.reused and changed.version != first.version
    assert len(changed.records) == len(first.records) - 1


# ----------------------------------------------------------------------------- names and values Tableau's grammar reserves


@pytest.mark.parametrize(("workbook", "name"), [
    ("Pipeline [EMEA]", "Opportunities"),
    ("Sales Pipeline", "Q1: Opportunities"),
    ("Sales, Marketing & Ops", "Open [all]"),
])
def test_names_the_filter_grammar_reserves_are_matched_without_a_server_filter(srv, fake, policy, workbook, name):
    """':' '[' ']' ',' '&' cannot be said in `name:eq:` (the fake answers 400 like a malformed expression)."""
    target = "aaaaaaaa-0000-4000-8000-00000000f001"
    fake.add_view(target, workbook, name, opportunities_csv(7))
    fake.add_view("aaaaaaaa-0000-4000-8000-00000000f002", "Other Book", name, opportunities_csv(3))
    out = extract(make_cfg(srv, view=f"{workbook}/{name}"), make_ctx(), policy=policy)
    assert len(out.records) == 7
    assert [r.path.rsplit("/", 2)[-2] for r in srv.requests if r.path.endswith("/data")] == [target]
    for kind, wanted in (("/views", name), ("/workbooks", workbook)):
        lists = [r.query for r in srv.requests if r.path.endswith(kind)]
        if set(wanted) & set(",&:[]"):  # listed whole, at the largest page size, and matched here
            assert all("filter" not in q and q["pageSize"] == ["1000"] for q in lists), kind
            assert lists or kind == "/workbooks"  # a workbook is then told by its id (get workbook)
        else:
            assert all(q["filter"] == [f"name:eq:{wanted}"] for q in lists), kind


def test_a_name_the_grammar_allows_still_uses_the_server_filter(srv, fake, policy):
    extract(make_cfg(srv, view="Sales Pipeline/Pipeline Dashboard"), make_ctx(), policy=policy)
    lists = [r.query for r in srv.requests if r.path.endswith("/views")]
    assert lists == [{"filter": ["name:eq:Pipeline Dashboard"], "pageSize": ["100"], "pageNumber": ["1"]}]


def region_csv(regions: list[str]) -> bytes:
    rows = csv_rows(opportunities_csv(len(regions)))
    for row, region in zip(rows[1:], regions, strict=True):
        row[2] = region
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


@pytest.mark.parametrize(("value", "wire", "kept"), [
    ("East, North", "East\\, North", ["East, North"]),  # one value with a comma: not East OR " North"
    (["East, North", "West"], "East\\, North,West", ["East, North", "West"]),
    ("C:\\Share", "C:\\\\Share", ["C:\\Share"]),
])
def test_a_comma_in_a_view_filter_value_is_escaped(srv, fake, policy, value, wire, kept):
    regions = ["East, North", "East", " North", "West", "C:\\Share", "East, North"]
    fake.view_data[OPP_VIEW] = region_csv(regions)
    out = extract(make_cfg(srv, view=OPP_VIEW, filters={"Region": value}), make_ctx(), policy=policy)
    assert fake.data_queries[-1]["vf_Region"] == wire
    assert out.records["team"].tolist() == [r for r in regions if r in kept]


def test_a_list_for_a_workbook_parameter_is_refused_before_signing_in(srv, fake, policy):
    with pytest.raises(FatalAPIError, match=r"filters.Parameters.Quarter: a workbook parameter takes one value"):
        extract(make_cfg(srv, filters={"Parameters.Quarter": ["Q1", "Q2"]}), make_ctx(), policy=policy)
    assert fake.sign_ins == 0


def test_a_date_filter_reaches_vds_as_a_quantitative_date_range(srv, fake, ds_rows, policy):
    out = extract(ds_cfg(srv, filters={"Created": date(2025, 3, 15), "Region": ["West"]}), make_ctx(), policy=policy)
    assert fake.vds_queries[0]["query"]["filters"] == [
        {"field": {"fieldCaption": "Created"}, "filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "RANGE",
         "minDate": "2025-03-15", "maxDate": "2025-03-15"},
        {"field": {"fieldCaption": "Region"}, "filterType": "SET", "values": ["West"], "exclude": False}]
    want = [r["Opportunity Id"] for r in ds_rows if r["Created"] == "2025-03-15" and r["Region"] == "West"]
    assert out.records["opportunity_id"].tolist() == want and len(want) == 2


@pytest.mark.parametrize(("value", "message"), [
    ([date(2025, 3, 15), date(2025, 4, 15)], r"filters.Created: .*a list of dates cannot be sent; give one date or a range"),
    (datetime(2025, 3, 15, 10, 30), r"filters.Created: VizQL Data Service date filters take whole days"),
])
def test_dates_vds_cannot_take_are_refused_before_signing_in(srv, fake, ds_rows, policy, value, message):
    with pytest.raises(FatalAPIError, match=message):
        extract(ds_cfg(srv, filters={"Created": value}), make_ctx(), policy=policy)
    assert fake.sign_ins == 0 and fake.vds_queries == []


def test_date_text_in_a_set_filter_is_explained(srv, fake, ds_rows, policy):
    """A quoted date stays text (a SET filter); VDS refuses dates in set filters, and the error says what to write."""
    with pytest.raises(FatalAPIError, match=r"HTTP 400: 400803: Set filters don't support dates.*"
                                            r"give filters.Created a date \(not quoted\) or \{filterType: QUANTITATIVE_DATE"):
        extract(ds_cfg(srv, filters={"Created": "2025-03-15"}), make_ctx(), policy=policy)
    assert fake.sign_outs == 1


@pytest.mark.parametrize(("setup", "message"), [
    (lambda f: setattr(f, "vds_max_response_bytes", 1000), r"HTTP 400: 400804: Response too large.*1 GB limit; add filters"),
    (lambda f: setattr(f, "vds_queries_per_hour", 0), r"gave up after 3 attempts.*HTTP 429 .*429000: Too many requests"),
])
def test_vds_limits(srv, fake, ds_rows, policy, setup, message):
    setup(fake)
    with pytest.raises((FatalAPIError, RetriableAPIError), match=message):
        extract(ds_cfg(srv), make_ctx(), policy=policy)
    assert fake.sign_outs == 1
