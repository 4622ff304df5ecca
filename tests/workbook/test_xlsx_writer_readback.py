"""The streamed data rows read back in place with every reader: gaps in every column type, cells
without a reference, shared strings across chunks, escapes, cuts."""

from __future__ import annotations

import re
import zipfile
from datetime import date, datetime

import numpy as np
import openpyxl
import pandas as pd
import pytest
from python_calamine import CalamineWorkbook

from config.workbook import SheetData
from connectors.workbook import xlsx_writer
from connectors.workbook.xlsx_writer import CUT_MARKER, write_workbook
from transforms.workbook_layout import excel_limits

OWNERS = ["Ann", "  Bob ", "C&D <x>", "=1+1", "_x0041_", "tab\tend", "cr\rlf", "ctrl\x01x", "é ü 中文 😀", "-2+3",
          "@cmd", "a\nb", "lone\ud800surrogate", "astral \U0001F600 \U00020000"]
EMOJI = "\U0001F600"
FORMATS = {"amount": "currency", "won": "bool", "rate": "ratio", "seen": "datetime", "close": "date"}
N = 240


def _frame() -> pd.DataFrame:
    """Gaps in every column type, in the first and last columns too, and one row with nothing."""
    ids = [f"ID-{i:05d}" + ("" if i % 11 else " & <tail> ") for i in range(N)]
    frame = pd.DataFrame({
        "id": pd.Series([None if i % 7 == 3 else v for i, v in enumerate(ids)], dtype="str"),  # all distinct
        "owner": pd.Series([None if i % 5 == 1 else ("" if i % 13 == 0 else OWNERS[i % len(OWNERS)])
                            for i in range(N)], dtype=object),  # repeats: shared strings
        "amount": [np.nan if i % 3 == 0 else (1e20 if i == 4 else (-0.5 if i == 5 else i / 3)) for i in range(N)],
        "deals": pd.array([None if i % 4 == 2 else i * 1000 for i in range(N)], dtype="Int64"),
        "close": pd.to_datetime([None if i % 4 == 0 else f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(N)]),
        "seen": pd.to_datetime([None if i % 6 == 0 else f"2026-03-04 {i % 24:02d}:{i % 60:02d}:00" for i in range(N)]),
        "won": pd.Series([None if i % 9 == 4 else bool(i % 2) for i in range(N)], dtype=object),
        "rate": [np.nan if i % 10 == 7 else i / N for i in range(N)],
        "note": pd.Series([({8: "x" * 40_000, 25: EMOJI * 20_000}.get(i, f"note {i}")) if i % 17 == 8 else None
                           for i in range(N)], dtype=object),  # sparse: nearly every value follows a gap; 2 cut
        "last": pd.Series([f"L{i % 3}" if i % 29 == 0 else None for i in range(N)], dtype="str"),
    })
    frame.iloc[100] = None
    return frame


def _expected_text(value: object, reader: str) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    text = re.sub(r"[\ud800-\udfff]", "\ufffd", str(value))  # a lone surrogate: U+FFFD
    units = text.encode("utf-16-le")
    if len(units) > 2 * 32_767:  # Excel's limit counts UTF-16 units; a pair is never split
        head = units[: 2 * (32_767 - len(CUT_MARKER))]
        text = head[: -2 if 0xD8 <= head[-1] <= 0xDB else None].decode("utf-16-le") + CUT_MARKER
    if "openpyxl" in reader:  # openpyxl leaves the _xHHHH_ escape of an illegal character as it is
        text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", lambda m: f"_x{ord(m.group(0)):04X}_", text)
    return text


def _expected(frame: pd.DataFrame, reader: str) -> list[list[object]]:
    rows = []
    for rec in frame.itertuples(index=False):
        row = []
        for col, v in zip(frame.columns, rec, strict=True):
            if col in ("id", "owner", "note", "last"):
                row.append(_expected_text(v, reader))
            elif pd.isna(v):
                row.append(None)
            elif col in ("close", "seen"):
                row.append(pd.Timestamp(v).to_pydatetime())
            elif col == "won":
                row.append(bool(v))
            else:
                row.append(float(v))
        rows.append(row)
    return rows


def _normalise(rows: list[list[object]], width: int) -> list[list[object]]:
    out = []
    for r in rows:
        r = [None if v == "" else v for v in list(r) + [None] * (width - len(r))]
        r = [datetime(v.year, v.month, v.day) if isinstance(v, date) and not isinstance(v, datetime) else v for v in r]
        r = [v.replace(microsecond=0) if isinstance(v, datetime) else v for v in r]
        r = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in r]
        out.append(r[:width])
    return out


