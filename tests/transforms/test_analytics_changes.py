"""Changes and Trends from the snapshot history, end to end through the snapshot store."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from connectors.state import snapshots as store
from connectors.state.db import make_engine
from tests.analytics_support import make_cfg, make_history, make_opps
from transforms.analytics import build_analytics

BEFORE = [
    dict(opportunity_id="keep", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="push", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="pull", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="up", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="fwd", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="back", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="win", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="lose", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
    dict(opportunity_id="gone", owner="ann", stage="Contact", amount=100, created_date="2026-05-01", close_date="2026-07-01"),
]
CHANGED = {
    "push": dict(close_date="2026-08-01", amount=80),  # pushed and decreased
    "pull": dict(close_date="2026-06-20"),
    "up": dict(amount=150),
    "fwd": dict(stage="Proposal"),
    "back": dict(stage="Qualification"),
    "win": dict(stage="Won", status="won", close_date="2026-06-05"),
    "lose": dict(stage="Lost", status="lost", close_date="2026-06-05"),
}
AFTER = [{**r, **CHANGED.get(r["opportunity_id"], {})} for r in BEFORE if r["opportunity_id"] != "gone"]
AFTER.append(dict(opportunity_id="fresh", owner="bob", stage="Lead generation", amount=10, created_date="2026-06-03"))


@pytest.fixture
def engine(tmp_path):
    return make_engine(f"sqlite:///{tmp_path / 'state.db'}")


def _run(engine, rows, as_of: date):
    cfg = make_cfg()
    a = build_analytics(make_opps(rows), make_history([]), cfg, as_of,
                        snapshots=store.load_history(engine, cfg.report, as_of))
    with engine.begin() as conn:
        store.save_snapshot(conn, cfg.report, a.snapshot)
    return a


def sheet(a, name: str) -> pd.DataFrame:
    return next(s for s in a.sheets if s.name == name).frame


def test_changes_between_snapshots(engine) -> None:
    first = _run(engine, BEFORE, date(2026, 6, 1))
    assert sheet(first, "Changes").empty
    a = _run(engine, AFTER, date(2026, 6, 8))
    ch = sheet(a, "Changes")
    got = sorted(zip(ch["change"], ch["opportunity_id"].fillna(ch["row_id"]), strict=True))
    assert got == sorted([
        ("new", "fresh"), ("won", "win"), ("lost", "lose"), ("pushed", "push"), ("decreased", "push"),
        ("pulled_in", "pull"), ("increased", "up"), ("stage_forward", "fwd"), ("stage_backward", "back"),
        ("removed", "crm:gone"),
    ])
    push = ch[ch["change"] == "pushed"].iloc[0]
    assert (push["old_close_date"], push["new_close_date"]) == (pd.Timestamp("2026-07-01"), pd.Timestamp("2026-08-01"))
    dec = ch[ch["change"] == "decreased"].iloc[0]
    assert (dec["old_amount"], dec["new_amount"]) == (100.0, 80.0)
    fwd = ch[ch["change"] == "stage_forward"].iloc[0]
    assert (fwd["old_stage"], fwd["new_stage"]) == ("Contact", "Proposal")
    won = ch[ch["change"] == "won"].iloc[0]
    assert (won["old_stage"], won["new_stage"]) == ("Contact", "Won")
    # order follows the change kinds
    order = ["new", "won", "lost", "pushed", "pulled_in", "increased", "decreased", "stage_forward", "stage_backward", "removed"]
    assert list(ch["change"]) == sorted(ch["change"], key=order.index)


def test_trends_oldest_first_and_rerun_replaces(engine) -> None:
    _run(engine, BEFORE, date(2026, 6, 8))
    _run(engine, BEFORE[:5], date(2026, 6, 1))
    a = _run(engine, AFTER, date(2026, 6, 15))
    tr = sheet(a, "Trends")
    assert tr["as_of"].dt.date.tolist() == [date(2026, 6, 1), date(2026, 6, 8), date(2026, 6, 15)]
    assert tr["open_deals"].tolist() == [5.0, 9.0, 7.0]
    # rerun 2026-06-08 with other data: still one row for that date, with the new values
    b = _run(engine, AFTER, date(2026, 6, 8))
    tr = sheet(b, "Trends")
    assert tr["as_of"].dt.date.tolist() == [date(2026, 6, 1), date(2026, 6, 8)]
    assert tr["open_deals"].tolist() == [5.0, 7.0]
    assert store.stored_dates(engine, "pipeline") == [date(2026, 6, 1), date(2026, 6, 8), date(2026, 6, 15)]


def test_volume_over_value_from_the_store(engine) -> None:
    base = [dict(opportunity_id=f"o{i}", owner="ann", stage="Contact", amount=100, created_date="2026-05-01",
                 close_date="2026-07-01") for i in range(3)]
    closed = [dict(opportunity_id="w", stage="Won", amount=100, created_date="2026-05-01", close_date="2026-05-20"),
              dict(opportunity_id="l", stage="Lost", amount=100, created_date="2026-05-01", close_date="2026-05-20")]
    _run(engine, base + closed[:1], date(2026, 6, 1))  # win rate 1.0
    more = base + [dict(opportunity_id="o9", owner="ann", stage="Contact", amount=100, created_date="2026-06-02",
                        close_date="2026-07-01")] + closed  # 4 open, win rate 0.5
    a = _run(engine, more, date(2026, 6, 8))
    f = a.flags[a.flags["check"] == "volume_over_value"]
    assert len(f) == 1
    assert f["message"].iloc[0].startswith("Open deals rose from 3 to 4 since the previous snapshot (snapshot of 2026-06-01)")
    kpi = a.summary.kpis.set_index("metric")
    assert kpi.loc["open_deals", "value"] == 4.0
