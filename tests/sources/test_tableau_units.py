"""Tableau pieces without a network: formatted values, filters, config, and the fake's own rules."""

from __future__ import annotations

import csv
import io
import math
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import requests
from pydantic import ValidationError

from config.loader import load_config
from config.models import TableauSourceConfig
from connectors.sources.tableau import (
    csv_request_options,
    filter_value,
    name_filterable,
    parse_formatted,
    parse_tableau_number,
    retry_after_text,
    vds_query,
)
from tests.fakes.server import FakeServer
from tests.fakes.tableau import FakeDatasource, FakeTableau, opportunities_csv, split_vf_value
from tests.shared_fixtures import recorded_bytes

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "tableau.yaml"


@pytest.mark.parametrize(("text", "value"), [
    ("$45,047", 45047.0),
    ("$311,784", 311784.0),
    ("14.4%", 0.144),
    ("5,004", 5004.0),
    ("311,783.644", 311783.644),
    ("$711.83", 711.83),
    ("(1,234)", -1234.0),
    ("($1,234.50)", -1234.5),
    ("-$45", -45.0),
    ("\u22127.5%", -0.075),
    ("1.234,56", 1234.56),
    ("1 234 567", 1234567.0),
    ("1\u202f234,5", 1234.5),
    ("1'234", 1234.0),
    ("€1.2M", 1_200_000.0),
    ("$45K", 45_000.0),
    ("USD 12,000", 12000.0),
    ("0.144482316", 0.144482316),
    (438, 438.0),
    ("", None),
    ("Null", None),
    ("n/a", None),
    ("12 apples", None),
])
def test_parse_tableau_number(text, value):
    got = parse_tableau_number(text)
    assert got == pytest.approx(value) if value is not None else got is None


def test_column_parsing_agrees_with_the_scalar_parser():
    """The vectorised fast path for plain '$1,234.5' values gives what parse_tableau_number gives."""
    values = ["$45,047", "5,004", "311,783.644", "$711.83", "438", "1.234,56", "12,5", "(1,234)", "14.4%",
              "1,23", "$1,2345", "", "x", "0.144482316", "$45K"]
    frame = pd.DataFrame({"amount": values}, dtype=str)
    got = parse_formatted(frame, None)[0]["amount"].tolist()
    for v, g in zip(values, got, strict=True):
        want = parse_tableau_number(v)
        if want is None:
            assert (v == "" and math.isnan(g)) or g == v, v
        else:
            assert g == pytest.approx(want), v


def test_every_number_in_the_recorded_csv_parses():
    rows = list(csv.reader(io.StringIO(recorded_bytes("tableau", "populate_csv.csv").decode())))
    header = rows[0]
    numeric = [c for c in header if c not in ("Measure Names", "Region")]
    for row in rows[1:]:
        for col in numeric:
            assert parse_tableau_number(row[header.index(col)]) is not None, (col, row)
    assert parse_tableau_number(rows[1][header.index("Profit Ratio")]) == pytest.approx(0.144)


def test_parse_formatted_amounts_keep_unreadable_text_for_the_rejected_sheet():
    frame = pd.DataFrame({"amount": ["$1,000", "", "(250)", "lots"]}, dtype=str)
    out, notes = parse_formatted(frame, None)
    got = out["amount"].tolist()
    assert got[0] == 1000.0 and math.isnan(got[1]) and got[2] == -250.0 and got[3] == "lots"
    assert notes == []


@pytest.mark.parametrize(("values", "iso", "ambiguous"), [
    (["1/15/2025", "12/31/2025", ""], ["2025-01-15", "2025-12-31", ""], False),
    (["15/1/2025", "31/12/2025"], ["2025-01-15", "2025-12-31"], False),
    (["3/4/2025", "5/6/2025"], ["2025-03-04", "2025-05-06"], True),
    (["2025-01-15", "2025-02-01"], ["2025-01-15", "2025-02-01"], False),
    (["January 15, 2025", "March 1, 2026"], ["2025-01-15", "2026-03-01"], False),
    (["15.01.2025", "01.02.2025"], ["2025-01-15", "2025-02-01"], False),
    (["1/15/2025 10:00:00 AM"], ["2025-01-15"], False),
])
def test_parse_formatted_dates(values, iso, ambiguous):
    out, notes = parse_formatted(pd.DataFrame({"close_date": values}, dtype=str), None)
    assert out["close_date"].tolist() == iso
    assert bool(notes) == ambiguous and all("set date_format" in n for n in notes)


