"""Pipeline movement (docs/metrics.md "Pipeline movement"): a hand case of two snapshots through the
snapshot store and the workbook, and random snapshot pairs against a deal-by-deal reading of the spec."""

from __future__ import annotations

import zipfile
from datetime import date

import numpy as np
import openpyxl
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.state import snapshots as store
from connectors.state.db import make_engine
from connectors.workbook.xlsx_writer import write_workbook
from tests.analytics_support import make_cfg, make_history, make_opps
from transforms.analytics import build_analytics
from transforms.movement import CATEGORIES, ROWS, SIGN, compute_movement

D0, D1 = date(2026, 5, 1), date(2026, 5, 8)  # W = 2026-Q2: 2026-04-01 .. 2026-06-30


def deal(i: str, owner: str | None, amount: float | None, close: str | None, *, stage: str = "Contact",
         created: str = "2026-04-01", status: str | None = None) -> dict:
    return dict(opportunity_id=i, name=f"Deal {i}", owner=owner, stage=stage, amount=amount, created_date=created,
                close_date=close, status=status)


BEFORE = [
    deal("keep", "ann", 1000, "2026-06-15"),
    deal("up", "bob", 1000, "2026-06-15"),  # moves to ann by D1
    deal("down", "bob", 2000, "2026-06-15"),
    deal("missing", "bob", None, "2026-06-15"),  # no amount at D0 (counts 0)
    deal("win", "ann", 3000, "2026-06-30"),
    deal("lose", "bob", 500, "2026-06-30"),
    deal("push", "ann", 800, "2026-06-20"),
    deal("gone", "bob", 400, "2026-06-15"),
    deal("pullin", "ann", 900, "2026-07-20"),  # open at D0, closing after W
    deal("reopen", "bob", 1100, "2026-04-20", stage="Lost", status="lost"),
    deal("drop", "ann", 600, "2026-06-15"),  # loses its amount by D1
    deal("outside", "ann", 300, "2026-08-01"),  # never in scope
]
AFTER = [
    deal("keep", "ann", 1000, "2026-06-15"),
    deal("up", "ann", 1500, "2026-06-15"),
    deal("down", "bob", 1200, "2026-06-15"),
    deal("missing", "bob", 700, "2026-06-15"),
    deal("win", "ann", 3300, "2026-05-05", stage="Won", status="won"),
    deal("lose", "bob", 500, "2026-05-06", stage="Lost", status="lost"),
    deal("push", "ann", 600, "2026-07-15"),
    deal("pullin", "ann", 900, "2026-06-10"),
    deal("reopen", "bob", 1100, "2026-06-25"),
    deal("drop", "ann", None, "2026-06-15"),
    deal("outside", "ann", 300, "2026-08-01"),
    deal("new", None, 250, "2026-06-30", created="2026-05-04"),
    deal("missing_new", "ann", None, "2026-06-01", created="2026-05-05"),
    deal("imported", "bob", 650, "2026-05-30", created="2026-03-01"),  # new to the data, created before D0
    deal("flash", "ann", 5000, "2026-05-06", stage="Won", status="won", created="2026-05-03"),  # created and won
]

# (deals, value) per category, start .. end
TEAM = {"start": (9, 9300), "created": (2, 250), "pulled_in": (3, 2650), "increased": (2, 1500),
        "decreased": (2, 1600), "won": (1, 3300), "lost": (1, 500), "pushed_out": (1, 600), "removed": (1, 400),
        "end": (10, 7300)}
OWNERS = {
    "ann": {"start": (5, 6400), "created": (1, 0), "pulled_in": (1, 900), "increased": (1, 800), "decreased": (1, 800),
            "won": (1, 3300), "lost": (0, 0), "pushed_out": (1, 600), "removed": (0, 0), "end": (5, 3400)},
    "bob": {"start": (4, 2900), "created": (0, 0), "pulled_in": (2, 1750), "increased": (1, 700), "decreased": (1, 800),
            "won": (0, 0), "lost": (1, 500), "pushed_out": (0, 0), "removed": (1, 400), "end": (4, 3650)},
    "(no owner)": {"start": (0, 0), "created": (1, 250), "pulled_in": (0, 0), "increased": (0, 0), "decreased": (0, 0),
                   "won": (0, 0), "lost": (0, 0), "pushed_out": (0, 0), "removed": (0, 0), "end": (1, 250)},
}
LINES = {"keep": "unchanged", "up": "increased", "down": "decreased", "missing": "increased", "win": "won",
         "lose": "lost", "push": "pushed_out", "gone": "removed", "pullin": "pulled_in", "reopen": "pulled_in",
         "drop": "decreased", "new": "created", "missing_new": "created", "imported": "pulled_in"}