def _read(path, reader: str) -> list[list[object]]:
    if reader in ("openpyxl", "openpyxl-read-only"):
        wb = openpyxl.load_workbook(path, read_only=reader == "openpyxl-read-only")
        rows = [[c.value for c in row] for row in wb["Data"].iter_rows()]
        wb.close()
        return rows
    if reader == "calamine":
        return CalamineWorkbook.from_path(str(path)).get_sheet_by_name("Data").to_python(skip_empty_area=False)
    df = pd.read_excel(path, sheet_name="Data", header=None, engine=reader.split("-")[1])
    return [[None if pd.isna(v) else v for v in row] for row in df.itertuples(index=False)]


@pytest.fixture()
def written(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx_writer, "CHUNK_ROWS", 64)  # several chunks: shared strings and gaps cross them
    path = tmp_path / "gaps.xlsx"
    frame = _frame()
    stats = write_workbook(path, sheets=[SheetData("Data", frame, FORMATS)])
    return path, frame, stats


@pytest.mark.parametrize("reader", ["openpyxl", "openpyxl-read-only", "calamine", "pandas-openpyxl", "pandas-calamine"])
def test_every_cell_reads_back_in_its_place(written, reader):
    path, frame, _ = written
    width = frame.shape[1]
    got = _normalise(_read(path, reader), width)
    assert got[0] == list(frame.columns)
    body = got[1:]
    while len(body) < len(frame):  # trailing rows with nothing may not come back at all
        body.append([None] * width)
    assert body == _normalise(_expected(frame, reader), width)


def test_cell_types_and_formats_survive(written):
    path, frame, stats = written
    ws = openpyxl.load_workbook(path)["Data"]
    row = ws[3]  # frame row 1: every column present except the sparse ones
    assert [c.data_type for c in row[:8]] == ["s", "n", "n", "n", "d", "d", "b", "n"]
    assert row[2].number_format == '"$"#,##0.00' and row[4].number_format == "yyyy-mm-dd"
    assert row[5].number_format == "yyyy-mm-dd hh:mm" and row[7].number_format == "0.0%"
    assert ws["A5"].value is None and ws["B5"].value == "=1+1" and ws["B5"].data_type == "s"  # text, not a formula
    assert stats.cut_cells == 2 == excel_limits([SheetData("Data", frame)])[0]


def test_a_cell_without_reference_always_follows_its_neighbour(written):
    """Omitted `r` only where the position is the previous cell's + 1; no placeholder cells."""
    path, frame, _ = written
    xml = zipfile.ZipFile(path).read("xl/worksheets/sheet1.xml").decode()
    rows = re.findall(r'<row r="(\d+)"[^>]*>(.*?)</row>', xml, re.S)
    assert [int(r) for r, _ in rows] == list(range(1, len(frame) + 2))
    implied = 0
    for _, cells in rows[1:]:
        col = 0
        for ref, body in re.findall(r'<c( r="[A-Z]+\d+")?[^>]*?(/>|>)', cells):
            assert body == ">", "no empty placeholder cells"
            if ref:
                col = openpyxl.utils.column_index_from_string(re.match(r' r="([A-Z]+)', ref).group(1))
            else:
                col += 1
                implied += 1
        assert col <= frame.shape[1]
    assert implied > 1000  # most cells carry no reference
    assert rows[4][1].startswith('<c r="B5"')  # row 5: column A is missing


def test_repeated_text_is_shared_across_chunks(written):
    path, frame, _ = written
    with zipfile.ZipFile(path) as z:
        sst = z.read("xl/sharedStrings.xml").decode()
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    count, unique = (int(x) for x in re.search(r'count="(\d+)" uniqueCount="(\d+)"', sst).groups())
    assert unique == sst.count("<si>")
    assert count == sheet.count('t="s"')  # every shared-string cell, the header's too
    owners = frame["owner"].replace("", None).dropna()
    assert sst.count("<t>Ann</t>") == 1 and len(owners[owners == "Ann"]) > 4
    assert '<t xml:space="preserve">  Bob </t>' in sst and "C&amp;D &lt;x&gt;" in sst and "cr&#13;lf" in sst


