"""A hand-computed case (tests/data/hand_case, README there): every metric, flag and derived cell.

Checked twice: straight through canonicalize + build_analytics, and through the CLI into the
workbook, read back with openpyxl.
"""

from __future__ import annotations

import math
import shutil
from datetime import date
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from config.loader import load_config
from config.models import AppConfig
from transforms.analytics import build_analytics
from transforms.canonical import canonicalize, canonicalize_history

CASE = Path(__file__).parents[1] / "data" / "hand_case"
AS_OF = date(2026, 5, 20)


def expected_metrics() -> pd.DataFrame:
    return pd.read_csv(CASE / "expected_metrics.csv", dtype={"key": str}, keep_default_na=False,
                       converters={"value": lambda v: float(v) if v != "" else math.nan})


def _same(got: float | None, want: float) -> bool:
    if math.isnan(want):
        return got is None or (isinstance(got, float) and math.isnan(got))
    return got is not None and math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def analytics():
    cfg: AppConfig = load_config(CASE / "config.yaml").config
    raw = pd.read_csv(CASE / "deals.csv", dtype=str, keep_default_na=False)
    raw["_row"] = range(2, len(raw) + 2)
    res = canonicalize(raw, source="crm", stages=cfg.pipeline.stages, stage_map={}, tz=cfg.tz)
    assert res.rejected.empty
    hist = canonicalize_history(pd.read_csv(CASE / "stage_history.csv", dtype=str), source="crm", tz=cfg.tz,
                                stages=cfg.pipeline.stages, stage_map={})
    return build_analytics(res.loaded, hist, cfg, AS_OF)


def test_every_metric_cell(analytics) -> None:
    exp = expected_metrics()
    got = analytics.metrics.set_index(["metric", "scope", "key"])["value"]
    assert len(got) == len(exp), "the table has exactly the expected rows"
    wrong = [(m, s, k, got.get((m, s, k)), v) for m, s, k, v in exp.itertuples(index=False)
             if (m, s, k) not in got.index or not _same(got[(m, s, k)], v)]
    assert wrong == []


def test_flags(analytics) -> None:
    exp = pd.read_csv(CASE / "expected_flags.csv", dtype=str)
    got = analytics.flags[["rule", "check", "severity", "scope", "key"]]
    assert sorted(map(tuple, got.to_numpy().tolist())) == sorted(map(tuple, exp.to_numpy().tolist()))
    sev = got["severity"].map({"high": 0, "medium": 1, "low": 2}).tolist()
    assert sev == sorted(sev)


def test_opportunities_derived_columns(analytics) -> None:
    exp = pd.read_csv(CASE / "expected_opportunities.csv", dtype=str, keep_default_na=False)
    opp = analytics.opportunities
    assert analytics.excluded_future == 1 and len(opp) == 21
    opp = opp[opp["status"] == "open"].set_index("opportunity_id")
    assert sorted(opp.index) == sorted(exp["opportunity_id"])
    for r in exp.itertuples(index=False):
        o = opp.loc[r.opportunity_id]
        assert (o["status"], o["stage"], o["stage_entered_date"].date().isoformat(), int(o["days_in_stage"]),
                int(o["age_days"]), str(bool(o["stage_entered_estimated"])), o["flags"]) == (
            r.status, r.stage, r.stage_entered_date, int(r.days_in_stage), int(r.age_days),
            r.stage_entered_estimated, r.flags), r.opportunity_id


def test_funnel_and_summary(analytics) -> None:
    funnel = next(s for s in analytics.sheets if s.name == "Funnel").frame
    assert funnel["reached"].tolist() == [20, 17, 15, 12, 9]
    assert funnel["advanced"].tolist() == [17, 15, 12, 9, 6]
    assert next(s for s in analytics.sheets if s.name == "Funnel").notes[0].startswith("1 lost deal(s)")
    kpi = analytics.summary.kpis.set_index("metric")
    assert kpi.loc["open_value", "value"] == 35400.0
    owners = next(s for s in analytics.sheets if s.name == "Owners").frame.set_index("owner")
    # ann: deal 3 (4 checks) + deal 4 (past_due, high); bob: deals 5, 6, 7 (2), 18 (2); cy: its M1 owner flag
    assert owners.loc["ann", ["flags_high", "flags_medium", "flags_low", "flags_total"]].tolist() == [1, 3, 1, 5]
    assert owners.loc["bob", ["flags_high", "flags_medium", "flags_low", "flags_total"]].tolist() == [0, 5, 1, 6]
    assert owners.loc["cy", ["flags_high", "flags_medium", "flags_low", "flags_total"]].tolist() == [0, 1, 0, 1]
    assert owners.loc["(no owner)", "flags_total"] == 1


def test_cli_workbook_metrics_sheet(tmp_path) -> None:
    pytest.importorskip("flows.cli")
    from flows.cli import main

    work = tmp_path / "hand_case"
    shutil.copytree(CASE, work)
    assert main(["run", "--config", str(work / "config.yaml"), "--as-of", AS_OF.isoformat(), "--no-prefect"]) == 0
    book = work / "out" / f"hand_case {AS_OF.isoformat()}.xlsx"
    wb = openpyxl.load_workbook(book, read_only=True)
    rows = list(wb["Metrics"].iter_rows(values_only=True))
    header = list(rows[0])
    assert header[:7] == ["metric", "scope", "key", "value", "unit", "period_start", "period_end"]
    cells = {(r[0], r[1], str(r[2])): r[3] for r in rows[1:]}
    exp = expected_metrics()
    assert len(cells) == len(exp)
    wrong = [(m, s, k, cells.get((m, s, k)), v) for m, s, k, v in exp.itertuples(index=False)
             if not _same(cells.get((m, s, k)), v)]
    assert wrong == []
    flags = list(wb["Flags"].iter_rows(values_only=True))
    assert len(flags) - 1 == len(pd.read_csv(CASE / "expected_flags.csv"))


def test_cli_two_runs_fill_trends_and_changes(tmp_path) -> None:
    """Two CLI runs with a file state store: the second workbook has both dates in Trends and the
    one change between them (deal 8 was created on 2026-05-19)."""
    pytest.importorskip("flows.cli")
    from flows.cli import main

    work = tmp_path / "hand_case"
    shutil.copytree(CASE, work)
    text = (work / "config.yaml").read_text()
    (work / "config.yaml").write_text(text.replace('state:\n  url: "sqlite:///:memory:"\n', ""))
    for day in ("2026-05-13", "2026-05-20"):
        assert main(["run", "--config", str(work / "config.yaml"), "--as-of", day, "--no-prefect"]) == 0
    wb = openpyxl.load_workbook(work / "out" / "hand_case 2026-05-20.xlsx", read_only=True)
    trends = list(wb["Trends"].iter_rows(values_only=True))
    col = trends[0].index("open_deals")
    assert [(r[0].date().isoformat(), r[col]) for r in trends[1:]] == [("2026-05-13", 11), ("2026-05-20", 12)]
    changes = list(wb["Changes"].iter_rows(values_only=True))
    assert [(r[0], r[1]) for r in changes[1:]] == [("new", "crm:8")]
