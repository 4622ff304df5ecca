"""Dated currency rates (docs/metrics.md "Currencies"), by hand: a three-currency org whose rates
change inside the period; closed deals at their close date's rate, open deals at as_of's."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import openpyxl
import pandas as pd
import pytest
import yaml

from config.loader import ConfigError, load_config
from config.models.finance import SourceRates
from tests.analytics_support import make_cfg
from transforms.analytics import build_analytics
from transforms.canonical import canonicalize
from transforms.currency import rate_table

D = date.fromisoformat
AS_OF = D("2026-06-10")  # 2026-Q2: 2026-04-01 to 2026-06-30
RATES = {"EUR": [{"from": "2026-01-01", "rate": 1.10}, {"from": "2026-05-15", "rate": 1.20}],
         "GBP": [{"from": "2026-01-01", "rate": 1.25}, {"from": "2026-05-20", "rate": 1.3125}]}
ROWS = [  # (id, stage, amount, currency, close_date, owner, forecast_category)
    ("W1", "Won", "1000.10", "EUR", "2026-05-14", "Ann", ""),  # before EUR's change: 1.10 -> 1100.11
    ("W2", "Won", "2000", "EUR", "2026-05-15", "Ann", ""),  # on the change: 1.20 -> 2400.00
    ("W3", "Won", "500", "GBP", "2026-05-19", "Bo", ""),  # before GBP's change: 1.25 -> 625.00
    ("W4", "Won", "300.55", "USD", "2026-04-02", "Bo", ""),  # reporting currency: 300.55
    ("O1", "Proposal", "1000", "EUR", "2026-06-25", "Ann", "Commit"),  # open: as_of's 1.20 -> 1200.00
    ("O2", "Proposal", "800.40", "GBP", "2026-06-20", "Bo", "Best Case"),  # 1.3125 -> 1050.525
    ("O3", "Contact", "700", "", "2026-06-30", "Bo", ""),  # no currency: the reporting one
    ("O4", "Closing", "100", "GBP", "2026-07-15", "Ann", "COMMIT"),  # outside the period: 131.25
    ("L1", "Lost", "400", "EUR", "2026-05-01", "Ann", ""),  # lost before the change: 440.00
    ("X1", "Won", "400", "EUR", "2025-12-01", "Ann", ""),  # before EUR's first rate: rejected
    ("X2", "Proposal", "90", "JPY", "2026-12-01", "Ann", ""),  # no JPY rate at all: rejected
]


def records(rows=ROWS) -> pd.DataFrame:
    frame = pd.DataFrame([{"opportunity_id": i, "stage": s, "amount": a, "currency": c, "close_date": cd,
                           "owner": o, "forecast_category": fc, "created_date": "2026-03-01"}
                          for i, s, a, c, cd, o, fc in rows])
    frame["_row"] = range(2, len(frame) + 2)
    return frame


def validated(cfg, as_of=AS_OF):
    return canonicalize(records(), source="crm", stages=cfg.pipeline.stages, stage_map={}, tz=ZoneInfo("UTC"),
                        reporting_currency=cfg.inputs.currency, rates=rate_table("USD", cfg.inputs.rates), as_of=as_of)


@pytest.fixture()
def cfg():
    return make_cfg(inputs={"currency": "USD", "rates": RATES})


def test_rows_convert_at_their_rate_date_and_keep_the_original(cfg) -> None:
    res = validated(cfg)
    assert list(res.rejected["reason"]) == [
        "currency 'EUR' has no rate to USD on 2025-12-01 (its rates start 2026-01-01; add an earlier rate to inputs.rates)",
        "currency 'JPY' has no rate to USD on 2026-06-10 (add it to inputs.rates)",
    ]
    assert list(res.rejected["row"]) == [11, 12]
    got = res.loaded.set_index("opportunity_id")
    expected = {  # amount, original_amount, original_currency, fx_rate, fx_rate_date
        "W1": (1100.11, 1000.10, "EUR", 1.10, "2026-05-14"), "W2": (2400.00, 2000.0, "EUR", 1.20, "2026-05-15"),
        "W3": (625.00, 500.0, "GBP", 1.25, "2026-05-19"), "W4": (300.55, 300.55, "USD", 1.0, None),
        "O1": (1200.00, 1000.0, "EUR", 1.20, "2026-06-10"), "O2": (1050.525, 800.40, "GBP", 1.3125, "2026-06-10"),
        "O3": (700.00, 700.0, None, 1.0, None), "O4": (131.25, 100.0, "GBP", 1.3125, "2026-06-10"),
        "L1": (440.00, 400.0, "EUR", 1.10, "2026-05-01"),
    }
    for oid, (amount, original, cur, rate, day) in expected.items():
        row = got.loc[oid]
        assert row["amount"] == pytest.approx(amount, abs=0.005), oid
        assert (row["original_amount"], row["original_currency"], row["fx_rate"]) == (original, cur, rate), oid
        assert (pd.isna(row["fx_rate_date"]) if day is None else row["fx_rate_date"] == pd.Timestamp(day)), oid
        assert row["currency"] == "USD"


def cents(value: float) -> object:
    return pytest.approx(value, abs=0.005)


def test_metrics_to_the_cent(cfg) -> None:
    a = build_analytics(validated(cfg).loaded, None, cfg, AS_OF)
    m = a.metrics.set_index(["metric", "scope", "key"])["value"]
    # won: 1100.11 + 2400.00 + 625.00 + 300.55
    assert m["won_value", "team", "all"] == cents(4425.66)
    assert m["won_value", "owner", "Ann"] == cents(3500.11)
    assert m["lost_value", "team", "all"] == cents(440.00)
    # open: 1200.00 + 1050.525 + 700.00 + 131.25
    assert m["open_value", "team", "all"] == cents(3081.775)
    # forecast over the period's pipeline (close_date in 2026-Q2): O4 closes in July
    assert m["commit_value", "team", "all"] == cents(1200.00)
    assert m["best_case_value", "team", "all"] == cents(1050.525)
    assert m["pipeline_value", "team", "all"] == cents(700.00)
    assert m["forecast_commit", "team", "all"] == cents(5625.66)
    assert m["forecast_best_case", "team", "all"] == cents(6676.185)
    assert m["forecast_commit", "owner", "Ann"] == cents(4700.11)
    assert m["forecast_best_case", "owner", "Bo"] == cents(1976.075)  # 625 + 300.55 + 1050.525
    opp = a.opportunities.set_index("opportunity_id")
    assert list(opp.loc[["W1", "O1", "O2"], "fx_rate"]) == [1.10, 1.20, 1.3125]
    block = a.summary.blocks[0]
    assert block.title == "Forecast for 2026-Q2 (deals closing 2026-04-01 to 2026-06-30)"
    assert list(block.frame["metric"]) == ["commit_value", "best_case_value", "pipeline_value", "forecast_commit",
                                           "forecast_best_case"]


def test_an_earlier_as_of_converts_open_deals_at_that_days_rate(cfg) -> None:
    """The rows validated on 2026-06-10, looked at as of 2026-05-16 (a backfill date): W2 (won on 05-15)
    keeps 1.20; W3 (won 05-19) was open, at 05-16's GBP 1.25; O2 too."""
    a = build_analytics(validated(cfg).loaded, None, cfg, D("2026-05-16"))
    opp = a.opportunities.set_index("opportunity_id")
    assert opp.loc["W3", "status"] == "open" and opp.loc["W3", "amount"] == 625.00
    assert opp.loc["W3", "fx_rate_date"] == pd.Timestamp("2026-05-16")
    assert opp.loc["O2", "amount"] == pytest.approx(1000.50)  # 800.40 x 1.25
    assert opp.loc["O1", "amount"] == 1200.00  # EUR 1.20 from 05-15
    m = a.metrics.set_index(["metric", "scope", "key"])["value"]
    assert m["won_value", "team", "all"] == cents(1100.11 + 2400.00 + 300.55)
    # Summary 'previous_full' = all of 2026-Q1, as of 2026-03-31: every deal open then, at EUR 1.10 / GBP 1.25:
    # EUR (1000.10 + 2000 + 1000 + 400) x 1.10 + GBP (500 + 800.40 + 100) x 1.25 + 300.55 + 700
    kpis = a.summary.kpis.set_index("metric")
    assert kpis.loc["open_value", "previous_full"] == cents(4840.11 + 1750.50 + 1000.55)
    # 'previous' (like for like) = 2026-Q1 to 2026-02-15 (day 46 of each): no deal was created yet (03-01)
    assert kpis.loc["open_value", "previous"] == 0.0