def test_unreadable_dates_and_date_format_are_left_to_the_canonical_layer():
    frame = pd.DataFrame({"close_date": ["1/15/2025", "soon"]}, dtype=str)
    assert parse_formatted(frame, None)[0]["close_date"].tolist() == ["1/15/2025", "soon"]
    assert parse_formatted(frame, "%m/%d/%Y")[0]["close_date"].tolist() == ["1/15/2025", "soon"]


@pytest.mark.parametrize(("value", "wire", "alternatives"), [
    ("West", "West", ["West"]),
    (["East", "West"], "East,West", ["East", "West"]),
    (["Rock, Paper", "C:\\tmp"], "Rock\\, Paper,C:\\\\tmp", ["Rock, Paper", "C:\\tmp"]),
    ("Rock, Paper", "Rock\\, Paper", ["Rock, Paper"]),  # one value: its comma is escaped too
    ("C:\\tmp", "C:\\\\tmp", ["C:\\tmp"]),
    (True, "true", ["true"]),
    (2026, "2026", ["2026"]),
    (2026.0, "2026", ["2026"]),
    (date(2026, 3, 31), "2026-03-31", ["2026-03-31"]),
])
def test_filter_values_round_trip_through_the_fakes_reading(value, wire, alternatives):
    assert filter_value(value) == wire
    assert split_vf_value(wire) == alternatives


def test_csv_request_options_builds_tsc_params():
    opts = csv_request_options({"Region": ["East", "West"], "vf_Stage": "Won", "Parameters.Currency": "USD",
                                "vf_Parameters.Year": 2026}, 30)
    assert opts.get_query_params() == {"maxAge": 30, "vf_Region": "East,West", "vf_Stage": "Won",
                                       "vf_Parameters.Currency": "USD", "vf_Parameters.Year": "2026"}
    assert "maxAge" not in csv_request_options({}, None).get_query_params()


@pytest.mark.parametrize(("text", "seconds"), [
    ("Too many requests for 'api.rest.refresh_extracts'. Please retry after 29 minutes.", 1740.0),
    ("Please retry after 45 seconds", 45.0),
    ("retry after 1 hour", 3600.0),
    ("Too many requests", None),
])
def test_retry_after_text(text, seconds):
    assert retry_after_text(text) == seconds


# ----------------------------------------------------------------------------- config


def test_example_config_loads(tmp_path):
    env = {"TABLEAU_PAT_NAME": "etl-bot", "TABLEAU_PAT_SECRET": "secret-3", "TABLEAU_VDS_PAT_NAME": "vds-bot",
           "TABLEAU_VDS_PAT_SECRET": "secret-4"}
    loaded = load_config(EXAMPLE, env=env)
    view, ds = loaded.config.sources
    assert (view.type, view.mode, view.view, view.max_age, view.site) == (
        "tableau", "view", "Sales Pipeline/Opportunities", 60, "SalesOps")
    assert csv_request_options(view.filters, view.max_age).get_query_params() == {
        "maxAge": 60, "vf_Region": "East,West", "vf_Fiscal Year": "2026", "vf_Parameters.Currency": "USD"}
    assert view.columns["Opportunity ID"] == "opportunity_id" and view.raw_sheet == "Tableau export"
    assert ds.mode == "datasource" and ds.token_name == "vds-bot"
    assert vds_query(ds)["query"]["filters"][0] == {"field": {"fieldCaption": "Region"}, "filterType": "SET",
                                                    "values": ["East", "West"], "exclude": False}
    assert set(loaded.secrets) >= {"secret-3", "secret-4"}


BASE = {"type": "tableau", "name": "t", "server_url": "https://tableau.example.com", "token_name": "n",
        "token_secret": "s"}


@pytest.mark.parametrize(("over", "message"), [
    ({}, "mode 'view' needs 'view'"),
    ({"view": "Opportunities"}, "neither a view id"),
    ({"view": "W/V", "columns": {"Amt": "amount_usd"}}, "amount_usd is not a canonical field"),
    ({"mode": "datasource"}, "needs 'datasource_luid'"),
    ({"mode": "datasource", "datasource_luid": "x"}, "needs 'fields'"),
    ({"mode": "datasource", "datasource_luid": "x", "fields": [{"function": "SUM"}]}, r"fields\[0\] needs 'fieldCaption'"),
    ({"view": "W/V", "max_age": 500}, "less than or equal to 240"),
])
def test_config_errors_name_the_key(over, message):
    with pytest.raises(ValidationError, match=message):
        TableauSourceConfig.model_validate({**BASE, **over})


# ----------------------------------------------------------------------------- the fake's own rules


