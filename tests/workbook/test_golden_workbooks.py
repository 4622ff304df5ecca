"""tests/golden_workbooks.py: the CRM examples build the same cells twice, and compare names each change."""

from __future__ import annotations

import copy

import pytest

from tests.golden_workbooks import capture, differences


@pytest.fixture(scope="module")
def books() -> dict:
    return capture(["hubspot", "tableau"])


def test_two_builds_agree_cell_for_cell_and_hold_the_examples_rows(books: dict) -> None:
    assert differences(books, capture(["hubspot", "tableau"])) == []
    hub = books["examples/hubspot"]
    assert hub["sheet_data"]["Opportunities"]["tables"] == {"tblOpportunities": "A1:AI8"}  # header + 7 deals
    assert hub["sheet_data"]["Opportunities"]["cells"]["A2"] == [["str", "101"], "General"]
    assert hub["masked"] == ["About!B2 (run id)", "About!B7 (generated at (UTC))", "About!B10 (config sha256)",
                             "About!B16 (source hubspot_main: extraction seconds)"]
    tableau = books["examples/tableau"]
    assert {"Tableau export", "Opportunities", "About"} <= set(tableau["sheets"])
    assert tableau["sheet_data"]["Opportunities"]["tables"] == {"tblOpportunities": "A1:AI68"}  # 40 view + 27 VDS


def test_compare_names_each_changed_cell_and_table(books: dict) -> None:
    changed = copy.deepcopy(books)
    sheet = changed["examples/hubspot"]["sheet_data"]["Opportunities"]
    sheet["cells"]["A2"] = [["str", "999"], "General"]
    sheet["tables"] = {"tblOpportunities": "A1:AI9"}
    del changed["examples/tableau"]
    assert differences(books, changed) == [
        "examples/hubspot: Opportunities tables {'tblOpportunities': 'A1:AI8'} -> {'tblOpportunities': 'A1:AI9'}",
        "examples/hubspot: Opportunities!A2 '101' -> '999'",
        "examples/tableau: workbook missing",
    ]