def test_about_names_the_rates_and_the_rule(cfg) -> None:
    about = build_analytics(validated(cfg).loaded, None, cfg, AS_OF).about
    assert ("rate", "EUR -> USD: 1.1 from 2026-01-01, 1.2 from 2026-05-15 (inputs.rates)") in about
    assert ("rate", "GBP -> USD: 1.25 from 2026-01-01, 1.3125 from 2026-05-20 (inputs.rates)") in about
    assert dict(about)["currency"].startswith("amounts in USD; closed deals (won or lost at as_of) at the rate")


def test_definitions_name_the_rate_rule_rates_and_forecast(cfg) -> None:
    a = build_analytics(validated(cfg).loaded, None, cfg, AS_OF)
    d = next(s for s in a.sheets if s.name == "Definitions").frame.set_index("id")
    assert d.loc["fx_rate", "definition"].startswith("Amounts are in USD: closed deals (won or lost at as_of) at the "
                                                     "rate in force on their close_date, open deals at the rate of as_of")
    assert d.loc["fx_rate", "in_force"] == ("EUR -> USD: 1.1 from 2026-01-01, 1.2 from 2026-05-15 (inputs.rates); "
                                            "GBP -> USD: 1.25 from 2026-01-01, 1.3125 from 2026-05-20 (inputs.rates)")
    assert d.loc["calendar", "in_force"] == "calendar months, quarters and years"
    assert d.loc["period", "in_force"] == "2026-Q2: 2026-04-01 to 2026-06-10 (whole quarter to 2026-06-30)"
    assert d.loc["forecast_commit", "definition"] == "won_value + commit_value."
    assert d.loc["commit_value", "in_force"] == "deals closing 2026-04-01 to 2026-06-30 (2026-Q2)"