@pytest.fixture
def fake_srv(tmp_path):
    fake = FakeTableau()
    for i in range(3):
        fake.add_view(f"9f1c2d3e-4b5a-4c6d-8e7f-00000000000{i}", "Sales Pipeline", f"View {i}", opportunities_csv(2))
    with FakeServer(fake, tmp_path) as srv:
        yield fake, srv


def _sign_in_json(srv: FakeServer, secret: str = "pat-secret-1") -> requests.Response:
    body = {"credentials": {"personalAccessTokenName": "etl-bot", "personalAccessTokenSecret": secret,
                            "site": {"contentUrl": "Samples"}}}
    return requests.post(f"{srv.url}/api/3.24/auth/signin", json=body, verify=srv.ca_path,
                         headers={"Accept": "application/json"}, timeout=10)


def test_fake_json_sign_in_and_one_session_per_token(fake_srv):
    fake, srv = fake_srv
    first = _sign_in_json(srv).json()["credentials"]
    assert first["site"] == {"id": "6b7179ba-b82b-4f0f-91ed-812074ac5da6", "contentUrl": "Samples"}
    views = f"{srv.url}/api/3.24/sites/{first['site']['id']}/views"
    ok = requests.get(views, headers={"X-Tableau-Auth": first["token"]}, verify=srv.ca_path, timeout=10)
    assert ok.status_code == 200 and b'totalAvailable="3"' in ok.content
    second = _sign_in_json(srv).json()["credentials"]
    old = requests.get(views, headers={"X-Tableau-Auth": first["token"], "Accept": "application/json"},
                       verify=srv.ca_path, timeout=10)
    assert old.status_code == 401 and old.json()["error"]["code"] == "401002"
    new = requests.get(views, headers={"X-Tableau-Auth": second["token"]}, verify=srv.ca_path, timeout=10)
    assert new.status_code == 200
    bad = _sign_in_json(srv, "nope")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "401001"


def test_fake_xml_errors_and_page_limit(fake_srv):
    fake, srv = fake_srv
    xml = ('<tsRequest><credentials personalAccessTokenName="etl-bot" personalAccessTokenSecret="bad">'
           '<site contentUrl="Samples"/></credentials></tsRequest>')
    bad = requests.post(f"{srv.url}/api/3.24/auth/signin", data=xml, verify=srv.ca_path, timeout=10)
    assert bad.status_code == 401 and b'<error code="401001"><summary>Signin Error</summary>' in bad.content
    token = _sign_in_json(srv).json()["credentials"]["token"]
    site = "6b7179ba-b82b-4f0f-91ed-812074ac5da6"
    r = requests.get(f"{srv.url}/api/3.24/sites/{site}/views?pageSize=1001", headers={"X-Tableau-Auth": token},
                     verify=srv.ca_path, timeout=10)
    assert r.status_code == 400 and b'code="400006"' in r.content
    r = requests.get(f"{srv.url}/api/3.24/sites/{site}/views", verify=srv.ca_path, timeout=10)
    assert r.status_code == 401 and b'code="401000"' in r.content


@pytest.mark.parametrize(("name", "ok"), [
    ("Opportunities", True), ("Pipeline (EMEA) - Q1", True), ("", False), ("A, B", False), ("A & B", False),
    ("Q1: Pipeline", False), ("Open [all]", False), ("]", False),
])
def test_name_filterable(name, ok):
    assert name_filterable(name) is ok


def _views(srv: FakeServer, token: str, **params: str) -> requests.Response:
    site = "6b7179ba-b82b-4f0f-91ed-812074ac5da6"
    return requests.get(f"{srv.url}/api/3.24/sites/{site}/views", params=params, headers={"X-Tableau-Auth": token},
                        verify=srv.ca_path, timeout=10)


@pytest.mark.parametrize(("expr", "status", "names"), [
    ("name:eq:Overview", 200, ["Overview"]),
    ("name:in:[Overview,Product]", 200, ["Overview", "Product"]),
    ("name:eq:Q1: Pipeline", 400, None),  # ':' has no escape
    ("name:eq:Open [all]", 400, None),  # brackets delimit `in` lists
    ("name:eq:A & B", 400, None),  # '&' separates expressions, encoded or not
    ("name:eq:Rock, Paper", 400, None),  # so does ','
])
def test_fake_reads_the_documented_filter_grammar(fake_srv, expr, status, names):
    fake, srv = fake_srv
    for i, name in enumerate(("Overview", "Product", "Overview by Region")):  # beside View 0..2
        fake.add_view(f"4d2e6c1a-7b3f-4e8d-9a0b-10000000000{i}", "Superstore", name, opportunities_csv(2))
    token = _sign_in_json(srv).json()["credentials"]["token"]
    r = _views(srv, token, filter=expr)
    assert r.status_code == status
    if names is not None:
        got = re.findall(r'<view id="[^"]+" name="([^"]+)"', r.text)
        assert sorted(set(got)) == names


