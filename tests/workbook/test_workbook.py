"""The xlsx writer, read back with openpyxl: sheets, tables, types, formats, injection, limits."""

from __future__ import annotations

import re
import struct
import zipfile
from datetime import datetime

import numpy as np
import openpyxl
import pandas as pd
import pytest

from config.workbook import ChartSpec, SheetData, SummaryData
from connectors.workbook import names, xlsx_writer
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


# ----------------------------------------------------------------------------- hostile names and text (issue 20)

EMOJI = "\U0001F600"


def _read(path) -> dict[str, tuple[list[object], list[str]]]:
    """{sheet: (header row, its tables)} as openpyxl reads them."""
    wb = openpyxl.load_workbook(path)
    return {ws.title: ([c.value for c in ws[1]], list(ws.tables)) for ws in wb.worksheets}


@pytest.mark.parametrize(("sheets", "expected"), [
    pytest.param([SheetData("Data", pd.DataFrame({"name": ["a\ud800b"]}))], {"Data": (["name"], ["tblData"])},
                 id="lone surrogate in text"),
    pytest.param([SheetData("Data", pd.DataFrame({"x\ud800": [1]}))], {"Data": (["x\ufffd"], ["tblData"])},
                 id="lone surrogate in a header"),
    pytest.param([SheetData("S\ud800", pd.DataFrame({"x": [1]}))], {"S\ufffd": (["x"], ["tblS_"])},
                 id="lone surrogate in a sheet name"),
    pytest.param([SheetData("Raw", pd.DataFrame([[1, 2, 3]], columns=["Note", "Note", "Note (2)"]))],
                 {"Raw": (["Note", "Note (3)", "Note (2)"], ["tblRaw"])}, id="two identical headers"),
    pytest.param([SheetData("Raw", pd.DataFrame([[1, 2]], columns=["Note", "NOTE"]))],
                 {"Raw": (["Note", "NOTE (2)"], ["tblRaw"])}, id="headers differing only in case"),
    pytest.param([SheetData("Raw-CRM", pd.DataFrame({"x": [1]})), SheetData("Raw_CRM", pd.DataFrame({"x": [1]}))],
                 {"Raw-CRM": (["x"], ["tblRaw_CRM"]), "Raw_CRM": (["x"], ["tblRaw_CRM_2"])}, id="Raw-CRM and Raw_CRM"),
    pytest.param([SheetData(EMOJI * 31, pd.DataFrame({"x": [1]}))], {EMOJI * 15: (["x"], ["tbl" + "_" * 15])},
                 id="31-character emoji sheet name"),
    pytest.param([SheetData("2026", pd.DataFrame({"x": [1]})), SheetData("history", pd.DataFrame({"x": [1]}))],
                 {"2026": (["x"], ["tbl_2026"]), "history (2)": (["x"], ["tblhistory__2_"])},
                 id="cell-reference table name and reserved sheet name"),
    pytest.param([SheetData("Data", pd.DataFrame({"": [1], " ": [2], "a\tb\rc\nd\x01": [3]}))],
                 {"Data": (["Column1", "Column2", "a b c d "], ["tblData"])}, id="blank and control-character headers"),
    pytest.param([SheetData("Opportunities", pd.DataFrame({"x": [1]})), SheetData("Opportunities", pd.DataFrame({"x": [2]}))],
                 {"Opportunities": (["x"], ["tblOpportunities"]),
                  "Opportunities (2)": (["x"], ["tblOpportunities__2_"])}, id="two sheets with one name"),
])
def test_hostile_names_write_a_valid_workbook(tmp_path, sheets, expected):
    """Each of these crashed the writer or lost a table before issue 20."""
    path = tmp_path / "hostile.xlsx"
    stats = write_workbook(path, sheets=sheets)
    assert _read(path) == expected
    assert stats.sheets == list(expected)


def test_every_fix_is_said_once_for_the_about_sheet(tmp_path):
    seen: list[list[str]] = []

    def about(written: WriteStats) -> SheetData:
        seen.append(list(written.fixes))
        return SheetData("About", pd.DataFrame({"note": written.fixes or [""]}))

    stats = write_workbook(tmp_path / "b.xlsx", sheets=[
        SheetData("History", pd.DataFrame([[1, 2]], columns=["Note", "NOTE"])),
        SheetData("About", pd.DataFrame({"x": [1]}))], last=about)
    assert stats.fixes == [
        "sheet 'History' is written as 'History (2)' (Excel's rules for sheet names)",
        "sheet 'History (2)': 1 column header(s) renamed to names an Excel table accepts: 'NOTE' → 'NOTE (2)'",
        "sheet 'About' is written as 'About (2)' (Excel's rules for sheet names)",
    ]
    assert seen == [[], stats.fixes]  # laid out from WriteStats(), written from the real stats
    assert stats.sheets == ["History (2)", "About (2)", "About"]
    assert [c.value for c in openpyxl.load_workbook(tmp_path / "b.xlsx")["About"]["A"]][1:] == stats.fixes


