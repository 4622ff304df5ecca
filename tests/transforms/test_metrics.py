"""The metric catalogue: the article's worked examples and each definition's edges."""

from __future__ import annotations

import math

import pytest

from tests.analytics_support import make_cfg, metric, run

AS_OF = "2026-06-15"  # period 2026-Q2: 2026-04-01 .. 2026-06-15


def won(i: int, amount: float | None, created: str, close: str, **kw) -> dict:
    return dict(opportunity_id=f"W{i}", stage="Won", amount=amount, created_date=created, close_date=close, **kw)


# --- worked examples of the article -------------------------------------------------------


def test_article_average_deal_size_1000_over_10_deals_is_100() -> None:
    a = run([won(i, 100.0, "2026-04-01", "2026-05-01") for i in range(10)], AS_OF)
    assert metric(a.metrics, "won_value") == 1000.0
    assert metric(a.metrics, "won_deals") == 10
    assert metric(a.metrics, "avg_deal_size") == 100.0


def test_article_sales_cycle_60_days_over_10_deals_is_6() -> None:
    a = run([won(i, 50.0, "2026-05-01", "2026-05-07") for i in range(10)], AS_OF)
    assert metric(a.metrics, "avg_sales_cycle_days") == 6.0


def test_article_cac_10000_over_100_new_customers_is_100() -> None:
    rows = [won(i, 10.0, "2026-04-01", "2026-04-20", account_id=f"ACC{i}", deal_type="new") for i in range(100)]
    # an existing-customer deal and a second deal of a counted account do not add customers
    rows.append(won(100, 10.0, "2026-04-01", "2026-04-20", account_id="ACC0", deal_type="new"))
    rows.append(won(101, 10.0, "2026-04-01", "2026-04-20", account_id="OLD", deal_type="existing"))
    a = run(rows, AS_OF, make_cfg(inputs={"spend": {"2026-Q2": 10_000}}))
    assert metric(a.metrics, "cac") == 100.0


@pytest.mark.parametrize(("m1", "m2", "growth"), [(1000.0, 1500.0, 50.0), (2000.0, 1000.0, -50.0), (800.0, 800.0, 0.0)])
def test_article_revenue_growth_month_over_month(m1: float, m2: float, growth: float) -> None:
    a = run([won(1, m1, "2026-03-01", "2026-04-10"), won(2, m2, "2026-03-01", "2026-05-20")], AS_OF)
    # as_of 2026-06-15: the latest complete month is May, compared with April
    assert metric(a.metrics, "revenue_growth_pct") == pytest.approx(growth)


@pytest.mark.parametrize(("window", "total"), [(30, 7_500.0), (180, 45_000.0)])
def test_article_lead_gen_250_per_day(window: int, total: float) -> None:
    # $250/day kept for `window` days is `total` of new pipeline: lead_gen_per_day = total / window = 250
    rows = [dict(opportunity_id=f"N{i}", stage="Lead generation", amount=total / 3, created_date=c)
            for i, c in enumerate(["2026-06-15", "2026-06-01", "2026-05-17" if window == 30 else "2026-01-01"])]
    a = run(rows, AS_OF, make_cfg(targets={"prospecting_window_days": window}))
    assert metric(a.metrics, "lead_gen_per_day") == pytest.approx(250.0)
    assert not any(a.flags["check"] == "low_lead_gen")


# --- definitions -------------------------------------------------------------------------


def test_lead_gen_window_is_exclusive_at_start_inclusive_at_as_of() -> None:
    # window 30 ending 2026-06-15: created_date in (2026-05-16, 2026-06-15]
    rows = [dict(opportunity_id="in_last", stage="Contact", amount=300, created_date="2026-06-15"),
            dict(opportunity_id="in_first", stage="Contact", amount=600, created_date="2026-05-17"),
            dict(opportunity_id="out", stage="Contact", amount=9000, created_date="2026-05-16"),
            dict(opportunity_id="lost_in", stage="Lost", amount=90, created_date="2026-06-01", close_date="2026-06-02")]
    a = run(rows, AS_OF)
    assert metric(a.metrics, "lead_gen_per_day") == pytest.approx((300 + 600 + 90) / 30)