def _vds(srv: FakeServer, token: str, query: dict, luid: str = "ds-1") -> requests.Response:
    return requests.post(f"{srv.url}/api/v1/vizql-data-service/query-datasource", verify=srv.ca_path, timeout=10,
                         json={"datasource": {"datasourceLuid": luid}, "query": query},
                         headers={"X-Tableau-Auth": token, "Accept": "application/json"})


ROWS = [{"Id": f"O-{i}", "Region": ["East", "West"][i % 2], "Amount": 100.0 * i, "Close": f"2025-0{i}-01",
         "Seen": f"2025-0{i}-01T10:00:00Z"} for i in range(1, 7)]
F = {"fieldCaption": "Id"}


@pytest.mark.parametrize(("filters", "status", "code", "ids"), [
    ([{"field": {"fieldCaption": "Close"}, "filterType": "SET", "values": ["2025-02-01"]}], 400, "400803", None),
    ([{"field": {"fieldCaption": "Seen"}, "filterType": "SET", "values": ["2025-02-01T10:00:00Z"]}], 400, "400803", None),
    ([{"field": {"fieldCaption": "Close"}, "filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "RANGE",
       "minDate": "2025-02-01", "maxDate": "2025-04-01"}], 200, None, ["O-2", "O-3", "O-4"]),
    ([{"field": {"fieldCaption": "Seen"}, "filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "MIN",
       "minDate": "2025-05-01"}], 200, None, ["O-5", "O-6"]),
    ([{"field": {"fieldCaption": "Close"}, "filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "RANGE",
       "minDate": "2025-02-01"}], 400, "400802", None),  # RANGE needs both ends
    ([{"field": {"fieldCaption": "Region"}, "filterType": "QUANTITATIVE_DATE", "quantitativeFilterType": "MAX",
       "maxDate": "2025-02-01"}], 400, "400803", None),  # not a date field
    ([{"field": {"fieldCaption": "Amount"}, "filterType": "QUANTITATIVE_NUMERICAL", "quantitativeFilterType": "RANGE",
       "min": 150, "max": 450}], 200, None, ["O-2", "O-3", "O-4"]),
    ([{"field": {"fieldCaption": "Region"}, "filterType": "MATCH", "startsWith": "E"}], 200, None, ["O-2", "O-4", "O-6"]),
    ([{"field": {"fieldCaption": "Region"}, "filterType": "SET", "values": ["West"]},
      {"field": {"fieldCaption": "Region"}, "filterType": "SET", "values": ["East"]}], 400, "400803", None),
    ([{"field": {"fieldCaption": "Amount", "function": "SUM"}, "filterType": "SET", "values": [100.0]}], 400, "400803",
     None),
    ([{"field": {"fieldCaption": "Region"}, "filterType": "BETWEEN"}], 400, "400802", None),
    ([{"field": {"fieldCaption": "Owner"}, "filterType": "SET", "values": ["x"]}], 404, "404934", None),
])
def test_fake_vds_filters_follow_the_schema_and_limitations(fake_srv, filters, status, code, ids):
    fake, srv = fake_srv
    fake.datasources["ds-1"] = FakeDatasource(ROWS)
    token = _sign_in_json(srv).json()["credentials"]["token"]
    r = _vds(srv, token, {"fields": [F], "filters": filters})
    assert r.status_code == status
    if code is not None:
        assert r.json()["errorCode"] == code
    if ids is not None:
        assert [row["Id"] for row in r.json()["data"]] == ids


def test_fake_vds_metadata_types_and_codes(fake_srv):
    fake, srv = fake_srv
    fake.datasources["ds-1"] = FakeDatasource(ROWS, types={"Id": "STRING"})
    token = _sign_in_json(srv).json()["credentials"]["token"]
    meta = requests.post(f"{srv.url}/api/v1/vizql-data-service/read-metadata", verify=srv.ca_path, timeout=10,
                         json={"datasource": {"datasourceLuid": "ds-1"}}, headers={"X-Tableau-Auth": token}).json()
    assert {f["fieldCaption"]: f["dataType"] for f in meta["data"]} == {
        "Id": "STRING", "Region": "STRING", "Amount": "REAL", "Close": "DATE", "Seen": "DATETIME"}
    assert _vds(srv, "not-a-session", {"fields": [F]}).json()["errorCode"] == "401002"
    fake.datasources["ds-1"].api_access = False
    assert _vds(srv, token, {"fields": [F]}).json()["errorCode"] == "403800"
