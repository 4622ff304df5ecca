"""Invariants over random deal sets (hypothesis)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.state import snapshots as store
from connectors.state.db import make_engine
from tests.analytics_support import make_cfg, make_history, make_opps
from transforms.analytics import build_analytics

BASE = date(2026, 1, 1)
OPEN_STAGES = ["Lead generation", "Qualification", "Contact", "Proposal", "Closing"]
CFG = make_cfg(targets={"product_mix": {"A": 0.5, "B": 0.5}, "new_pipeline_per_day_per_owner": 50})


def _day(n: int | None) -> str | None:
    return None if n is None else (BASE + timedelta(days=n)).isoformat()


@st.composite
def deal_sets(draw):
    n = draw(st.integers(0, 25))
    rows, history = [], []
    for i in range(n):
        status = draw(st.sampled_from(["open", "won", "lost"]))
        stage = draw(st.sampled_from(OPEN_STAGES)) if status == "open" else status.capitalize()
        created = draw(st.integers(0, 300))
        close = draw(st.one_of(st.none(), st.integers(created, 400)))
        rows.append(dict(
            opportunity_id=f"D{i}", status=status, stage=stage, created_date=_day(created), close_date=_day(close),
            amount=draw(st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))),
            owner=draw(st.sampled_from([None, "ann", "bob", "cy"])), product=draw(st.sampled_from([None, "A", "B", "C"])),
            account_id=draw(st.sampled_from([None, "X", "Y", "Z"])), deal_type=draw(st.sampled_from(["new", "existing"])),
            stage_entered_date=draw(st.one_of(st.none(), st.integers(created, 400).map(_day))),
            last_activity_date=draw(st.one_of(st.none(), st.integers(0, 400).map(_day))),
            next_step_date=draw(st.one_of(st.none(), st.integers(0, 400).map(_day))),
            budget=draw(st.booleans()), authority=draw(st.booleans()), need=draw(st.booleans()), timeline=draw(st.booleans()),
        ))
        for _ in range(draw(st.integers(0, 3))):
            history.append((f"D{i}", draw(st.sampled_from([*OPEN_STAGES, "Won", "Lost"])), _day(draw(st.integers(created, 400)))))
    as_of = BASE + timedelta(days=draw(st.integers(0, 420)))
    return rows, history, as_of


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deal_sets())
def test_counts_rates_and_sums(case) -> None:
    rows, history, as_of = case
    a = build_analytics(make_opps(rows), make_history(history), CFG, as_of)
    existing = sum(1 for r in rows if date.fromisoformat(r["created_date"]) <= as_of)
    opp = a.opportunities
    status = opp["status"].value_counts()
    assert status.get("open", 0) + status.get("won", 0) + status.get("lost", 0) == len(opp) == existing
    assert a.excluded_future == len(rows) - existing
    m = a.metrics
    team = m[m["scope"] == "team"].set_index("metric")["value"]
    assert team["open_deals"] == status.get("open", 0)

    ratios = m[m["unit"] == "ratio"]["value"].dropna()
    assert ((ratios >= 0) & (ratios <= 1)).all()

    for scope in ("owner", "product", "stage"):
        part = m[m["scope"] == scope]
        if scope == "stage":  # one row per open stage, always
            assert len(part[part["metric"] == "open_deals"]) == len(OPEN_STAGES)
            continue
        for name in ("open_deals", "open_value", "weighted_value"):
            values = part.loc[part["metric"] == name, "value"]
            if np.isnan(team[name]):
                assert values.fillna(0).eq(0).all()
            else:
                assert np.isclose(values.sum(skipna=True), team[name], rtol=1e-9, atol=1e-6)
        for name in ("won_deals", "lost_deals", "new_deals"):
            assert part.loc[part["metric"] == name, "value"].sum() == team[name]

    funnel = next(s for s in a.sheets if s.name == "Funnel").frame
    assert (np.diff(funnel["reached"].to_numpy()) <= 0).all()
    assert (funnel["advanced"] <= funnel["reached"]).all()
    assert (opp["days_in_stage"] >= 0).all()
    assert (opp["age_days"] >= 0).all()
    # every deal-scope flag is on an open deal, and the flags column lists exactly its checks
    deal_flags = a.flags[a.flags["scope"] == "deal"]
    per_deal = deal_flags.groupby("key")["check"].apply(set).to_dict()
    listed = {k: set(v.split(",")) for k, v in zip(opp["row_id"], opp["flags"], strict=True) if v}
    assert per_deal == listed
    assert set(opp.set_index("row_id").loc[list(per_deal), "status"]) <= {"open"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(deal_sets(), st.integers(1, 3))
def test_rerunning_an_as_of_keeps_one_snapshot(case, reruns: int) -> None:
    rows, history, as_of = case
    engine = make_engine("sqlite:///:memory:")
    opps, hist = make_opps(rows), make_history(history)
    for i in range(reruns):
        subset = opps.iloc[: max(0, len(opps) - i)]
        a = build_analytics(subset, hist, CFG, as_of, snapshots=store.load_history(engine, CFG.report, as_of))
        with engine.begin() as conn:
            store.save_snapshot(conn, CFG.report, a.snapshot)
    assert store.stored_dates(engine, CFG.report) == [as_of]
    h = store.load_history(engine, CFG.report, as_of + timedelta(days=1))
    assert h.previous_as_of == as_of
    assert sorted(h.previous_deals["deal_id"]) == sorted(a.snapshot.deals["deal_id"])
    assert h.metrics["as_of"].nunique() == 1
    trends = next(s for s in a.sheets if s.name == "Trends").frame
    assert len(trends) == 1 and pd.Timestamp(as_of) == trends["as_of"].iloc[0]