@pytest.fixture(scope="module")
def runs():
    engine = make_engine("sqlite://")
    cfg = make_cfg()
    out = []
    for rows, as_of in ((BEFORE, D0), (AFTER, D1)):
        a = build_analytics(make_opps(rows), make_history([]), cfg, as_of,
                            snapshots=store.load_history(engine, cfg.report, as_of))
        with engine.begin() as conn:
            store.save_snapshot(conn, cfg.report, a.snapshot)
        out.append(a)
    return out


def test_every_category_for_the_team_and_each_owner(runs) -> None:
    m = runs[1].movement
    assert (m.d0, m.d1, m.window) == (D0, D1, (date(2026, 4, 1), date(2026, 6, 30)))
    assert {c: (m.deals(c), m.value(c)) for c in ROWS} == TEAM
    for owner, want in OWNERS.items():
        assert {c: (m.deals(c, "owner", owner), m.value(c, "owner", owner)) for c in ROWS} == want, owner
    assert set(m.totals.loc[m.totals["scope"] == "owner", "key"]) == set(OWNERS)
    assert m.checks == {("team", "all"): 0, **{("owner", o): 0 for o in OWNERS}}


def test_each_deal_has_one_line_that_traces_the_totals(runs) -> None:
    lines = runs[1].movement.lines.set_index("opportunity_id")
    assert dict(lines["category"]) == LINES  # outside and flash are in scope at neither date
    assert lines.loc["win", ["value", "amount_change"]].tolist() == [3300.0, 300.0]
    assert lines.loc["push", ["value", "amount_change", "start_value"]].tolist() == [600.0, -200.0, 800.0]
    assert lines.loc["gone", "status"] == "absent" and lines.loc["gone", "owner"] == "bob"  # owner at D0
    assert lines.loc["up", "owner"] == "ann"  # owner at D1
    assert np.isnan(lines.loc["missing", "old_amount"]) and lines.loc["missing", "start_value"] == 0.0
    assert lines["start_value"].sum() == TEAM["start"][1] and lines["end_value"].sum() == TEAM["end"][1]
    change = lines["amount_change"].fillna(0)
    assert change[change > 0].sum() == TEAM["increased"][1] and -change[change < 0].sum() == TEAM["decreased"][1]
    for c in ("created", "pulled_in", "won", "lost", "pushed_out", "removed"):
        assert lines.loc[lines["category"] == c, "value"].sum() == TEAM[c][1], c


def test_slippage_since_the_previous_snapshot(runs) -> None:
    metrics = runs[1].metrics.set_index(["metric", "scope", "key"])["value"]
    assert metrics["slipped_deals", "team", "all"] == 1 and metrics["slipped_value", "team", "all"] == 600
    assert metrics["slipped_deals", "owner", "ann"] == 1 and metrics["slipped_deals", "owner", "bob"] == 0
    opp = runs[1].opportunities.set_index("opportunity_id")
    assert opp.loc["push", "push_count"] == 1 and opp.loc["pullin", "push_count"] == 0
    first = runs[0].metrics.set_index(["metric", "scope", "key"])["value"]
    assert np.isnan(first["slipped_deals", "team", "all"])  # no earlier snapshot


def test_without_an_earlier_snapshot_the_sheet_says_so(runs) -> None:
    assert runs[0].movement is None
    sheet = next(s for s in runs[0].sheets if s.name == "Movement")
    assert sheet.frame.empty and "No earlier snapshot" in sheet.form.cells[1].value
    assert not any(getattr(c, "sheet", None) == "Movement" for c in runs[0].summary.charts)