def test_status_as_of_and_period_sums() -> None:
    rows = [
        dict(opportunity_id="o1", stage="Proposal", amount=1000, created_date="2026-01-10", close_date="2026-07-01"),
        dict(opportunity_id="o2", stage="Closing", amount=None, created_date="2026-04-01", close_date="2026-07-01"),
        won(1, 400, "2026-02-01", "2026-04-01"),   # first day of the period: counted
        won(2, 600, "2026-02-01", "2026-03-31"),   # day before: not in the period, not open
        won(3, 700, "2026-02-01", "2026-06-16"),   # closes after as_of: open at as_of
        dict(opportunity_id="l1", stage="Lost", amount=200, created_date="2026-04-05", close_date="2026-06-15"),
        dict(opportunity_id="future", stage="Contact", amount=5, created_date="2026-06-16"),
    ]
    a = run(rows, AS_OF)
    m = a.metrics
    assert a.excluded_future == 1
    assert metric(m, "open_deals") == 3  # o1, o2, W3
    assert metric(m, "open_value") == 1700.0  # missing amount left out of the sum
    assert metric(m, "won_deals") == 1 and metric(m, "won_value") == 400.0
    assert metric(m, "lost_deals") == 1 and metric(m, "lost_value") == 200.0
    assert metric(m, "new_deals") == 2 and metric(m, "new_value") == 200.0  # o2 (no amount) + l1
    assert metric(m, "win_rate") == 0.5
    assert metric(m, "avg_sales_cycle_days") == (pd_days("2026-04-01") - pd_days("2026-02-01"))
    status = dict(zip(a.opportunities["opportunity_id"], a.opportunities["status"], strict=True))
    assert status == {"o1": "open", "o2": "open", "W1": "won", "W2": "won", "W3": "open", "l1": "lost"}


def pd_days(s: str) -> int:
    from datetime import date
    return (date.fromisoformat(s) - date(2026, 1, 1)).days


def test_weighted_value_and_velocity() -> None:
    rows = [
        dict(opportunity_id="a", stage="Proposal", amount=1000, created_date="2026-05-01", close_date="2026-07-01"),  # 0.6
        dict(opportunity_id="b", stage="Lead generation", amount=500, created_date="2026-05-01", close_date="2026-07-01"),  # 0.1
        won(1, 300, "2026-04-01", "2026-04-11"),
        won(2, 500, "2026-04-01", "2026-04-21"),
        dict(opportunity_id="l", stage="Lost", amount=1, created_date="2026-04-01", close_date="2026-05-01"),
    ]
    m = run(rows, AS_OF).metrics
    assert metric(m, "weighted_value") == pytest.approx(650.0)
    assert metric(m, "weighted_value", "stage", "Proposal") == pytest.approx(600.0)
    # velocity = open_deals x avg_deal_size x win_rate / avg_sales_cycle_days = 2 x 400 x 2/3 / 15
    assert metric(m, "sales_velocity_per_day") == pytest.approx(2 * 400 * (2 / 3) / 15)


@pytest.mark.parametrize("name", ["avg_deal_size", "win_rate", "avg_sales_cycle_days", "sales_velocity_per_day",
                                  "revenue_growth_pct", "cac", "clv"])
