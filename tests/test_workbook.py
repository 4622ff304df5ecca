"""The xlsx writer, read back with openpyxl: sheets, tables, types, formats, injection, limits."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import openpyxl
import pandas as pd
import pytest

from config.workbook import ChartSpec, SheetData, SummaryData
from connectors.workbook.xlsx_writer import CUT_MARKER, WriteStats, split_sheets, write_workbook

INJECTIONS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+SUM(1,2)", "-2+3", "@cmd", "\t=1+1", "\r=1+1",
              "=cmd|' /C calc'!A0", "DDE(\"cmd\";\"/C calc\";\"x\")"]


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "opportunity_id": ["1", "2", "3"],
        "name": ["Acme", "  padded ", "a & b <c>"],
        "amount": [1200.5, np.nan, 3_000_000.0],
        "created_date": pd.to_datetime(["2026-01-31", None, "2026-03-04"]),
        "won": [True, False, True],
        "deals": [1, 2, 3],
        "win_rate": [0.25, np.nan, 1.0],
    })


@pytest.fixture()
def book(tmp_path):
    path = tmp_path / "out" / "book.xlsx"
    summary = SummaryData(
        title="Pipeline 2026-Q1",
        kpis=pd.DataFrame({"metric": ["open_value"], "value": [1200.5], "previous": [1000.0], "change": [200.5],
                           "unit": ["currency"]}),
        flag_counts=pd.DataFrame({"rule": ["M4"], "check": ["past_due"], "severity": ["high"], "count": [2]}),
        charts=[ChartSpec("Amount by deal", "column", "Opportunities", "opportunity_id", ["amount"])],
    )
    stats = write_workbook(path, sheets=[
        SheetData("Opportunities", _frame(), {"amount": "currency", "win_rate": "ratio"}),
        SheetData("Rejected", pd.DataFrame({"source": pd.Series(dtype=object), "row": pd.Series(dtype=int),
                                            "reason": pd.Series(dtype=object)})),
    ], summary=summary)
    return path, stats


def test_sheet_order_tables_and_header(book):
    path, stats = book
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Summary", "Opportunities", "Rejected"]
    assert stats.rows == {"Opportunities": 3, "Rejected": 0}
    ws = wb["Opportunities"]
    assert {name: ref for name, ref in ws.tables.items()} == {"tblOpportunities": "A1:G4"}
    assert ws.freeze_panes == "A2"
    assert ws.tables["tblOpportunities"].autoFilter is not None
    assert [c.value for c in ws[1]] == list(_frame().columns)
    assert dict(wb["Rejected"].tables.items()) == {"tblRejected": "A1:C2"}
    assert not list(path.parent.glob(".pipeline-sync-*")), "no temp folder left behind"


def test_cell_types_and_formats(book):
    path, _ = book
    ws = openpyxl.load_workbook(path)["Opportunities"]
    row2 = ws[2]
    assert row2[1].value == "Acme" and row2[1].data_type == "s"
    assert row2[2].value == 1200.5 and row2[2].number_format == '"$"#,##0.00'
    assert row2[3].value == datetime(2026, 1, 31) and row2[3].is_date and row2[3].number_format == "yyyy-mm-dd"
    assert row2[4].value is True and row2[4].data_type == "b"
    assert row2[5].value == 1 and row2[5].number_format == "#,##0"
    assert row2[6].value == 0.25 and row2[6].number_format == "0.0%"
    row3 = ws[3]
    assert row3[1].value == "  padded "  # whitespace preserved
    assert row3[2].value is None and row3[3].value is None and row3[6].value is None  # missing -> empty, never 0
    assert ws[4][1].value == "a & b <c>"


def test_summary_has_kpis_and_chart(book):
    path, _ = book
    ws = openpyxl.load_workbook(path)["Summary"]
    values = [c.value for row in ws.iter_rows() for c in row if c.value is not None]
    assert "Pipeline 2026-Q1" in values and "open_value" in values and 1200.5 in values and "past_due" in values
    assert len(ws._charts) == 1


@pytest.mark.parametrize("text", INJECTIONS)
def test_text_never_becomes_a_formula(tmp_path, text):
    path = tmp_path / "inj.xlsx"
    write_workbook(path, sheets=[SheetData("Opportunities", pd.DataFrame({"name": [text], "owner": [text]}))])
    ws = openpyxl.load_workbook(path)["Opportunities"]
    for cell in ws[2]:
        assert cell.data_type == "s", f"{text!r} became {cell.data_type}"
        assert cell.value == text


def test_long_text_is_cut_with_marker_and_counted(tmp_path):
    path = tmp_path / "long.xlsx"
    long = "x" * 40_000
    stats = write_workbook(path, sheets=[SheetData("Opportunities", pd.DataFrame({"name": [long, "short"]}))])
    ws = openpyxl.load_workbook(path)["Opportunities"]
    value = ws["A2"].value
    assert len(value) == 32_767 and value.endswith(CUT_MARKER)
    assert ws["A3"].value == "short"
    assert stats.cut_cells == 1


def test_split_over_the_row_limit_keeps_every_row():
    frame = pd.DataFrame({"id": range(25)})
    stats = WriteStats()
    parts = split_sheets([SheetData("Opportunities", frame)], stats, max_rows=10)
    assert [p.name for p in parts] == ["Opportunities", "Opportunities (2)", "Opportunities (3)"]
    assert sum(len(p.frame) for p in parts) == 25
    assert pd.concat([p.frame for p in parts])["id"].tolist() == list(range(25))
    assert "split into 3 sheets" in stats.notes[0]


def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "book.xlsx"
    path.write_bytes(b"previous workbook")
    frame = pd.DataFrame({"x": [1]})
    calls: list[int] = []

    def about(written: WriteStats) -> SheetData:  # fails once the other sheets are in the zip
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("About failed mid-write")
        return SheetData("About", pd.DataFrame({"key": ["a"]}))

    with pytest.raises(RuntimeError, match="About failed mid-write"):
        write_workbook(path, sheets=[SheetData("Opportunities", frame)], last=about)
    assert path.read_bytes() == b"previous workbook"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]
