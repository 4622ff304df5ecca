"""Targets, attainment and coverage (docs/metrics.md): metrics with and without quotas, M1
low_coverage, and the Targets sheet's editable quota cells and formulas (read back with openpyxl,
formulas and their stored values)."""

from __future__ import annotations

import math

import openpyxl
import pytest

from connectors.workbook.xlsx_writer import write_workbook
from tests.analytics_support import fired, make_cfg, run

ROWS = [
    dict(opportunity_id="w1", owner="ann", stage="Won", amount=4000, created_date="2026-03-01", close_date="2026-04-20"),
    dict(opportunity_id="w2", owner="bob", stage="Won", amount=1000, created_date="2026-03-01", close_date="2026-05-02"),
    dict(opportunity_id="o1", owner="ann", stage="Proposal", amount=5000, created_date="2026-04-01",
         close_date="2026-06-15"),
    dict(opportunity_id="o2", owner="ann", stage="Contact", amount=3000, created_date="2026-04-01",
         close_date="2026-07-15"),  # closes after the quarter: not period pipeline
    dict(opportunity_id="o3", owner="bob", stage="Closing", amount=2000, created_date="2026-04-01",
         close_date="2026-05-30"),
    dict(opportunity_id="o4", owner="bob", stage="Lead generation", amount=None, created_date="2026-04-01",
         close_date="2026-06-01"),  # no amount: counts 0
    dict(opportunity_id="o5", owner="cy", stage="Qualification", amount=1000, created_date="2026-04-01",
         close_date="2026-06-20"),
    dict(opportunity_id="l1", owner="cy", stage="Lost", amount=500, created_date="2026-03-01", close_date="2026-04-10"),
]
QUOTAS = {"quota": {"2026-Q2": 9000, "2026-Q3": 1}, "quota_by_owner": {"ann": {"2026-Q2": 5000},
                                                                       "bob": {"2026-Q2": 4000},
                                                                       "dee": {"2026-Q2": 1000}}}
# key -> (quota, won, attainment, gap, pipeline, coverage, weighted coverage)
WANT = {
    ("team", "all"): (9000, 5000, 5000 / 9000, 4000, 8000, 2.0, 4800 / 4000),
    ("owner", "ann"): (5000, 4000, 0.8, 1000, 5000, 5.0, 3.0),
    ("owner", "bob"): (4000, 1000, 0.25, 3000, 2000, 2000 / 3000, 1600 / 3000),
    ("owner", "cy"): (None, 0, None, None, 1000, None, None),
    ("owner", "dee"): (1000, 0, 0.0, 1000, 0, 0.0, 0.0),  # a quota and no deals
}
NAMES = ("quota", "won_value", "attainment", "gap_to_quota", "period_pipeline_value", "coverage", "weighted_coverage")


def values(a, scope: str, key: str) -> tuple:
    m = a.metrics.set_index(["metric", "scope", "key"])["value"]
    out = []
    for name in NAMES:
        v = m.get((name, scope, key), 0.0 if name == "won_value" else None)  # dee has no won_value row
        out.append(None if v is None or math.isnan(v) else v)
    return tuple(out)


