"""Each flag check of the spec, with a case just inside and just outside its threshold."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from config.snapshot_types import SnapshotHistory
from tests.analytics_support import fired, make_cfg, run
from transforms.flags import FLAG_COLUMNS

AS_OF = "2026-06-15"


def deal(i: str, **kw: Any) -> dict[str, Any]:
    """A clean open deal (fires nothing by itself) with overrides."""
    base = dict(opportunity_id=i, owner="ann", product="A", stage="Contact", amount=100.0, created_date="2026-06-10",
                close_date="2026-07-31", stage_entered_date="2026-06-10", last_activity_date=AS_OF,
                budget=True, authority=True, need=True, timeline=True, deal_type="existing")
    base.update(kw)
    return base


def filler(n: int, **kw: Any) -> list[dict[str, Any]]:
    """Clean open deals spread over stages so that no stage holds more than half."""
    stages = ["Lead generation", "Qualification", "Contact", "Proposal", "Closing"]
    return [deal(f"f{i}", stage=stages[i % 5], **kw) for i in range(n)]


DEAL_CASES = [
    # (check, deal overrides, fires)
    ("stalled", dict(stage="Proposal", stage_entered_date="2026-05-16"), False),  # 30 days == max_days
    ("stalled", dict(stage="Proposal", stage_entered_date="2026-05-15"), True),  # 31 days
    ("past_due", dict(close_date="2026-06-15"), False),
    ("past_due", dict(close_date="2026-06-14"), True),
    ("overdue_follow_up", dict(next_step_date="2026-06-15"), False),
    ("overdue_follow_up", dict(next_step_date="2026-06-14"), True),
    ("no_activity", dict(last_activity_date="2026-05-16"), False),  # 30 days == max_inactive_days
    ("no_activity", dict(last_activity_date="2026-05-15"), True),
    ("no_activity", dict(last_activity_date=None), False),  # unknown: not flagged
    ("unqualified", dict(stage="Contact", timeline=False), False),  # score 3 == min_score
    ("unqualified", dict(stage="Contact", timeline=False, need=False), True),  # score 2
    ("unqualified", dict(stage="Qualification", budget=False, authority=False, need=False, timeline=False), False),
    ("missing_fields", dict(), False),
    ("missing_fields", dict(amount=None), True),
    ("missing_fields", dict(owner=None), True),
    ("missing_fields", dict(close_date=None), True),
]


@pytest.mark.parametrize(("check", "overrides", "fires"), DEAL_CASES)
def test_deal_checks_at_their_thresholds(check: str, overrides: dict, fires: bool) -> None:
    a = run([deal("x", **overrides), *filler(4)], AS_OF)
    assert fired(a, check, "crm:x") is fires
    flags_col = dict(zip(a.opportunities["opportunity_id"], a.opportunities["flags"], strict=True))
    assert (check in flags_col["x"].split(",")) is fires


def test_deal_checks_skip_closed_deals() -> None:
    rows = [deal("w", stage="Won", status="won", close_date="2026-06-01", amount=None, next_step_date="2026-01-01")]
    a = run(rows, AS_OF)
    assert a.flags[a.flags["scope"] == "deal"].empty


def test_unqualified_after_a_configured_stage() -> None:
    cfg = make_cfg(pipeline={"qualification": {"after_stage": "Contact", "min_score": 4}})
    bare = dict(budget=True, authority=True, need=True, timeline=False)
    a = run([deal("c", stage="Contact", **bare), deal("p", stage="Proposal", **bare), *filler(5)], AS_OF, cfg)
    assert not fired(a, "unqualified", "crm:c")
    assert fired(a, "unqualified", "crm:p")
    row = a.flags[a.flags["key"] == "crm:p"].iloc[0]
    assert (row["value"], row["threshold"], row["severity"], row["rule"]) == (3.0, 4.0, "medium", "M2")


@pytest.mark.parametrize(("age", "fires"), [(20, False), (21, True)])
def test_aged_against_twice_the_sales_cycle(age: int, fires: bool) -> None:
    won = [deal(f"w{i}", stage="Won", status="won", created_date="2026-05-01", close_date="2026-05-11") for i in range(2)]
    created = (pd.Timestamp(AS_OF) - pd.Timedelta(days=age)).date().isoformat()
    a = run([*won, deal("x", created_date=created, stage_entered_date=AS_OF), *filler(4)], AS_OF)
    assert fired(a, "aged", "crm:x") is fires


def test_aged_is_skipped_without_a_sales_cycle() -> None:
    a = run([deal("x", created_date="2020-01-01", stage_entered_date=AS_OF), *filler(4)], AS_OF)
    assert not fired(a, "aged")


@pytest.mark.parametrize(("amount", "fires"), [(7500.0, False), (7499.7, True)])
def test_low_lead_gen_team(amount: float, fires: bool) -> None:
    a = run([deal("x", amount=amount, created_date="2026-05-17")], AS_OF)
    assert fired(a, "low_lead_gen", "all") is fires
    if fires:
        row = a.flags[a.flags["check"] == "low_lead_gen"].iloc[0]
        assert (row["severity"], row["value"], row["threshold"]) == ("high", pytest.approx(amount / 30), 250.0)


@pytest.mark.parametrize(("amount", "fires"), [(3000.0, False), (2999.0, True)])
def test_low_lead_gen_per_active_owner(amount: float, fires: bool) -> None:
    cfg = make_cfg(targets={"new_pipeline_per_day_per_owner": 100, "new_pipeline_per_day": 0})
    rows = [deal("x", owner="ann", amount=amount),
            deal("old", owner="bob", stage="Lost", status="lost", created_date="2025-01-01", close_date="2025-02-01")]
    a = run(rows, AS_OF, cfg)
    assert fired(a, "low_lead_gen", "ann") is fires
    assert not fired(a, "low_lead_gen", "bob")  # bob has no open deal and nothing closed this period


def test_low_lead_gen_per_owner_is_off_by_default() -> None:
    a = run([deal("x", amount=1.0)], AS_OF, make_cfg(targets={"new_pipeline_per_day": 0}))
    assert not fired(a, "low_lead_gen")


@pytest.mark.parametrize(("in_contact", "others", "limit", "fires"),
                         [(1, 1, 0.5, False), (2, 1, 0.5, True), (3, 2, 0.6, False), (4, 2, 0.6, True)])
def test_stage_share(in_contact: int, others: int, limit: float, fires: bool) -> None:
    rows = [deal(f"c{i}", stage="Contact") for i in range(in_contact)]
    rows += [deal(f"p{i}", stage="Proposal") for i in range(others)]
    a = run(rows, AS_OF, make_cfg(targets={"max_stage_share": limit}))
    assert fired(a, "stage_share", "Contact") is fires


@pytest.mark.parametrize(("total", "fires"), [(10, False), (9, True)])
def test_missing_share(total: int, fires: bool) -> None:
    rows = [deal("m", owner=None), *filler(total - 1)]
    a = run(rows, AS_OF)
    assert fired(a, "missing_share", "all") is fires


def test_source_stale_fires_per_source() -> None:
    a = run(filler(5), AS_OF, stale_sources=["hubspot", "tableau"])
    stale = a.flags[a.flags["check"] == "source_stale"]
    assert len(stale) == 2
    assert set(stale["severity"]) == {"high"}
    assert "'hubspot'" in stale["message"].iloc[0] and "'tableau'" in stale["message"].iloc[1]


@pytest.mark.parametrize(("existing", "fires"), [(200.0, False), (199.99, True)])
def test_low_existing_share(existing: float, fires: bool) -> None:
    rows = [deal("e", deal_type="existing", amount=existing), deal("n", deal_type="new", amount=1000.0 - existing),
            deal("q", deal_type="new", amount=None, stage="Proposal")]  # missing amount: left out of the value share
    a = run(rows, AS_OF)
    assert fired(a, "low_existing_share", "all") is fires


@pytest.mark.parametrize(("spend", "fires"), [(None, True), (1000.0, False)])
def test_metric_unavailable_names_the_input(spend: float | None, fires: bool) -> None:
    cfg = make_cfg(inputs={"spend": {} if spend is None else {"2026-Q2": spend}})
    rows = [deal("w", stage="Won", status="won", account_id="A1", deal_type="new", close_date="2026-06-12"), *filler(5)]
    a = run(rows, AS_OF, cfg)
    unavailable = a.flags[a.flags["check"] == "metric_unavailable"]
    assert any(unavailable["message"].str.startswith("cac ")) is fires
    if fires:
        msg = unavailable[unavailable["message"].str.startswith("cac ")]["message"].iloc[0]
        assert msg == "cac is empty because no spend for 2026-Q2: add inputs.spend['2026-Q2']."


def _history(open_deals: float, win_rate: float, velocity: float) -> SnapshotHistory:
    metrics = pd.DataFrame({"as_of": [pd.Timestamp("2026-06-01").date()] * 3,
                            "metric": ["open_deals", "win_rate", "sales_velocity_per_day"],
                            "value": [open_deals, win_rate, velocity]})
    return SnapshotHistory(metrics=metrics, previous_as_of=pd.Timestamp("2026-06-01").date())


@pytest.mark.parametrize(
    ("prev_open", "prev_win", "prev_vel", "fires"),
    [(5, 0.5, 1e9, True),    # open 6 > 5, velocity fell
     (5, 0.6, 0.0, True),    # open rose, win rate fell
     (6, 0.6, 1e9, False),   # open did not rise
     (5, 0.5, 0.0, False)],  # open rose but neither fell (win rate equal, velocity rose)
)
def test_volume_over_value(prev_open: float, prev_win: float, prev_vel: float, fires: bool) -> None:
    rows = [*filler(6), deal("w", stage="Won", status="won", close_date="2026-06-01", created_date="2026-05-01"),
            deal("l", stage="Lost", status="lost", close_date="2026-06-01", created_date="2026-05-01")]
    a = run(rows, AS_OF, snapshots=_history(prev_open, prev_win, prev_vel))
    assert a.snapshot.metrics["win_rate"] == 0.5 and a.snapshot.metrics["open_deals"] == 6
    assert fired(a, "volume_over_value") is fires


@pytest.mark.parametrize(("n_a", "fires"), [(13, False), (14, True), (7, False), (6, True)])
def test_open_mix(n_a: int, fires: bool) -> None:
    cfg = make_cfg(targets={"product_mix": {"A": 0.5, "B": 0.5}, "max_stage_share": 1.0})
    rows = [deal(f"a{i}", product="A") for i in range(n_a)] + [deal(f"b{i}", product="B") for i in range(20 - n_a)]
    a = run(rows, AS_OF, cfg)
    assert fired(a, "open_mix", "A") is fires


@pytest.mark.parametrize(("n_a", "fires"), [(7, False), (6, True)])  # 7/20 = 0.35 (diff 0.15); 6/20 = 0.30
def test_won_mix(n_a: int, fires: bool) -> None:
    cfg = make_cfg(targets={"product_mix": {"A": 0.5, "B": 0.5}})
    won = dict(stage="Won", status="won", close_date="2026-06-01", created_date="2026-05-01")
    rows = [deal(f"a{i}", product="A", **won) for i in range(n_a)] + [deal(f"b{i}", product="B", **won) for i in range(20 - n_a)]
    a = run(rows, AS_OF, cfg)
    assert fired(a, "won_mix", "A") is fires
    assert fired(a, "won_mix", "B") is fires


def test_flags_table_shape_and_order() -> None:
    rows = [deal("x", close_date="2026-06-01", stage="Proposal", stage_entered_date="2026-01-01",
                 last_activity_date="2026-01-01", amount=None), *filler(4)]
    a = run(rows, AS_OF, stale_sources=["s3"])
    f = a.flags
    assert list(f.columns) == FLAG_COLUMNS
    rank = f["severity"].map({"high": 0, "medium": 1, "low": 2})
    assert list(zip(rank, f["rule"], strict=True)) == sorted(zip(rank, f["rule"], strict=True))
    assert set(f["rule"]) == {"M1", "M3", "M4", "M5", "M7"}
    assert f["advice"].str.len().min() > 20
    deal_rows = f[f["scope"] == "deal"]
    assert set(deal_rows["opportunity_id"]) == {"x"}
    assert a.opportunities.set_index("opportunity_id").loc["x", "flags"] == "stalled,past_due,no_activity,missing_fields"
    msg = f[f["check"] == "stalled"]["message"].iloc[0]
    assert msg == "x has been in Proposal for 165 days (stage limit 30 days)."