def test_table_column_names_read_back_as_their_header_cells(tmp_path):
    headers = ["Deal_x0020_Name", 'a&b<c>"d', "é_x00e9_", "plain"]
    write_workbook(tmp_path / "t.xlsx", sheets=[SheetData("Data", pd.DataFrame([[1, 2, 3, 4]], columns=headers))])
    ws = openpyxl.load_workbook(tmp_path / "t.xlsx")["Data"]
    assert [c.value for c in ws[1]] == headers
    assert [c.name for c in ws.tables["tblData"].tableColumns] == headers  # openpyxl decodes _xHHHH_ here


@pytest.mark.parametrize(("text", "cut"), [
    ("x" * 40_000, True),
    (EMOJI + "a" * 40_000, True),
    (EMOJI * 20_000, True),
    ("a" * 32_766 + EMOJI, True),  # 32,768 units: cut before the emoji, never inside it
    ("a" * 32_765 + EMOJI, False),  # exactly 32,767 units
    (EMOJI * 16_383 + "a", False),
])
def test_text_is_cut_at_32767_utf16_units(tmp_path, text, cut):
    path = tmp_path / "cut.xlsx"
    stats = write_workbook(path, sheets=[SheetData("Data", pd.DataFrame({"t": [text, text, "short"]}))])
    values = [c.value for c in openpyxl.load_workbook(path)["Data"]["A"]][1:]
    units = len(values[0].encode("utf-16-le")) // 2
    if cut:
        keep = 32_767 - len(CUT_MARKER)
        head = text.encode("utf-16-le")[: 2 * keep]
        head = head[:-2] if 0xD8 <= head[-1] <= 0xDB else head
        assert values[:2] == [head.decode("utf-16-le") + CUT_MARKER] * 2 and units <= 32_767
    else:
        assert values[:2] == [text, text] and units == len(text.encode("utf-16-le")) // 2
    assert values[2] == "short" and stats.cut_cells == (2 if cut else 0)


def test_columns_past_xfd_continue_on_another_sheet(tmp_path):
    n = 16_384 + 20
    frame = pd.DataFrame([[f"r{r}c{c}" for c in range(n)] for r in range(2)], columns=[f"h{c}" for c in range(n)])
    frame["h1"] = [1.5, 2.5]
    stats = write_workbook(tmp_path / "wide.xlsx", sheets=[SheetData("Wide", frame, {"h1": "number"})])
    assert stats.sheets == ["Wide", "Wide (cols 2)"] and stats.rows == {"Wide": 2, "Wide (cols 2)": 2}
    assert stats.fixes == [f"sheet 'Wide': {n:,} columns are more than a sheet holds (16,384); columns "
                           f"16,385-{n:,} are on sheet 'Wide (cols 2)' (same rows)"]
    wb = openpyxl.load_workbook(tmp_path / "wide.xlsx", read_only=True)
    first = [list(r) for r in wb["Wide"].iter_rows(values_only=True)]
    more = [list(r) for r in wb["Wide (cols 2)"].iter_rows(values_only=True)]
    assert [a + b for a, b in zip(first, more, strict=True)] == [list(frame.columns), *frame.values.tolist()]
    assert len(first[0]) == 16_384 and wb["Wide"].max_column == 16_384


# ----------------------------------------------------------------------------- chart caches


def _chart_points(path) -> list[tuple[list[str], list[str]]]:
    """Per series of the first chart: (category cache, value cache) as (idx:value) strings."""
    with zipfile.ZipFile(path) as z:
        xml = z.read("xl/charts/chart1.xml").decode()
    out = []
    for ser in re.findall(r"<c:ser>.*?</c:ser>", xml, re.S):
        cat, val = re.search(r"<c:cat>(.*?)</c:cat>", ser, re.S).group(1), re.search(r"<c:val>(.*?)</c:val>", ser, re.S).group(1)
        out.append([re.search(r'<c:ptCount val="(\d+)"/>', part).group(1) + ":" + ",".join(
            f"{i}={v}" for i, v in re.findall(r'<c:pt idx="(\d+)"><c:v>(.*?)</c:v></c:pt>', part)) for part in (cat, val)])
    return out


