"""As-of correctness and stage history: the stage a deal had at a past as_of, and when it entered it."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.analytics_support import make_history, make_opps, metric, run

HISTORY = [("h", "Lead generation", "2026-01-01"), ("h", "Contact", "2026-02-01"),
           ("h", "Proposal", "2026-03-01"), ("h", "Won", "2026-04-01")]
WON_H = dict(opportunity_id="h", stage="Won", amount=100, created_date="2026-01-01", close_date="2026-04-01")


def row(a, oid: str) -> pd.Series:
    return a.opportunities.set_index("opportunity_id").loc[oid]


@pytest.mark.parametrize(
    ("as_of", "status", "stage", "entered", "days"),
    [
        ("2026-01-15", "open", "Lead generation", "2026-01-01", 14),
        ("2026-02-01", "open", "Contact", "2026-02-01", 0),  # entered on as_of: inclusive
        ("2026-03-31", "open", "Proposal", "2026-03-01", 30),
        ("2026-04-01", "won", "Won", "2026-04-01", 0),  # closed on as_of: won
    ],
)
def test_stage_at_past_as_of_from_history(as_of: str, status: str, stage: str, entered: str, days: int) -> None:
    a = run([WON_H], as_of, history=HISTORY)
    r = row(a, "h")
    assert (r["status"], r["stage"], str(r["stage_entered_date"].date()), r["days_in_stage"]) == (status, stage, entered, days)
    assert not r["stage_entered_estimated"]


def test_closed_later_without_history_is_open_in_last_open_stage_and_estimated() -> None:
    a = run([dict(opportunity_id="w", stage="Won", amount=100, created_date="2026-01-10", close_date="2026-04-01")],
            "2026-03-01")
    r = row(a, "w")
    assert (r["status"], r["stage"], str(r["stage_entered_date"].date()), r["days_in_stage"]) == (
        "open", "Closing", "2026-01-10", 50)
    assert r["stage_entered_estimated"]
    assert metric(a.metrics, "open_deals") == 1 and metric(a.metrics, "won_deals") == 0


def test_open_deal_that_moved_after_as_of_uses_history() -> None:
    rows = [dict(opportunity_id="m", stage="Proposal", created_date="2026-01-01", stage_entered_date="2026-05-01")]
    hist = [("m", "Lead generation", "2026-01-01"), ("m", "Contact", "2026-03-01"), ("m", "Proposal", "2026-05-01")]
    a = run(rows, "2026-04-10", history=hist)
    r = row(a, "m")
    assert (r["stage"], r["days_in_stage"], r["stage_entered_estimated"]) == ("Contact", 40, False)
    # without history the current stage is kept, entered at created_date, estimated
    b = run(rows, "2026-04-10")
    r = row(b, "m")
    assert (r["stage"], r["days_in_stage"], r["stage_entered_estimated"]) == ("Proposal", 99, True)


@pytest.mark.parametrize(
    ("field", "hist", "entered", "estimated"),
    [
        ("2026-05-20", [], "2026-05-20", False),  # the field
        (None, [("x", "Contact", "2026-05-10")], "2026-05-10", False),  # history entry of the current stage
        (None, [("x", "Lead generation", "2026-05-02")], "2026-05-01", True),  # history lacks the current stage
        (None, [], "2026-05-01", True),  # created_date
    ],
)
def test_stage_entered_fallbacks(field: str | None, hist: list, entered: str, estimated: bool) -> None:
    rows = [dict(opportunity_id="x", stage="Contact", created_date="2026-05-01", stage_entered_date=field)]
    a = run(rows, "2026-06-01", history=hist)
    r = row(a, "x")
    assert (str(r["stage_entered_date"].date()), bool(r["stage_entered_estimated"])) == (entered, estimated)
    assert r["days_in_stage"] == (pd.Timestamp("2026-06-01") - pd.Timestamp(entered)).days
    assert r["age_days"] == 31


def test_deals_created_after_as_of_do_not_exist() -> None:
    rows = [dict(opportunity_id="a", stage="Contact", created_date="2026-06-01"),
            dict(opportunity_id="b", stage="Contact", created_date="2026-06-02")]
    a = run(rows, "2026-06-01")
    assert a.excluded_future == 1
    assert a.opportunities["opportunity_id"].tolist() == ["a"]


def test_history_joins_on_source_and_id() -> None:
    from tests.analytics_support import make_cfg
    from transforms.analytics import build_analytics

    opps = pd.concat([make_opps([dict(opportunity_id="1", stage="Won", created_date="2026-01-01", close_date="2026-05-01")], "s1"),
                      make_opps([dict(opportunity_id="1", stage="Won", created_date="2026-01-01", close_date="2026-05-01")], "s2")],
                     ignore_index=True)
    hist = pd.concat([make_history([("1", "Qualification", "2026-02-01")], "s1"),
                      make_history([("1", "Proposal", "2026-03-01")], "s2"),
                      make_history([("unknown", "Proposal", "2026-03-01")], "s2")], ignore_index=True)
    a = build_analytics(opps, hist, make_cfg(), pd.Timestamp("2026-04-01").date())
    stages = dict(zip(a.opportunities["row_id"], a.opportunities["stage"], strict=True))
    assert stages == {"s1:1": "Qualification", "s2:1": "Proposal"}


def test_duplicate_deal_keys_are_refused_with_a_clear_error() -> None:
    from tests.analytics_support import make_cfg
    from transforms.analytics import build_analytics

    opps = make_opps([dict(opportunity_id="1", stage="Contact", created_date="2026-01-01")] * 2)
    with pytest.raises(ValueError, match="unique per \\(source, opportunity_id\\)"):
        build_analytics(opps, make_history([("1", "Contact", "2026-01-01")]), make_cfg(), pd.Timestamp("2026-04-01").date())


def test_lost_deal_history_after_as_of_is_ignored_for_conversion() -> None:
    rows = [dict(opportunity_id="l", stage="Lost", created_date="2026-01-01", close_date="2026-02-01")]
    hist = [("l", "Lead generation", "2026-01-01"), ("l", "Proposal", "2026-03-01")]  # Proposal after as_of
    a = run(rows, "2026-02-15", history=hist)
    m = a.metrics
    assert metric(m, "stage_conversion_rate", "stage", "Lead generation") == 0.0
    assert pd.isna(metric(m, "stage_conversion_rate", "stage", "Qualification"))
