"""Slippage (docs/metrics.md "Slippage"): slipped deals since the previous snapshot, push_count from
stored snapshots and from Salesforce's OpportunityHistory (against tests/fakes/salesforce.py), and
M4 pushed_repeatedly."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
import yaml

from config.loader import load_config
from connectors.sources.salesforce import extract
from connectors.state import snapshots as store
from connectors.state.db import make_engine
from flows.pipeline import run_pipeline
from tests.analytics_support import fired, make_cfg, make_history, make_opps
from tests.fakes.salesforce import FAST, STAGE_MAP, make_ctx, oid, running_fake
from tests.fakes.salesforce import make_cfg as sf_cfg
from transforms.analytics import build_analytics
from transforms.canonical import canonicalize
from transforms.field_history import canonicalize_field_history

START = date(2026, 4, 6)


def week(rows_by_week: list[dict[str, str]], cfg=None):
    """One run per week over deals whose close_date (by id) each week gives; returns the runs."""
    cfg = cfg or make_cfg()
    engine = make_engine("sqlite://")
    out = []
    for k, closes in enumerate(rows_by_week):
        as_of = START + timedelta(weeks=k)
        rows = [dict(opportunity_id=i, owner="ann", stage="Contact", amount=100.0 * (n + 1), created_date="2026-04-01",
                     close_date=c) for n, (i, c) in enumerate(sorted(closes.items()))]
        a = build_analytics(make_opps(rows), make_history([]), cfg, as_of,
                            snapshots=store.load_history(engine, cfg.report, as_of))
        with engine.begin() as conn:
            store.save_snapshot(conn, cfg.report, a.snapshot)
        out.append(a)
    return out


WEEKS = [
    {"p": "2026-05-01", "q": "2026-05-01", "r": "2026-06-01"},
    {"p": "2026-05-15", "q": "2026-04-20", "r": "2026-06-01"},  # p pushed, q pulled in
    {"p": "2026-06-01", "q": "2026-05-10", "r": "2026-06-01"},  # p, q pushed
    {"p": "2026-06-01", "q": "2026-05-20", "r": "2026-07-15"},  # q, r pushed; p unchanged
    {"p": "2026-06-30", "q": "2026-05-20", "r": "2026-07-15"},  # p pushed (3rd time)
]


def test_push_count_and_slipped_deals_from_stored_snapshots() -> None:
    runs = week(WEEKS)
    counts = [dict(zip(a.opportunities["opportunity_id"], a.opportunities["push_count"], strict=True)) for a in runs]
    assert counts == [{"p": 0, "q": 0, "r": 0}, {"p": 1, "q": 0, "r": 0}, {"p": 2, "q": 1, "r": 0},
                      {"p": 2, "q": 2, "r": 1}, {"p": 3, "q": 2, "r": 1}]
    last = runs[-1].metrics.set_index(["metric", "scope", "key"])["value"]
    assert last["slipped_deals", "team", "all"] == 1 and last["slipped_value", "team", "all"] == 100.0  # p only
    fourth = runs[3].metrics.set_index(["metric", "scope", "key"])["value"]
    assert fourth["slipped_deals", "owner", "ann"] == 2 and fourth["slipped_value", "owner", "ann"] == 500.0
    assert [fired(a, "pushed_repeatedly") for a in runs] == [False, False, False, False, True]
    flag = runs[-1].flags[runs[-1].flags["check"] == "pushed_repeatedly"].iloc[0]
    assert (flag["rule"], flag["severity"], flag["key"], flag["value"], flag["threshold"]) == ("M4", "medium", "crm:p", 3, 3)
    assert flag["message"] == "p's close date has been pushed out 3 times (limit 3)."
    assert "pushed_repeatedly" in runs[-1].opportunities.set_index("opportunity_id").loc["p", "flags"]
    actions = runs[-1].actions.set_index("opportunity_id")["flags"]  # in words on Actions, after the others
    assert actions["p"].endswith("; close date pushed 3 times (limit 3)") and "pushed" not in actions["q"]


def test_max_pushes_is_configurable() -> None:
    runs = week(WEEKS[:3], make_cfg(targets={"max_pushes": 2}))
    assert fired(runs[-1], "pushed_repeatedly", "crm:p") and not fired(runs[-1], "pushed_repeatedly", "crm:q")


def test_a_rerun_of_the_same_date_does_not_count_twice() -> None:
    cfg = make_cfg()
    engine = make_engine("sqlite://")
    rows = [dict(opportunity_id="p", owner="ann", stage="Contact", amount=1, created_date="2026-04-01", close_date=c)
            for c in ("2026-05-01", "2026-05-20")]
    for as_of, row in ((START, rows[0]), (START + timedelta(days=7), rows[1]), (START + timedelta(days=7), rows[1])):
        a = build_analytics(make_opps([row]), make_history([]), cfg, as_of,
                            snapshots=store.load_history(engine, cfg.report, as_of))
        with engine.begin() as conn:
            store.save_snapshot(conn, cfg.report, a.snapshot)
        assert a.opportunities["push_count"].iloc[0] == (0 if as_of == START else 1)


# ----------------------------------------------------------------------------- Salesforce field history

AS_OF = date(2025, 5, 2)


@pytest.fixture()
def fake(tmp_path: Path):
    with running_fake(tmp_path) as sf:
        # opportunity 2 (open, CloseDate 2025-07-15): three pushes and a pull-in before as_of, one push after it
        for created, close in (("2025-03-02T09:00:00.000+0000", "2025-05-31"), ("2025-03-20T09:00:00.000+0000", "2025-06-15"),
                               ("2025-04-01T09:00:00.000+0000", "2025-06-10"), ("2025-04-10T09:00:00.000+0000", "2025-06-30"),
                               ("2025-04-20T09:00:00.000+0000", "2025-07-15"), ("2025-05-20T09:00:00.000+0000", "2025-09-01")):
            sf.add_history(oid(2), "Prospecting", created, CloseDate=close, Amount=8000.0)
        # opportunity 5: a stage change only (same CloseDate): no push
        sf.add_history(oid(5), "Prospecting", "2025-03-05T09:00:00.000+0000", CloseDate="2025-08-01", Amount=20000.0)
        sf.add_history(oid(5), "Needs Analysis", "2025-03-25T09:00:00.000+0000", CloseDate="2025-08-01", Amount=20000.0)
        yield sf


def test_the_connector_reads_close_date_and_amount_history(fake) -> None:
    out = extract(sf_cfg(fake), make_ctx(), policy=FAST)
    hist = out.field_history
    two = hist[hist["opportunity_id"] == oid(2)]
    assert two[two["field"] == "close_date"]["value"].tolist() == [
        "2025-05-31", "2025-06-15", "2025-06-10", "2025-06-30", "2025-07-15", "2025-09-01"]
    assert two[two["field"] == "amount"]["value"].tolist() == [8000.0]  # recorded once: it never changed
    one = hist[hist["opportunity_id"] == oid(1)]  # the seed: 10,000 -> 12,500, then rows without an Amount
    assert one[one["field"] == "amount"]["value"].tolist() == [10000.0, 12500.0, None]
    assert any("CloseDate, Amount FROM OpportunityHistory" in q for _, q in fake.queries)
    typed = canonicalize_field_history(hist, source="sfdc", tz=make_ctx().tz)
    assert typed["changed_at"].iloc[0] == pd.Timestamp("2025-03-01 09:00:00")
    assert typed.loc[typed["field"] == "close_date", "close_date"].notna().all()


def test_push_count_from_salesforce_history(fake) -> None:
    cfg = make_cfg(sources=[{"type": "salesforce", "name": "sfdc", "domain": "https://x.invalid", "client_id": "i",
                             "client_secret": "s", "stage_map": STAGE_MAP}], targets={"max_pushes": 3})
    out = extract(sf_cfg(fake), make_ctx(), policy=FAST)
    res = canonicalize(out.records, source="sfdc", stages=cfg.pipeline.stages, stage_map=STAGE_MAP, tz=make_ctx().tz)
    fields = canonicalize_field_history(out.field_history, source="sfdc", tz=make_ctx().tz)
    a = build_analytics(res.loaded, make_history([], source="sfdc"), cfg, AS_OF, field_history=fields)
    counts = dict(zip(a.opportunities["opportunity_id"], a.opportunities["push_count"], strict=True))
    # 05-31 -> 06-15 (push) -> 06-10 -> 06-30 (push) -> 07-15 (push); the 05-20 change is after as_of
    assert counts == {oid(1): 0, oid(2): 3, oid(3): 0, oid(4): 0, oid(5): 0}
    assert fired(a, "pushed_repeatedly", f"sfdc:{oid(2)}")
    earlier = build_analytics(res.loaded, make_history([], source="sfdc"), cfg, date(2025, 3, 25), field_history=fields)
    two = earlier.opportunities.set_index("opportunity_id").loc[oid(2)]
    assert two["push_count"] == 1  # 05-31 -> 06-15 by then
    assert two["close_date"] == pd.Timestamp("2025-06-15")  # the close date as it stood that day
    one = earlier.opportunities.set_index("opportunity_id").loc[oid(1)]
    assert one["amount"] == 12500.0  # no amount change recorded after as_of: the current amount stands


def test_history_wins_over_snapshots_where_the_source_keeps_it() -> None:
    opps = make_opps([dict(opportunity_id="x", owner="ann", stage="Contact", amount=1, created_date="2026-04-01",
                           close_date="2026-06-01")])
    snaps = store.load_history(make_engine("sqlite://"), "r", date(2026, 5, 1))
    snaps.pushes = pd.DataFrame({"deal_id": ["crm:x"] * 4, "as_of": [date(2026, 4, 1)] * 4})
    hist = pd.DataFrame({"opportunity_id": ["x", "x"], "field": ["close_date", "close_date"],
                         "changed_at": ["2026-04-01T10:00:00Z", "2026-04-10T10:00:00Z"],
                         "value": ["2026-05-01", "2026-05-20"]})
    fields = canonicalize_field_history(hist, source="crm", tz=make_cfg().tz)
    with_history = build_analytics(opps, make_history([]), make_cfg(), date(2026, 5, 1), snapshots=snaps,
                                   field_history=fields)
    # 05-01 -> 05-20 -> (now) 06-01: two pushes, from the source's own record
    assert with_history.opportunities["push_count"].tolist() == [2]
    without = build_analytics(opps, make_history([]), make_cfg(), date(2026, 5, 1), snapshots=snaps)
    assert without.opportunities["push_count"].tolist() == [4]


def test_the_salesforce_flow_writes_push_count_on_opportunities(fake, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "examples" / "salesforce.yaml"
    raw = yaml.safe_load(example.read_text())
    raw["sources"][0].update(domain=fake.server.url, ca_bundle=fake.server.ca_path)
    raw["sources"][0].pop("where", None)
    raw["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    raw.setdefault("targets", {})["max_pushes"] = 3
    path = tmp_path / "salesforce.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    loaded = load_config(path, env={"SF_CLIENT_ID": fake.client_id, "SF_CLIENT_SECRET": fake.client_secret})
    result = run_pipeline(path, AS_OF, loaded=loaded)
    ws = openpyxl.load_workbook(result.outputs[0], read_only=True)["Opportunities"]
    rows = list(ws.iter_rows(values_only=True))
    col = rows[0].index("push_count")
    ids = rows[0].index("opportunity_id")
    got = {r[ids]: r[col] for r in rows[1:]}
    assert got[oid(2)] == 3 and got[oid(5)] == 0
    assert np.int64(got[oid(1)]) == 0