def test_chart_caches_hold_the_rows_they_draw(tmp_path):
    funnel = pd.DataFrame({"stage": ["Lead", "Proposal & <Demo>", "Won", "Lost"], "deals": [10, np.nan, 3, 1],
                           "value": [1000.5, 2000.0, 1e20, 0.0]})
    months = pd.DataFrame({"month": pd.to_datetime(["2026-01-01", "2026-02-01"]), "won": [5.0, 7.25]})
    summary = SummaryData("T", pd.DataFrame({"metric": ["m"], "value": [1.0]}), pd.DataFrame({"rule": ["r"]}), charts=[
        ChartSpec("Funnel", "column", "Funnel", "stage", ["deals", "value"], rows=3),
        ChartSpec("Won", "line", "Won by month", "month", ["won"])])
    write_workbook(tmp_path / "c.xlsx", sheets=[SheetData("Funnel", funnel), SheetData("Won by month", months)],
                   summary=summary)
    assert _chart_points(tmp_path / "c.xlsx") == [
        ["3:0=Lead,1=Proposal &amp; &lt;Demo&gt;,2=Won", "3:0=10,2=3"],  # a missing value is no point
        ["3:0=Lead,1=Proposal &amp; &lt;Demo&gt;,2=Won", "3:0=1000.5,1=2000,2=1e+20"],
    ]
    with zipfile.ZipFile(tmp_path / "c.xlsx") as z:
        line = z.read("xl/charts/chart2.xml").decode()
    assert re.findall(r"<c:v>([^<]*)</c:v>", line) == ["won", "46023", "46054", "5", "7.25"]  # name, dates, values


# ----------------------------------------------------------------------------- ZIP64


def _zip64_members(path) -> list[str]:
    """Members whose local header carries a ZIP64 extra field (header id 1)."""
    out = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as fh:
        for info in z.infolist():
            fh.seek(info.header_offset)
            name_len, extra_len = struct.unpack_from("<HH", fh.read(30), 26)
            fh.seek(name_len, 1)
            extra, i = fh.read(extra_len), 0
            while i + 4 <= len(extra):
                header_id, size = struct.unpack_from("<HH", extra, i)
                if header_id == 1:
                    out.append(info.filename)
                i += 4 + size
    return out


def _two_sheets(long_rows: int, short_rows: int = 0, width: int = 100) -> list[SheetData]:
    big = pd.DataFrame({"id": range(short_rows + long_rows),
                        "text": ["s"] * short_rows + [f"{'b' * width} {i}" for i in range(long_rows)]})
    return [SheetData("Big", big), SheetData("Small", pd.DataFrame({"x": [1, 2]}))]


def test_no_member_is_written_with_zip64_it_does_not_need(book):
    path, _ = book
    assert _zip64_members(path) == []


def test_a_sheet_estimated_near_the_limit_alone_gets_zip64(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx_writer, "ZIP64_LIMIT", 100_000)  # stands for zipfile's 2 GiB
    path = tmp_path / "z.xlsx"
    write_workbook(path, sheets=_two_sheets(long_rows=2_000))
    assert _zip64_members(path) == ["xl/worksheets/sheet1.xml"]
    rows = list(openpyxl.load_workbook(path, read_only=True)["Big"].iter_rows(values_only=True))
    assert len(rows) == 2_001 and rows[-1] == (1_999, f"{'b' * 100} 1999")


def test_a_sheet_that_outgrows_its_estimate_is_written_again_with_zip64(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx_writer, "ZIP64_LIMIT", 400_000)  # over twice the estimate (~0.3 MB), under the size (~0.7 MB)
    monkeypatch.setattr(xlsx_writer, "CHUNK_ROWS", 100)  # the estimate sees 100 short rows, then long ones follow
    calls: list[int] = []

    def about(written: WriteStats) -> SheetData:
        calls.append(written.cut_cells)
        return SheetData("About", pd.DataFrame({"cut": [written.cut_cells]}))

    sheets = _two_sheets(long_rows=2_000, short_rows=100, width=300)
    sheets.append(SheetData("Cut", pd.DataFrame({"t": ["x" * 40_000]})))
    path = tmp_path / "z.xlsx"
    path.write_bytes(b"previous")
    stats = write_workbook(path, sheets=sheets, last=about)
    assert calls == [0, 0, 1] and stats.cut_cells == 1  # attempt 1 stopped in sheet1; the cut counted once
    assert _zip64_members(path) == ["xl/worksheets/sheet1.xml"]
    rows = list(openpyxl.load_workbook(path, read_only=True)["Big"].iter_rows(values_only=True))
    assert len(rows) == 2_101 and rows[1] == (0, "s") and rows[-1] == (2_099, f"{'b' * 300} 1999")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.xlsx"]