def test_the_workbook_sheet_balances_with_formulas_and_draws_the_waterfall(runs, tmp_path) -> None:
    a = runs[1]
    path = tmp_path / "m.xlsx"
    write_workbook(path, sheets=a.sheets, summary=a.summary)
    book, values = openpyxl.load_workbook(path), openpyxl.load_workbook(path, data_only=True)
    ws, wv = book["Movement"], values["Movement"]
    team = {wv.cell(r, 1).value: (wv.cell(r, 3).value, wv.cell(r, 4).value) for r in range(5, 15)}
    assert team == TEAM
    check = next(r for r in range(1, 40) if ws.cell(r, 1).value == "balance check")
    assert ws.cell(check, 4).value == "=$D$5+$D$6+$D$7+$D$8-$D$9-$D$10-$D$11-$D$12-$D$13-$D$14"
    assert wv.cell(check, 4).value == 0 and wv.cell(check, 5).value == "balanced"
    head = next(r for r in range(check, 60) if ws.cell(r, 1).value == "owner")
    owners = {wv.cell(r, 1).value: r for r in range(head + 1, head + 4)}
    assert set(owners) == set(OWNERS)
    headers = [ws.cell(head, c).value for c in range(1, 23)]
    assert headers[-1] == "check" and str(ws.cell(owners["ann"], 22).value).startswith("=")
    for owner, r in owners.items():
        assert wv.cell(r, 22).value == 0
        assert wv.cell(r, headers.index("pulled_in_value") + 1).value == OWNERS[owner]["pulled_in"][1]
    deals_head = next(r for r in range(head, 80) if ws.cell(r, 1).value == "category")
    lines = [[wv.cell(r, c).value for c in range(1, 15)] for r in range(deals_head + 1, deals_head + 1 + len(LINES))]
    assert {row[2]: row[0] for row in lines} == LINES
    assert ws.tables["tblMovementDeals"].ref == f"A{deals_head}:N{deals_head + len(LINES)}"
    assert {"tblMovementTeam", "tblMovementOwners"} <= set(ws.tables)
    with zipfile.ZipFile(path) as z:
        charts = [z.read(n).decode() for n in z.namelist() if n.startswith("xl/charts/chart")]
    waterfall = next(c for c in charts if "pipeline movement since" in c)
    assert '<c:grouping val="stacked"/>' in waterfall and "<a:noFill/>" in waterfall  # the invisible base
    assert waterfall.count("<c:dLbls>") >= 3 and "Movement!$E$5:$E$14" in waterfall
    assert "Movement!$I$5:$I$14" in waterfall  # the bars are named in words, not metrics.md's codes
    assert [wv.cell(r, 9).value for r in (5, 7, 14)] == ["Start", "Pulled in", "End"]


# ----------------------------------------------------------------------------- random pairs

W = (date(2026, 4, 1), date(2026, 6, 30))
CLOSES = [None, "2026-03-20", "2026-04-01", "2026-05-15", "2026-06-30", "2026-07-01"]
AMOUNTS = [None, 0.0, 10.0, 99.99, 250.5, 1000.0]
state_st = st.one_of(st.none(), st.tuples(st.sampled_from(["open", "won", "lost"]), st.sampled_from(["ann", "bob", None]),
                                          st.sampled_from(AMOUNTS), st.sampled_from(CLOSES)))
pair_st = st.lists(st.tuples(state_st, state_st, st.booleans()), min_size=0, max_size=14)


