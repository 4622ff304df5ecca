"""Forecast categories and exchange rates from the CRM fakes (Salesforce ForecastCategoryName and
DatedConversionRate; HubSpot hs_manual_forecast_category and its currencies API) through the
flow, and forecast categories from the stage config; hand-computed to the cent."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import pytest
import yaml

from config.loader import load_config
from connectors.errors import FatalAPIError
from connectors.state.db import make_engine
from connectors.state.source_rates import load_rates
from flows.pipeline import run_pipeline
from tests.analytics_support import make_cfg
from tests.fakes.hubspot import TOKEN, demo_server
from tests.fakes.salesforce import oid, run, running_fake
from transforms.analytics import build_analytics
from transforms.canonical import canonicalize

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def sheet(path: str, name: str) -> pd.DataFrame:
    ws = openpyxl.load_workbook(path, read_only=True)[name]
    rows = list(ws.iter_rows(values_only=True))
    return pd.DataFrame(rows[1:], columns=rows[0])


def metric(path: str, name: str, scope: str = "team", key: str = "all") -> Any:
    m = sheet(path, "Metrics")
    hit = m[(m["metric"] == name) & (m["scope"] == scope) & (m["key"] == key)]
    assert len(hit) == 1, (name, scope, key)
    return hit["value"].iloc[0]


def cents(value: float) -> object:
    return pytest.approx(value, abs=0.005)


# ----------------------------------------------------------------------------- Salesforce


def salesforce_org(sf) -> None:
    """Multi-currency with advanced currency management. ConversionRate = units per 1 USD (corporate):
    EUR 0.8 (1.25 USD) until 2025-04-24, 0.625 (1.60 USD) from 2025-04-25; GBP 0.5 (2 USD)."""
    sf.multi_currency = sf.advanced_currency = True
    sf.currency_types = [
        {"Id": "02c1", "IsoCode": "USD", "ConversionRate": 1.0, "IsCorporate": True, "IsActive": True},
        {"Id": "02c2", "IsoCode": "EUR", "ConversionRate": 0.625, "IsCorporate": False, "IsActive": True},
        {"Id": "02c3", "IsoCode": "GBP", "ConversionRate": 0.5, "IsCorporate": False, "IsActive": True},
    ]
    sf.dated_rates = [
        {"IsoCode": "USD", "ConversionRate": 1.0, "StartDate": "0001-01-01"},
        {"IsoCode": "EUR", "ConversionRate": 0.8, "StartDate": "2025-01-01"},
        {"IsoCode": "EUR", "ConversionRate": 0.625, "StartDate": "2025-04-25"},
        {"IsoCode": "GBP", "ConversionRate": 0.5, "StartDate": "2025-01-01"},
    ]
    opp = sf.opportunities
    opp[oid(1)].update(CurrencyIsoCode="EUR", ForecastCategoryName="Commit")  # 12500 EUR, open, closes 06-30
    opp[oid(2)].update(CurrencyIsoCode="GBP", ForecastCategoryName="Pipeline")  # 8000 GBP, closes 07-15
    opp[oid(3)].update(CurrencyIsoCode="EUR")  # won 4000 EUR on 2025-04-20: 1.25
    opp[oid(4)].update(CurrencyIsoCode="USD")
    opp[oid(5)].update(CurrencyIsoCode="USD", ForecastCategoryName="Best Case", CloseDate="2025-06-15")


def salesforce_config(sf, tmp_path: Path, **source: Any) -> Path:
    cfg = yaml.safe_load((EXAMPLES / "salesforce.yaml").read_text())
    src = cfg["sources"][0]
    src.update(domain=sf.server.url, ca_bundle=sf.server.ca_path, next_step_field="Next_Step_Date__c", **source)
    del src["where"]
    cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    path = tmp_path / "salesforce.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_salesforce_dated_rates_and_forecast_categories(tmp_path: Path) -> None:
    with running_fake(tmp_path) as sf:
        salesforce_org(sf)
        path = salesforce_config(sf, tmp_path, currency_rates="dated")
        loaded = load_config(path, env={"SF_CLIENT_ID": sf.client_id, "SF_CLIENT_SECRET": sf.client_secret})
        result = run_pipeline(path, date(2025, 5, 2), loaded=loaded)
        soql = [q for _, q in sf.queries]
    assert any("FROM DatedConversionRate" in q for q in soql) and any("CurrencyIsoCode" in q for q in soql)
    book = result.outputs[0]
    opps = sheet(book, "Opportunities").set_index("opportunity_id")
    assert opps.loc[oid(1), ["amount", "original_amount", "original_currency", "fx_rate"]].tolist() == [
        20000.0, 12500.0, "EUR", 1.6]  # open: as_of's EUR rate (1 / 0.625)
    assert opps.loc[oid(3), ["amount", "fx_rate"]].tolist() == [5000.0, 1.25]  # won 04-20: 1 / 0.8
    assert opps.loc[oid(3), "fx_rate_date"].date() == date(2025, 4, 20)
    assert opps.loc[oid(2), "amount"] == 16000.0
    assert opps["forecast_category"].to_dict() == {oid(1): "commit", oid(2): "pipeline", oid(3): "closed",
                                                   oid(4): "closed", oid(5): "best_case"}
    # 2025-Q2: won 5000; commit opp1 20000; best case opp5 20000; opp2 closes in July
    assert metric(book, "won_value") == cents(5000.00)
    assert metric(book, "commit_value") == cents(20000.00)
    assert metric(book, "best_case_value") == cents(20000.00)
    assert metric(book, "pipeline_value") == cents(0.00)
    assert metric(book, "forecast_commit") == cents(25000.00)
    assert metric(book, "forecast_best_case") == cents(45000.00)
    assert metric(book, "forecast_best_case", "owner", "Dana Lee") == cents(40000.00)
    assert metric(book, "forecast_commit", "owner", "Sam Roe") == cents(5000.00)
    about = sheet(book, "About")
    assert "EUR -> USD: 1.25 from 2025-01-01, 1.6 from 2025-04-25 (Salesforce DatedConversionRate)" in \
        set(about["value"])
    summary = [c for row in openpyxl.load_workbook(book, read_only=True)["Summary"].iter_rows(values_only=True)
               for c in row if c is not None]
    assert "Forecast for 2025-Q2 (deals closing 2025-04-01 to 2025-06-30)" in summary
    stored = load_rates(make_engine("sqlite:///" + str(tmp_path / ".state" / "pipeline-sync.db")), "salesforce_main")
    assert stored is not None and stored.base == "USD" and ("EUR", date(2025, 4, 25), 1.6) in stored.rates


def test_salesforce_static_rates_from_currency_type(tmp_path: Path) -> None:
    with running_fake(tmp_path) as sf:
        salesforce_org(sf)
        sf.advanced_currency = False
        out = run(sf, currency_rates="static")
    assert out.rates.base == "USD" and out.rates.origin == "Salesforce CurrencyType"
    assert sorted(out.rates.rates) == [("EUR", None, 1.6), ("GBP", None, 2.0), ("USD", None, 1.0)]
    assert out.records.set_index("opportunity_id").loc[oid(1), "currency"] == "EUR"


def test_salesforce_dated_rates_without_advanced_currency_management(tmp_path: Path) -> None:
    with running_fake(tmp_path) as sf:
        salesforce_org(sf)
        sf.advanced_currency = False
        with pytest.raises(FatalAPIError, match=r"currency_rates: dated needs advanced currency management"):
            run(sf, currency_rates="dated")


def test_salesforce_single_currency_org_reads_no_currency(tmp_path: Path) -> None:
    with running_fake(tmp_path) as sf:
        out = run(sf)
        assert not any("Currency" in q for _, q in sf.queries)
    assert out.rates is None and "currency" not in out.records.columns
    assert out.records.set_index("opportunity_id")["forecast_category"].to_dict() == {
        oid(1): "Pipeline", oid(2): "Pipeline", oid(3): "Closed", oid(4): "Omitted", oid(5): "Pipeline"}


# ----------------------------------------------------------------------------- HubSpot


def test_hubspot_exchange_rates_and_forecast_categories(tmp_path: Path) -> None:
    """as_of 2026-11-27 (2026-Q4: 10-01..12-31). EUR->USD 1.1 from 2026-01-01, 1.2 from 2026-10-20,
    1.3 from 2026-11-20 (company currency USD)."""
    with demo_server(tmp_path) as (hub, srv):
        hub.exchange_rates = [
            {"fromCurrencyCode": "EUR", "conversionRate": 1.1, "effectiveAt": "2026-01-01T12:00:00Z"},
            {"fromCurrencyCode": "EUR", "conversionRate": 1.2, "effectiveAt": "2026-10-20T12:00:00Z"},
            {"fromCurrencyCode": "EUR", "conversionRate": 1.3, "effectiveAt": "2026-11-20T12:00:00Z"},
        ]
        d = hub.deals
        d["101"]["properties"].update(deal_currency_code="EUR", closedate="2026-12-15T12:00:00Z",
                                      hs_manual_forecast_category="COMMIT")  # open 12500 EUR: 1.3
        d["102"]["properties"].update(deal_currency_code="EUR")  # won 8000.50 EUR on 2026-10-15: 1.1
        d["105"]["properties"].update(closedate="2026-12-20T12:00:00Z", hs_manual_forecast_category="BEST_CASE")
        d["201"]["properties"].update(closedate="2026-12-01T12:00:00Z", hs_manual_forecast_category="OMIT")
        cfg = yaml.safe_load((EXAMPLES / "hubspot.yaml").read_text())
        cfg["sources"][0].update(base_url=srv.url, ca_bundle=srv.ca_path, exchange_rates=True)
        cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
        path = tmp_path / "hubspot.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        result = run_pipeline(path, date(2026, 11, 27), loaded=load_config(path, env={"HUBSPOT_TOKEN": TOKEN}))
        paths = {r.path for r in srv.requests}
    assert {"/settings/v3/currencies/company-currency", "/settings/v3/currencies/exchange-rates"} <= paths
    book = result.outputs[0]
    opps = sheet(book, "Opportunities").set_index("opportunity_id")
    assert opps.loc["101", ["amount", "fx_rate", "forecast_category"]].tolist() == [16250.0, 1.3, "commit"]
    assert opps.loc["102", ["amount", "fx_rate"]].tolist() == [pytest.approx(8800.55), 1.1]
    assert opps.loc["105", "forecast_category"] == "best_case"
    assert opps.loc["201", "forecast_category"] == "omitted"
    assert opps.loc["202", "forecast_category"] == "pipeline"  # no category, no close date
    # 2026-Q4: won 8800.55 (102) + 0 (103 won 09-01 is Q3); commit 16250 (101); best case 7000 (105)
    assert metric(book, "won_value") == cents(8800.55)
    assert metric(book, "commit_value") == cents(16250.00)
    assert metric(book, "best_case_value") == cents(7000.00)
    assert metric(book, "pipeline_value") == cents(0.00)  # the omitted deal counts in none
    assert metric(book, "forecast_commit") == cents(25050.55)
    assert metric(book, "forecast_best_case") == cents(32050.55)


# ----------------------------------------------------------------------------- stage config


def test_forecast_categories_from_the_stage_config_and_the_source() -> None:
    stages = [{"name": "Lead", "status": "open"}, {"name": "Proposal", "status": "open", "forecast_category": "best_case"},
              {"name": "Closing", "status": "open", "forecast_category": "commit"},
              {"name": "Won", "status": "won"}, {"name": "Lost", "status": "lost"}]
    cfg = make_cfg(pipeline={"stages": stages})
    rows = [  # id, stage, amount, close, source category
        ("A", "Lead", "100.10", "2026-06-01", ""),  # no category anywhere: pipeline
        ("B", "Proposal", "200.20", "2026-06-02", ""),  # its stage: best_case
        ("C", "Closing", "300.30", "2026-06-03", ""),  # its stage: commit
        ("D", "Closing", "400.40", "2026-06-04", "omitted"),  # the source wins over the stage
        ("E", "Lead", "500.50", "2026-06-05", "commit"),
        ("F", "Closing", "600.60", "2026-09-05", ""),  # closes after the quarter: in no forecast sum
        ("G", "Won", "700.70", "2026-05-05", "commit"),  # closed: closed
        ("H", "Proposal", "", "2026-06-06", ""),  # no amount: counted nowhere in the sums
    ]
    rec = pd.DataFrame([{"opportunity_id": i, "stage": s, "amount": a, "close_date": c, "forecast_category": f,
                         "created_date": "2026-04-01", "owner": "Ann"} for i, s, a, c, f in rows])
    res = canonicalize(rec, source="crm", stages=cfg.pipeline.stages, stage_map={}, tz=ZoneInfo("UTC"))
    a = build_analytics(res.loaded, None, cfg, date(2026, 6, 10))
    assert a.opportunities.set_index("opportunity_id")["forecast_category"].to_dict() == {
        "A": "pipeline", "B": "best_case", "C": "commit", "D": "omitted", "E": "commit", "F": "commit",
        "G": "closed", "H": "best_case"}
    m = a.metrics.set_index(["metric", "scope", "key"])["value"]
    assert m["commit_value", "team", "all"] == cents(300.30 + 500.50)
    assert m["best_case_value", "team", "all"] == cents(200.20)
    assert m["pipeline_value", "team", "all"] == cents(100.10)
    assert m["forecast_commit", "team", "all"] == cents(700.70 + 800.80)
    assert m["forecast_best_case", "owner", "Ann"] == cents(700.70 + 800.80 + 200.20)


@pytest.mark.parametrize(("value", "canonical"), [
    ("Pipeline", "pipeline"), ("Best Case", "best_case"), ("BEST_CASE", "best_case"), ("Commit", "commit"),
    ("Omitted", "omitted"), ("OMIT", "omitted"), ("Most Likely", "best_case"), ("Forecast", "commit"),
])
def test_source_values_map_to_the_canonical_categories(value: str, canonical: str) -> None:
    rec = pd.DataFrame([{"opportunity_id": "A", "stage": "Proposal", "created_date": "2026-04-01",
                         "forecast_category": value}])
    res = canonicalize(rec, source="s", stages=make_cfg().pipeline.stages, stage_map={}, tz=ZoneInfo("UTC"))
    assert res.loaded["forecast_category"].tolist() == [canonical]


def test_an_unknown_forecast_category_rejects_the_row() -> None:
    rec = pd.DataFrame([{"opportunity_id": "A", "stage": "Proposal", "created_date": "2026-04-01",
                         "forecast_category": "Maybe"}, {"opportunity_id": "B", "stage": "Proposal",
                                                          "created_date": "2026-04-01"}])
    rec["_row"] = [2, 3]
    res = canonicalize(rec, source="s", stages=make_cfg().pipeline.stages, stage_map={}, tz=ZoneInfo("UTC"))
    assert res.rejected[["row", "reason"]].values.tolist() == [
        [2, "forecast_category 'Maybe' is not pipeline, best case, commit, omitted or closed"]]
    assert res.loaded["opportunity_id"].tolist() == ["B"]


def test_no_forecast_categories_anywhere_shows_no_forecast() -> None:
    cfg = make_cfg()
    rec = pd.DataFrame([{"opportunity_id": "A", "stage": "Proposal", "created_date": "2026-04-01", "amount": "5"}])
    res = canonicalize(rec, source="s", stages=cfg.pipeline.stages, stage_map={}, tz=ZoneInfo("UTC"))
    a = build_analytics(res.loaded, None, cfg, date(2026, 6, 10))
    assert not a.metrics["metric"].isin(["commit_value", "forecast_commit"]).any() and not a.summary.blocks