# ----------------------------------------------------------------------------- names.py


@pytest.mark.parametrize(("name", "is_ref"), [
    ("tbl2026", True), ("A1", True), ("xfd1048576", True), ("ZZZ99999999", True), ("R1C1", True), ("rc", True),
    ("C7", True), ("R", True), ("tbl_2026", False), ("tblData", False), ("tblR1C1", False), ("A", False),
    ("tblA1", False), ("", False),
])
def test_cell_reference_names(name, is_ref):
    assert names.is_cell_reference(name) is is_ref


@pytest.mark.parametrize(("text", "limit", "cut"), [
    ("abc", 2, "ab"), (EMOJI * 3, 5, EMOJI * 2), ("a" + EMOJI * 3, 4, "a" + EMOJI), (EMOJI, 1, ""),
    ("é" * 10, 10, "é" * 10), ("é" * 10, 3, "ééé"), ("a\ud800b", 2, "a"),
])
def test_cut_utf16_never_splits_a_pair(text, limit, cut):
    assert names.cut_utf16(text, limit) == cut
    assert names.utf16_len(cut) <= limit


@pytest.mark.parametrize(("headers", "clean"), [
    (["id", "name"], ["id", "name"]),
    (["Note", "NOTE", "note (2)"], ["Note", "NOTE (3)", "note (2)"]),
    (["ı", "I", "ß", "SS"], ["ı", "I (2)", "ß", "SS (2)"]),  # clashes however Excel folds case
    (["a\x00b", "\ufffe", "x\ud800"], ["a b", "Column2", "x\ufffd"]),
    (["H" * 300, "H" * 300], ["H" * 255, "H" * 251 + " (2)"]),
    (["_x0041_" * 40], ["_x0041_" * 19 + "_x0041"]),  # escaped (`_x005F_x0041_` each): 253 of 255 units
    ([EMOJI * 200], [EMOJI * 127]),
])
def test_clean_headers(headers, clean):
    got = names.clean_headers(headers)
    assert got == clean
    assert all(names.utf16_len(names.xstring(h)) <= 255 for h in got)


@pytest.mark.parametrize(("wanted", "sheet", "table"), [
    (["Data"], ["Data"], ["tblData"]),
    (["2026", "R1C1"], ["2026", "R1C1"], ["tbl_2026", "tblR1C1"]),
    (["History", "HISTORY"], ["History (2)", "HISTORY (3)"], ["tblHistory__2_", "tblHISTORY__3_"]),
    (["a/b", "a?b", "'q'", "", "[x]"], ["a_b", "a_b (2)", "q", "Sheet", "_x_"],
     ["tbla_b", "tbla_b__2_", "tblq", "tblSheet", "tbl_x_"]),
    (["x" * 40, "x" * 40], ["x" * 31, "x" * 27 + " (2)"], ["tbl" + "x" * 31, "tbl" + "x" * 27 + "__2_"]),
    (["Raw-CRM", "Raw_CRM", "raw crm"], ["Raw-CRM", "Raw_CRM", "raw crm"], ["tblRaw_CRM", "tblRaw_CRM_2", "tblraw_crm_3"]),
    (["a_x0041_b"], ["a_x0041-b"], ["tbla_x0041.b"]),  # no literal _xHHHH_ for a reader to decode
])
def test_sheet_and_table_names(wanted, sheet, table):
    sheets, tables = names.SheetNames(), names.TableNames()
    got = [sheets.claim(w) for w in wanted]
    assert got == sheet
    assert [tables.claim(s) for s in got] == table


@pytest.mark.parametrize(("text", "escaped"), [
    ("Deal_x0020_Name", "Deal_x005F_x0020_Name"),
    ("_x0041_x0042_", "_x005F_x0041_x005F_x0042_"),  # the underscore that ends one escape starts the next
    ("_x004_", "_x004_"), ("_X0041_", "_X0041_"), ("plain_x", "plain_x"),
])
def test_xstring_escapes_every_underscore_that_starts_an_escape(text, escaped):
    assert names.xstring(text) == escaped
    assert names.column_attribute(text + '&"') == escaped + "&amp;&quot;"