def test_zero_denominators_are_empty_not_zero(name: str) -> None:
    a = run([dict(opportunity_id="o", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01")],
            AS_OF, make_cfg(inputs={"spend": {"2026-Q2": 500}}))
    assert math.isnan(metric(a.metrics, name))


def test_missing_amounts_make_sums_empty_and_m7_names_the_input() -> None:
    a = run([won(1, None, "2026-04-01", "2026-05-01", account_id="X")], AS_OF)
    m = a.metrics
    assert metric(m, "won_deals") == 1
    assert math.isnan(metric(m, "won_value"))
    assert math.isnan(metric(m, "avg_deal_size"))
    assert metric(m, "open_value") == 0.0  # no open deals: a sum over nothing is 0
    unavailable = a.flags[a.flags["check"] == "metric_unavailable"]
    msgs = dict(zip(unavailable["message"].str.split(" ").str[0], unavailable["message"], strict=True))
    assert {"won_value", "avg_deal_size", "clv", "cac"} <= set(msgs)
    assert msgs["won_value"].endswith("add amount.")
    assert msgs["cac"].endswith("add inputs.spend['2026-Q2'].")
    # win_rate has a denominator (1 won) and no missing input: not flagged
    assert metric(m, "win_rate") == 1.0


def test_clv_is_mean_total_won_per_account_on_or_before_as_of() -> None:
    rows = [won(1, 100, "2025-01-01", "2025-02-01", account_id="A"), won(2, 300, "2025-01-01", "2026-06-15", account_id="A"),
            won(3, 200, "2025-01-01", "2025-03-01", account_id="B"), won(4, 999, "2025-01-01", "2026-06-16", account_id="B"),
            won(5, 50, "2025-01-01", "2025-03-01")]  # no account: not attributable
    assert metric(run(rows, AS_OF).metrics, "clv") == pytest.approx((400 + 200) / 2)


def test_revenue_growth_depends_on_month_completeness() -> None:
    rows = [won(1, 100, "2026-01-01", "2026-04-15"), won(2, 200, "2026-01-01", "2026-05-15"),
            won(3, 500, "2026-01-01", "2026-06-10")]
    m_last = run(rows, "2026-06-30").metrics  # June complete: June vs May
    m_not = run(rows, "2026-06-29").metrics  # June not complete: May vs April
    assert metric(m_last, "revenue_growth_pct") == pytest.approx(150.0)
    assert metric(m_not, "revenue_growth_pct") == pytest.approx(100.0)
    row = m_not[m_not["metric"] == "revenue_growth_pct"].iloc[0]
    assert (str(row["period_start"].date()), str(row["period_end"].date())) == ("2026-05-01", "2026-05-31")


def test_period_first_day_of_quarter() -> None:
    rows = [won(1, 100, "2026-01-01", "2026-03-31"), won(2, 200, "2026-01-01", "2026-04-01"),
            dict(opportunity_id="n", stage="Contact", amount=10, created_date="2026-04-01")]
    m = run(rows, "2026-04-01").metrics
    assert (metric(m, "won_value"), metric(m, "new_deals")) == (200.0, 1)
    row = m[m["metric"] == "won_value"].iloc[0]
    assert (str(row["period_start"].date()), str(row["period_end"].date())) == ("2026-04-01", "2026-04-01")


def test_fiscal_quarter_spend_label() -> None:
    cfg = make_cfg(fiscal_year_start_month=4, inputs={"spend": {"2027-Q1": 300}})
    rows = [won(i, 10, "2026-04-01", "2026-04-02", account_id=f"A{i}") for i in range(3)]
    rows.append(won(9, 10, "2026-03-01", "2026-03-31", account_id="prev"))  # previous fiscal quarter
    assert metric(run(rows, "2026-05-01", cfg).metrics, "cac") == 100.0


def test_stage_conversion_with_history_and_lost_without_history() -> None:
    rows = [
        dict(opportunity_id="o1", stage="Contact", amount=1, created_date="2026-01-01"),
        dict(opportunity_id="o2", stage="Lead generation", amount=1, created_date="2026-01-01"),
        won(1, 1, "2026-01-01", "2026-05-01"),
        dict(opportunity_id="l1", stage="Lost", amount=1, created_date="2026-01-01", close_date="2026-05-01"),
        dict(opportunity_id="l2", stage="Lost", amount=1, created_date="2026-01-01", close_date="2026-05-01"),
    ]
    history = [("l1", "Lead generation", "2026-01-01"), ("l1", "Qualification", "2026-02-01"), ("l1", "Lost", "2026-05-01")]
    a = run(rows, AS_OF, history=history)
    m = a.metrics
    # levels: o1 Contact(2), o2 Lead(0), W1 all, l1 Qualification(1), l2 left out
    expected = {"Lead generation": 3 / 4, "Qualification": 2 / 3, "Contact": 1 / 2, "Proposal": 1.0, "Closing": 1.0}
    for stage, rate in expected.items():
        assert metric(m, "stage_conversion_rate", "stage", stage) == pytest.approx(rate)
    funnel = next(s for s in a.sheets if s.name == "Funnel")
    assert funnel.frame["reached"].tolist() == [4, 3, 2, 1, 1]
    assert funnel.frame["advanced"].tolist() == [3, 2, 1, 1, 1]
    assert funnel.notes[0].startswith("1 lost deal(s) without stage history")


def test_avg_days_in_stage_and_empty_stage() -> None:
    rows = [dict(opportunity_id="a", stage="Proposal", created_date="2026-05-01", stage_entered_date="2026-06-05"),
            dict(opportunity_id="b", stage="Proposal", created_date="2026-05-01", stage_entered_date="2026-06-01")]
    m = run(rows, AS_OF).metrics
    assert metric(m, "avg_days_in_stage", "stage", "Proposal") == 12.0
    assert math.isnan(metric(m, "avg_days_in_stage", "stage", "Closing"))


def test_owner_and_product_rows_add_up_with_unassigned_groups() -> None:
    rows = [dict(opportunity_id="a", owner="ann", product="P", stage="Contact", amount=10, created_date="2026-05-01"),
            dict(opportunity_id="b", stage="Contact", amount=20, created_date="2026-05-01"),
            dict(opportunity_id="c", owner="bob", stage="Contact", amount=None, created_date="2026-05-01")]
    m = run(rows, AS_OF).metrics
    assert metric(m, "open_value", "owner", "(no owner)") == 20.0
    assert math.isnan(metric(m, "open_value", "owner", "bob"))
    assert metric(m, "open_deals", "product", "(no product)") == 2
    assert metric(m, "open_value") == 30.0


def test_metrics_table_columns_and_units() -> None:
    a = run([dict(opportunity_id="a", stage="Contact", amount=10, created_date="2026-05-01")], AS_OF)
    assert list(a.metrics.columns) == ["metric", "scope", "key", "value", "unit", "period_start", "period_end"]
    units = dict(zip(a.metrics["metric"], a.metrics["unit"], strict=False))
    assert units["win_rate"] == "ratio" and units["sales_velocity_per_day"] == "currency_per_day"
    assert units["revenue_growth_pct"] == "pct" and units["avg_sales_cycle_days"] == "days"
