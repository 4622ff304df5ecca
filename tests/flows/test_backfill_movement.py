"""Backfill and issue 22: each date's Movement is against the date before it, balances, and Trends
gains slipped value and coverage per date."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import openpyxl
import pytest

from flows.backfill import backfill
from tests.flows.test_backfill import demo_files, write_config  # noqa: F401  (the module's demo fixture)

WEEKS = [date(2026, 5, 3) + timedelta(weeks=k) for k in range(4)]  # Sundays


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, demo_files):  # noqa: F811
    folder = tmp_path_factory.mktemp("bf")
    path = write_config(folder, demo_files, targets={"quota": {"2026-Q2": 400000}})
    result = backfill(path, WEEKS[0], WEEKS[-1], "week")
    assert [(o.as_of, o.status) for o in result.outcomes] == [(d, "done") for d in WEEKS]
    return result.outcomes


def movement(path: Path) -> tuple[list[tuple], list[tuple], dict[str, tuple]]:
    book = openpyxl.load_workbook(path, data_only=True)
    ws = book["Movement"]
    rows = [tuple(r) for r in ws.iter_rows(values_only=True)]
    team = {r[0]: (r[2], r[3]) for r in rows[4:14]} if len(rows) > 14 else {}
    return rows, [tuple(r) for r in book["Trends"].iter_rows(values_only=True)], team


def test_each_date_moves_from_the_date_before(outcomes) -> None:
    first, trends, _ = movement(Path(outcomes[0].output))
    assert "No earlier snapshot" in first[1][0]
    for before, o in zip(outcomes, outcomes[1:], strict=False):
        rows, _, team = movement(Path(o.output))
        assert f"from the snapshot of {before.as_of.isoformat()} (D0) to {o.as_of.isoformat()} (D1)" in rows[0][0]
        assert list(team) == ["start", "created", "pulled_in", "increased", "decreased", "won", "lost", "pushed_out",
                              "removed", "end"]
        check = next(r for r in rows if r[0] == "balance check")
        assert check[3] == 0 and check[4] == "balanced"
        head = next(i for i, r in enumerate(rows) if r[0] == "owner")
        owner_rows = [r for r in rows[head + 1:] if r[0] not in (None,) and not str(r[0]).startswith("Deals (")]
        owner_rows = owner_rows[:next(i for i, r in enumerate(owner_rows) if r[0] == "category")]
        assert owner_rows and all(r[21] == 0 for r in owner_rows)
        lines_head = next(i for i, r in enumerate(rows) if r[0] == "category" and i > head)
        lines = rows[lines_head + 1:]
        assert round(sum(r[12] or 0 for r in lines), 2) == team["start"][1]
        assert round(sum(r[13] or 0 for r in lines), 2) == team["end"][1]
        assert sum(1 for r in lines if r[0] != "unchanged") == sum(team[c][0] for c in list(team)[1:-1])
        # the previous date's end is this date's start only when W is the same period and nothing moved in between
        assert team["start"][0] > 0


def test_trends_gain_slipped_value_and_coverage_per_date(outcomes) -> None:
    _, trends, _ = movement(Path(outcomes[-1].output))
    header = trends[0]
    assert "slipped_value" in header and "coverage" in header
    by_date = {r[0].date(): r for r in trends[1:]}
    assert sorted(by_date) == WEEKS
    cov = header.index("coverage")
    assert all(isinstance(by_date[d][cov], float) for d in WEEKS)  # a quota for 2026-Q2 on every date
    slipped = header.index("slipped_value")
    assert by_date[WEEKS[0]][slipped] is None  # no earlier snapshot on the first date
    assert all(by_date[d][slipped] is not None for d in WEEKS[1:])