def test_summary_shows_the_forecast_in_words(cfg, tmp_path: Path) -> None:
    """The forecast block is a Summary table under the key numbers, labelled, written by the Summary writer."""
    from connectors.workbook.xlsx_writer import write_workbook

    a = build_analytics(validated(cfg).loaded, None, cfg, AS_OF)
    titles = [t.title for t in a.summary.tables]
    assert titles[:2] == ["Key numbers", "Forecast for 2026-Q2 (deals closing 2026-04-01 to 2026-06-30)"]
    table = a.summary.tables[1]
    shown = dict(zip(table.frame["Measure"], table.frame["All of 2026-Q2"], strict=True))
    assert shown == pytest.approx({"Commit": 1200.00, "Best case": 1050.525,
                                   "Pipeline (not yet commit or best case)": 700.00,
                                   "Forecast: won + commit": 5625.66,
                                   "Forecast: won + commit + best case": 6676.185}, abs=0.005)
    assert table.row_formats["All of 2026-Q2"] == ["currency_whole", "currency_whole", "currency", "currency_whole",
                                                   "currency_whole"]
    metrics = next(s for s in a.sheets if s.name == "Metrics").frame
    assert set(metrics.loc[metrics["metric"] == "forecast_commit", "label"]) == {"Forecast: won + commit"}
    out = tmp_path / "f.xlsx"
    write_workbook(out, sheets=a.sheets, summary=a.summary, currency="USD")
    rows = list(openpyxl.load_workbook(out, read_only=True)["Summary"].iter_rows(values_only=True))
    at = next(i for i, r in enumerate(rows) if r[0] == titles[1])
    commit = next(r for r in rows[at:] if r[0] == "Forecast: won + commit")
    assert commit[1] == pytest.approx(5625.66) and commit[2] == "Won revenue + Commit."


