"""Issue 22 with issue 23: movement's W and the quota keys follow the configured (fiscal) calendar;
a recorded amount (field history) is in the deal's currency and converts like the deal; the Summary
shows the quota beside the forecast."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from connectors.state import snapshots as store
from connectors.state.db import make_engine
from tests.analytics_support import make_cfg, make_history, make_opps, metric
from transforms.analytics import build_analytics
from transforms.canonical import canonicalize
from transforms.currency import rate_table
from transforms.field_history import canonicalize_field_history

D = date.fromisoformat
# 4-4-5 from 2026-02-01: 2027-Q2 is 2026-05-03 .. 2026-08-01 (calendar Q2 would be 04-01 .. 06-30)
FISCAL = {"pattern": "4-4-5", "year_start": "2026-02-01"}
D0, D1 = D("2026-06-07"), D("2026-06-14")


def deal(i: str, amount: float, close: str, *, stage: str = "Contact", status: str | None = None) -> dict:
    return dict(opportunity_id=i, owner="ann", stage=stage, amount=amount, created_date="2026-03-01",
                close_date=close, status=status)


BEFORE = [deal("july", 1000, "2026-07-20"),  # in 2027-Q2, not in calendar Q2
          deal("april", 300, "2026-04-20", stage="Won", status="won"),  # won in 2027-Q1 (calendar Q2)
          deal("may", 700, "2026-05-10", stage="Won", status="won"),  # won in 2027-Q2
          deal("late", 400, "2026-08-10")]  # after 2027-Q2: pulled in by D1
AFTER = [deal("july", 1500, "2026-07-20"),
         deal("april", 300, "2026-04-20", stage="Won", status="won"),
         deal("may", 700, "2026-05-10", stage="Won", status="won"),
         deal("late", 400, "2026-07-31")]


@pytest.fixture(scope="module")
def fiscal_runs():
    cfg = make_cfg(fiscal_calendar=FISCAL, targets={"quota": {"2027-Q2": 4000, "2026-Q2": 1}})
    engine = make_engine("sqlite://")
    out = []
    for rows, as_of in ((BEFORE, D0), (AFTER, D1)):
        a = build_analytics(make_opps(rows), make_history([]), cfg, as_of,
                            snapshots=store.load_history(engine, cfg.report, as_of))
        with engine.begin() as conn:
            store.save_snapshot(conn, cfg.report, a.snapshot)
        out.append(a)
    return out


def test_movement_window_is_the_fiscal_quarter(fiscal_runs) -> None:
    m = fiscal_runs[1].movement
    assert m is not None and m.window == (D("2026-05-03"), D("2026-08-01"))
    assert (m.value("start"), m.value("end")) == (1000.0, 1900.0)  # july; july (increased) + late (pulled in)
    assert (m.deals("pulled_in"), m.value("increased")) == (1, 500.0)
    title = next(s for s in fiscal_runs[1].sheets if s.name == "Movement").form.cells[0].value
    assert title.startswith("Pipeline movement of 2027-Q2 (2026-05-03 to 2026-08-01)")


def test_quota_is_keyed_by_the_fiscal_label_and_counts_the_fiscal_quarter(fiscal_runs) -> None:
    a = fiscal_runs[1]
    assert metric(a.metrics, "quota") == 4000.0  # targets.quota['2027-Q2'], not '2026-Q2'
    assert metric(a.metrics, "won_value") == 700.0  # 'april' closed in 2027-Q1
    assert metric(a.metrics, "attainment") == pytest.approx(700 / 4000)
    assert metric(a.metrics, "period_pipeline_value") == 1900.0
    assert metric(a.metrics, "coverage") == pytest.approx(1900 / 3300)
    title = next(s for s in a.sheets if s.name == "Targets").form.cells[0].value
    assert title == "Quota, attainment and coverage: 2027-Q2 (2026-05-03 to 2026-08-01), as of 2026-06-14"


# ----------------------------------------------------------------------------- recorded amounts and rates

EUR_DATED = {"EUR": [{"from": "2026-01-01", "rate": 1.10}, {"from": "2026-05-15", "rate": 1.20}]}


def _validated(cfg, as_of: date) -> pd.DataFrame:
    records = pd.DataFrame([
        {"opportunity_id": "E1", "stage": "Proposal", "amount": "1000", "currency": "EUR", "close_date": "2026-06-25",
         "owner": "Ann", "created_date": "2026-03-01"},
        {"opportunity_id": "U1", "stage": "Proposal", "amount": "80", "currency": "USD", "close_date": "2026-06-25",
         "owner": "Ann", "created_date": "2026-03-01"}])
    records["_row"] = [2, 3]
    return canonicalize(records, source="crm", stages=cfg.pipeline.stages, stage_map={}, tz=ZoneInfo("UTC"),
                        reporting_currency="USD", rates=rate_table("USD", cfg.inputs.rates), as_of=as_of).loaded


def _history() -> pd.DataFrame:
    raw = pd.DataFrame({"opportunity_id": ["E1", "E1", "U1", "U1"], "field": ["amount"] * 4,
                        "changed_at": ["2026-03-01T09:00:00Z", "2026-05-20T09:00:00Z"] * 2,
                        "value": ["500", "1000", "50", "80"]})
    return canonicalize_field_history(raw, source="crm", tz=ZoneInfo("UTC"))


@pytest.mark.parametrize(("rates", "eur_amount"), [
    (EUR_DATED, 500 * 1.20),  # dated: as of 05-16, EUR 1.20 (from 05-15)
    ({"EUR": 1.10}, 500 * 1.10),  # one rate
])
def test_a_recorded_amount_is_in_the_deals_currency(rates: dict, eur_amount: float) -> None:
    """Validated on 06-10 (E1 EUR 1000, U1 USD 80); as of 05-16 the history has E1 at EUR 500 and U1 at 50."""
    cfg = make_cfg(inputs={"currency": "USD", "rates": rates})
    a = build_analytics(_validated(cfg, D("2026-06-10")), None, cfg, D("2026-05-16"), field_history=_history())
    opp = a.opportunities.set_index("opportunity_id")
    assert opp.loc["E1", "original_amount"] == 500.0 and opp.loc["E1", "original_currency"] == "EUR"
    assert opp.loc["E1", "amount"] == pytest.approx(eur_amount)
    assert (opp.loc["U1", "original_amount"], opp.loc["U1", "amount"]) == (50.0, 50.0)
    assert metric(a.metrics, "open_value") == pytest.approx(eur_amount + 50)
    # as of the day validated, the history changes nothing
    now = build_analytics(_validated(cfg, D("2026-06-10")), None, cfg, D("2026-06-10"), field_history=_history())
    assert metric(now.metrics, "open_value") == pytest.approx(1000 * (1.20 if rates is EUR_DATED else 1.10) + 80)


# ----------------------------------------------------------------------------- the Summary


def _summary_rows(forecast: bool) -> list[dict]:
    rows = [deal("w", 1000, "2026-05-10", stage="Won", status="won"), deal("o", 2000, "2026-06-20")]
    if forecast:
        rows[1]["forecast_category"] = "commit"
    return rows


@pytest.mark.parametrize("forecast", [True, False])
def test_the_summary_shows_the_quota_beside_the_forecast(forecast: bool) -> None:
    cfg = make_cfg(targets={"quota": {"2026-Q2": 4000}})
    a = build_analytics(make_opps(_summary_rows(forecast)), make_history([]), cfg, D("2026-06-01"))
    titles = [t.title for t in a.summary.tables]
    want = ("Forecast and quota for 2026-Q2 (deals closing 2026-04-01 to 2026-06-30)" if forecast
            else "Quota for 2026-Q2")
    assert titles[:2] == ["Key numbers", want]
    shown = dict(zip(a.summary.tables[1].frame["Measure"], a.summary.tables[1].frame["All of 2026-Q2"], strict=True))
    quota = {"Quota": 4000.0, "Quota attainment": 0.25, "Gap to quota": 3000.0,
             "Pipeline closing this period": 2000.0, "Pipeline coverage": 2000 / 3000}
    assert {k: shown[k] for k in quota} == pytest.approx(quota)
    assert ("Forecast: won + commit" in shown) is forecast
    if forecast:
        assert shown["Forecast: won + commit"] == 3000.0
        assert list(shown)[:5] == ["Commit", "Best case", "Pipeline (not yet commit or best case)",
                                   "Forecast: won + commit", "Forecast: won + commit + best case"]
    assert [b.title.split(" ")[0] for b in a.summary.blocks] == (["Forecast", "Quota"] if forecast else ["Quota"])


def test_no_quota_for_the_period_leaves_the_forecast_table_as_it_was() -> None:
    cfg = make_cfg(targets={"quota": {"2026-Q3": 4000}})
    a = build_analytics(make_opps(_summary_rows(True)), make_history([]), cfg, D("2026-06-01"))
    table = a.summary.tables[1]
    assert table.title == "Forecast for 2026-Q2 (deals closing 2026-04-01 to 2026-06-30)"
    assert "Quota" not in set(table.frame["Measure"]) and len(a.summary.blocks) == 1