def frames(pairs: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    prev, cur = [], []
    for i, (s0, s1, created_after) in enumerate(pairs):
        rid = f"crm:{i}"
        if s0 is not None and s0[0] == "open":
            prev.append({"deal_id": rid, "owner": s0[1], "product": None, "stage": "Contact", "amount": s0[2],
                         "close_date": s0[3]})
        if s1 is not None:
            cur.append({"row_id": rid, "opportunity_id": str(i), "name": None, "owner": s1[1], "status": s1[0],
                        "amount": s1[2], "close_date": s1[3],
                        "created_date": "2026-05-03" if created_after and s0 is None else "2026-01-01"})
    p = pd.DataFrame(prev, columns=["deal_id", "owner", "product", "stage", "amount", "close_date"])
    c = pd.DataFrame(cur, columns=["row_id", "opportunity_id", "name", "owner", "status", "amount", "close_date",
                                   "created_date"])
    for f in (p, c):
        f["amount"] = pd.to_numeric(f["amount"]).astype(float)
        f["close_date"] = pd.to_datetime(f["close_date"]).astype("datetime64[ns]")
    c["created_date"] = pd.to_datetime(c["created_date"]).astype("datetime64[ns]")
    return p, c


def oracle(pairs: list) -> dict[str, dict[str, list]]:
    """The spec's table read deal by deal: owner -> category -> [deals, cents]."""
    def in_w(s: tuple | None) -> bool:
        return s is not None and s[0] == "open" and s[3] is not None and W[0].isoformat() <= s[3] <= W[1].isoformat()

    def cents(s: tuple | None) -> int:
        return round((s[2] or 0.0) * 100) if s is not None else 0

    out: dict[str, dict[str, list]] = {}
    for s0, s1, created_after in pairs:
        in0, in1 = in_w(s0), in_w(s1)
        if not (in0 or in1):
            continue
        owner = (s1[1] if s1 is not None else s0[1]) or "(no owner)"
        for key in ("all", owner):
            t = out.setdefault(key, {r: [0, 0] for r in ROWS})
            if in0:
                t["start"][0] += 1
                t["start"][1] += cents(s0)
            if in1:
                t["end"][0] += 1
                t["end"][1] += cents(s1)
            if in1 and not in0:
                cat = "created" if created_after and s0 is None else "pulled_in"
                t[cat][0] += 1
                t[cat][1] += cents(s1)
                continue
            if s1 is None:
                t["removed"][0] += 1
                t["removed"][1] += cents(s0)
                continue
            delta = cents(s1) - cents(s0)
            t["increased" if delta > 0 else "decreased"][1] += abs(delta)
            if in1:
                if delta:
                    t["increased" if delta > 0 else "decreased"][0] += 1
                continue
            cat = {"won": "won", "lost": "lost", "open": "pushed_out"}[s1[0]]
            t[cat][0] += 1
            t[cat][1] += cents(s1)
    return out


@settings(max_examples=200, deadline=None)
@given(pairs=pair_st)
def test_random_pairs_balance_and_match_the_spec_deal_by_deal(pairs) -> None:
    prev, cur = frames(pairs)
    m = compute_movement(cur, prev, D0, D1, W)
    want = oracle(pairs)
    got: dict[str, dict[str, list]] = {}
    for _scope, key, cat, n, value in m.totals.itertuples(index=False):
        got.setdefault(key, {})[cat] = [n, round(value * 100)]
    if not want:  # nothing in scope: the team row is all zeros and no owner appears
        assert got == {"all": {r: [0, 0] for r in ROWS}}
        return
    assert got == want
    for key, t in got.items():
        balance = t["start"][1] + sum(SIGN[c] * t[c][1] for c in CATEGORIES) - t["end"][1]
        assert balance == 0, key
    assert set(m.checks.values()) == {0}
    assert sum(got["all"][c][0] for c in CATEGORIES) == int((m.lines["category"] != "unchanged").sum())
    assert len(m.lines) == sum(1 for s0, s1, _ in pairs
                               if any(s is not None and s[0] == "open" and s[3] and "2026-04-01" <= s[3] <= "2026-06-30"
                                      for s in (s0, s1)))


def test_a_week_later_in_the_next_quarter_uses_the_new_period() -> None:
    prev = pd.DataFrame({"deal_id": ["crm:1", "crm:2"], "owner": ["ann", "ann"], "product": [None, None],
                         "stage": ["Contact"] * 2, "amount": [100.0, 200.0],
                         "close_date": pd.to_datetime(["2026-06-30", "2026-07-10"]).astype("datetime64[ns]")})
    cur = pd.DataFrame({"row_id": ["crm:1", "crm:2"], "opportunity_id": ["1", "2"], "name": [None, None],
                        "owner": ["ann", "ann"], "status": ["open", "open"], "amount": [100.0, 200.0],
                        "close_date": pd.to_datetime(["2026-06-30", "2026-07-10"]).astype("datetime64[ns]"),
                        "created_date": pd.to_datetime(["2026-01-01"] * 2).astype("datetime64[ns]")})
    m = compute_movement(cur, prev, date(2026, 6, 28), date(2026, 7, 5), (date(2026, 7, 1), date(2026, 9, 30)))
    # crm:1 (Q2 close, still open) was not in Q3's scope and is not now; crm:2 is in scope at both
    assert (m.value("start"), m.value("end"), m.deals("pulled_in")) == (200.0, 200.0, 0)
    assert m.lines["row_id"].tolist() == ["crm:2"] and m.lines["category"].tolist() == ["unchanged"]