def test_rates_file_is_merged_and_checked(tmp_path: Path) -> None:
    (tmp_path / "rates.csv").write_text("currency,from,rate\nEUR,2026-05-15,1.2\nEUR,2026-01-01,1.1\nGBP,2026-01-01,1.25\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("sources: [{type: csv, name: a, path: x.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n"
                        "inputs: {rates: {CHF: 1.05}, rates_file: rates.csv}\n")
    rates = load_config(cfg_path).config.inputs.rates
    assert [(r.from_, r.rate) for r in rates["EUR"]] == [(D("2026-01-01"), 1.1), (D("2026-05-15"), 1.2)]
    assert rates["CHF"] == 1.05 and len(rates["GBP"]) == 1
    (tmp_path / "rates.csv").write_text("currency,from,rate\nEUR,2026-01-01,abc\n")
    with pytest.raises(ConfigError, match=r"inputs: rates_file: '.*rates.csv' line 2: 'abc' is not a number"):
        load_config(cfg_path)


def test_crm_rates_win_and_are_crossed_through_the_reporting_currency() -> None:
    """Salesforce-style rates against a USD corporate currency, reported in EUR: EUR->USD 1.25 from
    2026-01-01 then 1.10 from 2026-06-01; GBP->USD 1.5 (undated); so GBP->EUR 1.2, then 1.5/1.1."""
    src = SourceRates("USD", (("EUR", D("2026-01-01"), 1.25), ("EUR", D("2026-06-01"), 1.10), ("GBP", None, 1.5)),
                      "Salesforce DatedConversionRate")
    table = rate_table("EUR", {"GBP": 9.9, "CHF": 0.95}, src)
    cur = np.array(["GBP", "GBP", "USD", "CHF", "EUR"], dtype=object)
    days = np.array(["2026-03-01", "2026-06-01", "2026-03-01", "2026-03-01", "2026-03-01"], dtype="datetime64[D]")
    got = table.rates_on(cur, days)
    assert list(np.round(got, 6)) == [1.2, round(1.5 / 1.1, 6), 0.8, 0.95, 1.0]
    assert table.origin["GBP"] == "Salesforce DatedConversionRate, crossed through EUR"
    assert table.origin["CHF"] == "inputs.rates"


def test_backfill_dates_equal_direct_runs_with_dated_rates(tmp_path: Path) -> None:
    """A CSV in EUR and GBP backfilled at month ends: open deals take each date's rate, closed deals
    their close date's, and each date's metrics equal a direct run at that date."""
    from connectors.state.db import make_engine
    from connectors.state.snapshots import load_history
    from flows.backfill import backfill
    from flows.pipeline import run_pipeline

    (tmp_path / "deals.csv").write_text(
        "opportunity_id,stage,amount,currency,created_date,close_date\n"
        "A,Proposal,1000,EUR,2026-03-01,2026-09-30\n"  # open throughout
        "B,Won,2000,GBP,2026-03-01,2026-05-10\n"  # open on 04-30, won on 05-10 at GBP 1.25
        "C,Closing,500.50,USD,2026-03-01,2026-08-31\n")
    cfg = {"sources": [{"type": "csv", "name": "crm", "path": "deals.csv"}],
           "destinations": [{"type": "file", "path": "out/p-{as_of}.xlsx"}], "backfill": {"write_workbooks": False},
           "inputs": {"currency": "USD", "rates": {
               "EUR": [{"from": "2026-01-01", "rate": 1.1}, {"from": "2026-05-01", "rate": 1.15},
                       {"from": "2026-06-01", "rate": 1.2}],
               "GBP": [{"from": "2026-01-01", "rate": 1.25}, {"from": "2026-05-20", "rate": 1.4}]}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = backfill(path, D("2026-04-01"), D("2026-06-30"), "month")
    assert [o.status for o in result.outcomes] == ["done"] * 3
    engine = make_engine(f"sqlite:///{tmp_path / '.state' / 'pipeline-sync.db'}")
    got = {d: load_history(engine, "pipeline", d + pd.Timedelta(days=1).to_pytimedelta()).previous_metrics()
           for d in (D("2026-04-30"), D("2026-05-31"), D("2026-06-30"))}
    # 04-30: A 1000 x 1.10 + B (open) 2000 x 1.25 + C 500.50; 05-31: A x 1.15; 06-30: A x 1.20
    assert got[D("2026-04-30")]["open_value"] == cents(1100.00 + 2500.00 + 500.50)
    assert got[D("2026-05-31")]["open_value"] == cents(1150.00 + 500.50)
    assert got[D("2026-06-30")]["open_value"] == cents(1200.00 + 500.50)
    assert got[D("2026-05-31")]["won_value"] == cents(2500.00)  # won 05-10: GBP 1.25, not 05-31's 1.40
    direct = run_pipeline(path, D("2026-04-30"))
    book = openpyxl.load_workbook(direct.outputs[0], read_only=True)
    opps = {r[0]: r for r in book["Opportunities"].iter_rows(values_only=True)}
    header = opps["opportunity_id"]
    assert opps["B"][header.index("amount")] == 2500.0 and opps["B"][header.index("fx_rate")] == 1.25