def test_excel_limits_counts_long_text_of_every_kind():
    long = "x" * 40_000
    frame = pd.DataFrame({
        "a": [long, "s", None, np.nan, long],
        "b": pd.Series([long, None, "y", "", long + "z"], dtype="str"),
        "c": [1, 2, 3, 4, 5],
        "d": pd.Series([123, "x" * 33_000, None, 4.5, pd.NA], dtype=object),
        "e": pd.Series([{"k": long}, "ok", None, None, None], dtype=object),  # a non-text object, as its text
    })
    sheets = [SheetData("S", frame), SheetData("T", frame.iloc[:2])]
    assert excel_limits(sheets) == (6 + 4, [])


def _about(key_values: list[tuple[str, str]]) -> SheetData:
    return SheetData("About", pd.DataFrame(key_values, columns=["key", "value"]), {"key": "text", "value": "text"})


def test_last_sheet_is_built_from_what_the_writer_cut(tmp_path):
    path = tmp_path / "late.xlsx"
    data = pd.DataFrame({"name": ["x" * 40_000, "short", "y" * 33_000], "n": [1, 2, 3]})
    seen: list[int] = []

    def about(written: xlsx_writer.WriteStats) -> SheetData:
        seen.append(written.cut_cells)
        rows = [("run", "r1")] + ([("cells cut at 32,767 characters", str(written.cut_cells))] if written.cut_cells else [])
        return _about(rows)

    stats = write_workbook(path, sheets=[SheetData("Opportunities", data)], last=about)
    assert seen == [0, 2] and stats.cut_cells == 2
    assert stats.sheets == ["Opportunities", "About"] and stats.rows == {"Opportunities": 3, "About": 2}
    ws = openpyxl.load_workbook(path)["About"]
    assert [[c.value for c in row] for row in ws.iter_rows()] == [
        ["key", "value"], ["run", "r1"], ["cells cut at 32,767 characters", "2"]]
    assert dict(ws.tables.items()) == {"tblAbout": "A1:B3"}


def test_last_sheet_must_keep_its_columns(tmp_path):
    def about(written: xlsx_writer.WriteStats) -> SheetData:
        return SheetData("About", pd.DataFrame({"key": ["a"], **({"more": [1]} if written.cut_cells else {})}))

    with pytest.raises(ValueError, match="last sheet 'About' changed its columns"):
        write_workbook(tmp_path / "out" / "bad.xlsx", sheets=[SheetData("S", pd.DataFrame({"x": ["x" * 40_000]}))],
                       last=about)
    assert list((tmp_path / "out").iterdir()) == []  # nothing written, no temp folder left


def test_flow_about_sheet_counts_the_cut_cells(tmp_path):
    """The flow's render: the About row comes from the writer's own count, one per cut cell."""
    import yaml

    from flows.pipeline import run_pipeline

    long = "L" * 40_000
    (tmp_path / "deals.csv").write_text(
        "opportunity_id,name,owner,team,product,stage,amount,created_date,close_date\n"
        f"1,{long},Ann,East,Platform,Proposal,1000,2026-01-05,2026-04-30\n"
        "2,Beta,Bob,West,Services,Qualification,2500,2026-01-10,2026-05-15\n")
    cfg = {"timezone": "Europe/Berlin", "sources": [{"name": "crm", "type": "csv", "path": "deals.csv"}],
           "destinations": [{"type": "file", "path": "out/book.xlsx"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_pipeline(tmp_path / "c.yaml", date(2026, 3, 31))
    book = CalamineWorkbook.from_path(str(tmp_path / "out" / "book.xlsx"))
    cut = sum(1 for name in book.sheet_names for row in book.get_sheet_by_name(name).to_python()
              for v in row if isinstance(v, str) and v.endswith(CUT_MARKER))
    about = {r[0]: r[1] for r in book.get_sheet_by_name("About").to_python()}
    assert cut >= 1 and about["cells cut at 32,767 characters"] == str(cut)


def test_unhashable_values_are_written_as_their_text(tmp_path):
    path = tmp_path / "objects.xlsx"
    frame = pd.DataFrame({"raw": pd.Series([{"k": 1}, None, [1, 2], "plain", {"k": 1}, pd.NA], dtype=object)})
    write_workbook(path, sheets=[SheetData("Data", frame, {"raw": "text"})])
    got = [row[0] for row in CalamineWorkbook.from_path(str(path)).get_sheet_by_name("Data").to_python()]
    assert got == ["raw", "{'k': 1}", "", "[1, 2]", "plain", "{'k': 1}"]