def close(got: tuple, want: tuple) -> bool:
    return all((g is None and w is None) or (g is not None and w is not None and math.isclose(g, w, abs_tol=1e-9))
               for g, w in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def with_quota():
    return run(ROWS, "2026-05-10", make_cfg(targets=QUOTAS))


def test_metrics_with_quotas(with_quota) -> None:
    for (scope, key), want in WANT.items():
        assert close(values(with_quota, scope, key), want), (scope, key, values(with_quota, scope, key))
    m = next(s for s in with_quota.sheets if s.name == "Metrics").frame.set_index(["metric", "scope", "key"])
    assert m.loc[("coverage", "owner", "cy"), "note"] == "no targets.quota_by_owner['cy']['2026-Q2']"


def test_metrics_without_a_quota() -> None:
    a = run(ROWS, "2026-05-10")
    got = values(a, "team", "all")
    assert got == (None, 5000, None, None, 8000, None, None)
    m = next(s for s in a.sheets if s.name == "Metrics").frame.set_index(["metric", "scope", "key"])
    assert m.loc[("coverage", "team", "all"), "note"] == "no targets.quota['2026-Q2']"
    assert not fired(a, "low_coverage")
    assert not any(f == "metric_unavailable" and "quota" in msg for f, msg in zip(a.flags["check"], a.flags["message"],
                                                                                  strict=True))


def test_low_coverage_fires_for_the_team_and_owners_below_the_minimum(with_quota) -> None:
    flags = with_quota.flags[with_quota.flags["check"] == "low_coverage"]
    assert sorted(zip(flags["scope"], flags["key"], strict=True)) == [("owner", "bob"), ("owner", "dee"), ("team", "all")]
    assert set(flags["severity"]) == {"high"} and set(flags["rule"]) == {"M1"}
    team = flags[flags["scope"] == "team"].iloc[0]
    assert team["value"] == 2.0 and team["threshold"] == 3.0
    assert "8,000" in team["message"] and "4,000" in team["message"] and "51 days left" in team["message"]


@pytest.mark.parametrize(("as_of", "targets", "fires"), [
    ("2026-06-16", {}, False),  # 14 days left is not more than the grace of 14
    ("2026-06-15", {}, True),  # 15 days left
    ("2026-06-15", {"coverage_grace_days": 15}, False),
    ("2026-05-10", {"min_coverage": 2.0}, False),  # coverage 2.0 is not below 2.0
    ("2026-05-10", {"quota": {"2026-Q2": 5000}}, False),  # quota reached: gap 0, coverage empty
])
def test_low_coverage_thresholds(as_of: str, targets: dict, fires: bool) -> None:
    cfg = make_cfg(targets={"quota": {"2026-Q2": 9000}, **targets})
    a = run(ROWS, as_of, cfg)
    got = bool(((a.flags["check"] == "low_coverage") & (a.flags["scope"] == "team")).any())
    assert got is fires


def test_owner_rows_fire_only_with_quota_by_owner() -> None:
    a = run(ROWS, "2026-05-10", make_cfg(targets={"quota": {"2026-Q2": 9000}}))
    assert set(a.flags.loc[a.flags["check"] == "low_coverage", "scope"]) == {"team"}


def test_the_targets_sheet_keeps_formulas_and_their_values(with_quota, tmp_path) -> None:
    path = tmp_path / "t.xlsx"
    write_workbook(path, sheets=with_quota.sheets, summary=with_quota.summary)
    formulas = openpyxl.load_workbook(path)["Targets"]
    cached = openpyxl.load_workbook(path, data_only=True)["Targets"]
    header = [formulas.cell(4, c).value for c in range(1, 11)]
    assert header == ["scope", "key", "quota", "won_value", "attainment", "gap_to_quota", "period_pipeline_value",
                      "weighted_pipeline_value", "coverage", "weighted_coverage"]
    rows = {(formulas.cell(r, 1).value, formulas.cell(r, 2).value): r for r in range(5, 10)}
    assert set(rows) == set(WANT)
    col = {h: i + 1 for i, h in enumerate(header)}
    for key, want in WANT.items():
        r = rows[key]
        got = tuple(cached.cell(r, col[n]).value for n in NAMES)
        assert close(tuple(None if v in (None, "") else v for v in got), want), (key, got)
        assert formulas.cell(r, col["quota"]).value == want[0]  # a plain value the user may edit
        for n in ("attainment", "gap_to_quota", "coverage", "weighted_coverage"):
            assert str(formulas.cell(r, col[n]).value).startswith("=IF("), (key, n)
    team = rows["team", "all"]
    assert formulas.cell(team, col["attainment"]).value == (
        f'=IF(AND(ISNUMBER($C${team}),ISNUMBER($D${team})),IF($C${team}>0,$D${team}/$C${team},""),"")')
    assert formulas.cell(team, col["coverage"]).value == f'=IF(AND(ISNUMBER($F${team}),N($F${team})>0),$G${team}/$F${team},"")'
    assert formulas.cell(team, col["quota"]).fill.fgColor.rgb.endswith("FFF2CC")  # marked as the cell to edit
    assert formulas.cell(team, col["quota"]).protection.locked is False
    assert "tblTargetsQuota" in formulas.tables


def test_the_summary_and_trends_carry_coverage(with_quota) -> None:
    kpis = with_quota.summary.kpis.set_index("metric")["value"]
    assert kpis["coverage"] == 2.0 and kpis["quota"] == 9000
    trends = next(s for s in with_quota.sheets if s.name == "Trends").frame
    assert {"slipped_value", "coverage"} <= set(trends.columns)
    assert trends["coverage"].tolist() == [2.0]
    assert with_quota.snapshot.metrics["coverage"] == 2.0
