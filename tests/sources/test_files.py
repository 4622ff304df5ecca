"""CSV and Excel sources: encodings, delimiters, line endings, ragged rows, header mapping, stage history."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import pytest

from config.models import DEFAULT_STAGES, CsvSourceConfig, ExcelSourceConfig
from connectors.errors import SourceDataError
from connectors.sources.files import extract_csv, extract_excel
from transforms.canonical import canonicalize

HEADER = "opportunity_id,name,stage,created_date"


def csv_source(path: Path, **kw) -> CsvSourceConfig:
    return CsvSourceConfig(name="crm", type="csv", path=str(path), **kw)


def write_bytes(tmp_path: Path, data: bytes, name: str = "deals.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def records(path: Path, **kw) -> list[dict]:
    return extract_csv(csv_source(path, **kw)).records.to_dict("records")


def canon(frame: pd.DataFrame):
    return canonicalize(frame, source="crm", stages=list(DEFAULT_STAGES), stage_map={}, tz=ZoneInfo("UTC"))


# ----------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("utf-8", f"{HEADER}\n1,Müller € Straße,Won,2026-01-05\n".encode()),
        ("utf-8-sig", b"\xef\xbb\xbf" + f"{HEADER}\n1,Müller € Straße,Won,2026-01-05\n".encode()),
        ("utf-8", b"\xef\xbb\xbf" + f"{HEADER}\n1,Müller € Straße,Won,2026-01-05\n".encode()),  # BOM tolerated
        ("cp1252", f"{HEADER}\n1,Müller € Straße,Won,2026-01-05\n".encode("cp1252")),
    ],
    ids=["utf-8", "utf-8-sig", "utf-8-with-bom", "cp1252"],
)
def test_encodings(tmp_path, encoding, data):
    path = write_bytes(tmp_path, data)
    assert records(path, encoding=encoding) == [
        {"opportunity_id": "1", "name": "Müller € Straße", "stage": "Won", "created_date": "2026-01-05",
         "_row": 2, "_error": ""}
    ]


def test_wrong_encoding_names_the_fix(tmp_path):
    path = write_bytes(tmp_path, f"{HEADER}\n1,Müller,Won,2026-01-05\n".encode("cp1252"))
    with pytest.raises(SourceDataError) as info:
        extract_csv(csv_source(path))
    msg = str(info.value)
    assert msg.startswith("source 'crm': deals.csv is not valid utf-8 (UnicodeDecodeError at byte 42)")
    assert "set `encoding:` (e.g. utf-8-sig or cp1252)" in msg


def test_unknown_encoding_name(tmp_path):
    path = write_bytes(tmp_path, f"{HEADER}\n".encode())
    with pytest.raises(SourceDataError, match=r"is not valid latin-9000 .*set `encoding:`"):
        extract_csv(csv_source(path, encoding="latin-9000"))


# ----------------------------------------------------------------------------- delimiters, line endings, quoting


def test_semicolon_delimiter(tmp_path):
    path = write_bytes(tmp_path, b"opportunity_id;name;stage;created_date;amount\n1;Acme, Inc.;Won;2026-01-05;12000,50\n")
    assert records(path, delimiter=";") == [
        {"opportunity_id": "1", "name": "Acme, Inc.", "stage": "Won", "created_date": "2026-01-05",
         "amount": "12000,50", "_row": 2, "_error": ""}
    ]


def test_tab_delimiter(tmp_path):
    path = write_bytes(tmp_path, b"opportunity_id\tname\tstage\tcreated_date\n1\tAcme, Inc.\tWon\t2026-01-05\n")
    (rec,) = records(path, delimiter="tab")
    assert (rec["name"], rec["stage"], rec["_error"]) == ("Acme, Inc.", "Won", "")


@pytest.mark.parametrize(
    "newline_text",
    [
        f"{HEADER}\r\n1,a,Won,2026-01-05\r\n2,b,Lost,2026-01-06\r\n",
        f"{HEADER}\n1,a,Won,2026-01-05\r\n2,b,Lost,2026-01-06",  # mixed, no final newline
        f"{HEADER}\r1,a,Won,2026-01-05\r2,b,Lost,2026-01-06\r",  # old Mac
        f"{HEADER}\r\n1,a,Won,2026-01-05\n\n2,b,Lost,2026-01-06\r\n\r\n",  # blank lines skipped
    ],
    ids=["crlf", "mixed", "cr", "blank-lines"],
)
def test_line_endings(tmp_path, newline_text):
    path = write_bytes(tmp_path, newline_text.encode())
    got = records(path)
    assert [(r["opportunity_id"], r["name"], r["stage"], r["created_date"]) for r in got] == [
        ("1", "a", "Won", "2026-01-05"), ("2", "b", "Lost", "2026-01-06")
    ]
    assert all(r["_error"] == "" for r in got)


def test_quoted_newlines_and_quotes_kept_and_rows_are_records(tmp_path):
    text = f'{HEADER}\r\n1,"Two\nlines ""quoted""",Won,2026-01-05\r\n2,"x, y",Lost,2026-01-06\r\n'
    path = write_bytes(tmp_path, text.encode())
    got = records(path)
    assert [(r["name"], r["_row"]) for r in got] == [('Two\nlines "quoted"', 2), ("x, y", 3)]


# ----------------------------------------------------------------------------- ragged rows


def test_extra_non_empty_fields_reject_the_row_without_shifting(tmp_path):
    text = f"{HEADER}\n1,a,Won,2026-01-05,surprise\n2,b,Won,2026-01-06,,\n3,c,Lost,2026-01-07\n"
    path = write_bytes(tmp_path, text.encode())
    ex = extract_csv(csv_source(path))
    got = ex.records.to_dict("records")
    assert [r["_error"] for r in got] == ["row has 5 fields but the header has 4", "", ""]
    assert got[0]["created_date"] == "2026-01-05"  # nothing shifted into the next column
    res = canon(ex.records)
    assert res.loaded["opportunity_id"].tolist() == ["2", "3"]
    assert res.rejected[["row", "reason", "opportunity_id"]].values.tolist() == [
        [2, "row has 5 fields but the header has 4", "1"]
    ]


def test_short_rows_are_padded(tmp_path):
    text = "opportunity_id,stage,created_date,owner,amount\n1,Won,2026-01-05\n"
    path = write_bytes(tmp_path, text.encode())
    assert records(path) == [
        {"opportunity_id": "1", "stage": "Won", "created_date": "2026-01-05", "owner": "", "amount": "",
         "_row": 2, "_error": ""}
    ]


# ----------------------------------------------------------------------------- headers


def test_headers_matching_canonical_names_map_without_columns(tmp_path):
    text = "Opportunity ID, STAGE ,created_date,Close Date,Unrelated\n1,Won,2026-01-05,2026-02-01,zzz\n"
    got = records(write_bytes(tmp_path, text.encode()))
    assert got == [{"opportunity_id": "1", "stage": "Won", "created_date": "2026-01-05",
                    "close_date": "2026-02-01", "_row": 2, "_error": ""}]


def test_explicit_columns_any_case(tmp_path):
    text = "Deal ID,Deal Stage,Created On,Value\nD-9,Won,2026-01-05,\"$1,000\"\n"
    cols = {"deal id": "opportunity_id", "Deal Stage": "stage", "Created On": "created_date", "Value": "amount"}
    got = records(write_bytes(tmp_path, text.encode()), columns=cols)
    assert got == [{"opportunity_id": "D-9", "stage": "Won", "created_date": "2026-01-05", "amount": "$1,000",
                    "_row": 2, "_error": ""}]


@pytest.mark.parametrize(
    ("header", "columns", "detail"),
    [
        ("Deal ID,opportunity_id,stage,created_date", {"Deal ID": "opportunity_id"},
         "opportunity_id <- 'Deal ID', 'opportunity_id'"),
        ("opportunity_id,Stage,stage,created_date", {}, "stage <- 'Stage', 'stage'"),
        ("opportunity_id,stage,created_date,amount,amount", {}, "amount <- 'amount', 'amount'"),
        ("opportunity_id,stage,Created,Opened,created_date", {"Created": "created_date", "Opened": "created_date"},
         "created_date <- 'Created', 'Opened', 'created_date'"),
    ],
    ids=["mapped-and-canonical", "case-variants", "repeated-header", "three-way"],
)
def test_two_headers_mapping_to_one_field_is_an_error(tmp_path, header, columns, detail):
    text = header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n"
    with pytest.raises(SourceDataError) as info:
        extract_csv(csv_source(write_bytes(tmp_path, text.encode()), columns=columns))
    assert str(info.value) == f"source 'crm': more than one column maps to the same field ({detail}); keep one"


def test_columns_naming_an_unknown_field(tmp_path):
    text = f"{HEADER},Region\n1,a,Won,2026-01-05,EU\n"
    with pytest.raises(SourceDataError, match=r"columns maps to unknown field\(s\) region; fields are: opportunity_id"):
        extract_csv(csv_source(write_bytes(tmp_path, text.encode()), columns={"Region": "region"}))


def test_missing_required_columns_named_with_headers_found(tmp_path):
    text = "id,Deal Name,Stage Name\n1,a,Won\n"
    with pytest.raises(SourceDataError) as info:
        extract_csv(csv_source(write_bytes(tmp_path, text.encode())))
    assert str(info.value) == (
        "source 'crm': no column for opportunity_id, stage, created_date (headers found: id, Deal Name, Stage Name); "
        "map them under `columns:` (source header: field)"
    )


@pytest.mark.parametrize("content", [b"", b"\n\r\n  \n", b"\xef\xbb\xbf"], ids=["empty", "blank-lines", "bom-only"])
def test_empty_file(tmp_path, content):
    ex = extract_csv(csv_source(write_bytes(tmp_path, content)))
    assert ex.records.empty and ex.rows_read == 0
    assert ex.notes == ["source 'crm': the file is empty"]
    res = canon(ex.records)
    assert (res.rows_read, len(res.loaded), len(res.rejected)) == (0, 0, 0)


def test_header_only(tmp_path):
    ex = extract_csv(csv_source(write_bytes(tmp_path, f"{HEADER}\n".encode())))
    assert ex.rows_read == 0
    assert {"opportunity_id", "stage", "created_date"} <= set(ex.records.columns)


def test_missing_file(tmp_path):
    with pytest.raises(SourceDataError, match=r"^source 'crm': cannot read .*nope\.csv: No such file or directory$"):
        extract_csv(csv_source(tmp_path / "nope.csv"))


def test_raw_frame_only_with_raw_sheet(tmp_path):
    path = write_bytes(tmp_path, f"{HEADER},Region\n1,a,Won,2026-01-05,EU\n".encode())
    assert extract_csv(csv_source(path)).raw is None
    raw = extract_csv(csv_source(path, raw_sheet="CRM raw")).raw
    assert list(raw.columns) == ["opportunity_id", "name", "stage", "created_date", "Region"]
    assert raw.iloc[0].tolist() == ["1", "a", "Won", "2026-01-05", "EU"]


# ----------------------------------------------------------------------------- stage history


@pytest.mark.parametrize("suffix", ["csv", "xlsx"])
def test_stage_history_file(tmp_path, suffix):
    rows = [["Deal", "Stage", "Entered"], ["1", "Proposal", "2026-01-05"], ["1", "Won", "2026-02-01"]]
    hist_path = tmp_path / f"history.{suffix}"
    if suffix == "csv":
        hist_path.write_text("\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    else:
        wb = openpyxl.Workbook()
        wb.active.title = "History"
        for r in rows:
            wb.active.append(r)
        wb.save(hist_path)
    deals = write_bytes(tmp_path, f"{HEADER}\n1,a,Won,2026-01-05\n".encode())
    ex = extract_csv(csv_source(deals, stage_history={
        "path": str(hist_path), "columns": {"Deal": "opportunity_id", "Stage": "stage", "Entered": "entered_date"},
        **({"sheet": "History"} if suffix == "xlsx" else {})}))
    hist = ex.history[["opportunity_id", "stage", "entered_date"]]
    assert hist.values.tolist() == [["1", "Proposal", "2026-01-05"], ["1", "Won", "2026-02-01"]]


def test_stage_history_missing_columns(tmp_path):
    (tmp_path / "history.csv").write_text("opportunity_id,when\n1,2026-01-05\n", encoding="utf-8")
    deals = write_bytes(tmp_path, f"{HEADER}\n1,a,Won,2026-01-05\n".encode())
    with pytest.raises(SourceDataError) as info:
        extract_csv(csv_source(deals, stage_history={"path": str(tmp_path / "history.csv")}))
    assert str(info.value).startswith(
        "source 'crm' stage_history: no column for stage, entered_date (headers found: opportunity_id, when)"
    )


# ----------------------------------------------------------------------------- Excel


@pytest.fixture
def workbook(tmp_path) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Notes"
    ws.append(["this sheet is not the data"])
    ws = wb.create_sheet("Deals")
    ws.append(["Deal ID", "Stage", "Created", "Close Date", "Amount", "Budget", "Owner"])
    ws.append(["A-1", "Proposal", dt.datetime(2026, 3, 1, 0, 0), dt.date(2026, 6, 30), 12000, True, "Ann"])
    ws.append(["A-2", "Won", dt.datetime(2026, 3, 2, 15, 30), "2026-04-01", "12,000.50", "yes", "=cmd|' /C calc'!A0"])
    ws.cell(row=3, column=7).data_type = "s"  # a text cell that looks like a formula
    ws.append([None] * 7)  # an empty row in the middle is not a record
    ws.append(["A-3", "Nope", dt.datetime(2026, 3, 3), None, -5, False, None])
    wb.create_sheet("Empty")
    path = tmp_path / "deals.xlsx"
    wb.save(path)
    return path


def excel_source(path: Path, **kw) -> ExcelSourceConfig:
    return ExcelSourceConfig(name="xl", type="excel", path=str(path),
                             columns={"Deal ID": "opportunity_id", "Created": "created_date"}, **kw)


def test_excel_source_keeps_real_dates_and_types(workbook):
    ex = extract_excel(excel_source(workbook, sheet="Deals"))
    recs = ex.records.to_dict("records")
    assert [r["_row"] for r in recs] == [2, 3, 5]
    assert recs[0]["created_date"] == dt.datetime(2026, 3, 1)
    assert recs[0]["close_date"] == dt.datetime(2026, 6, 30)
    assert (recs[0]["amount"], recs[0]["budget"]) == (12000, True)
    res = canonicalize(ex.records, source="xl", stages=list(DEFAULT_STAGES), stage_map={}, tz=ZoneInfo("UTC"))
    assert res.rows_read == 3 == len(res.loaded) + len(res.rejected)
    loaded = res.loaded.set_index("opportunity_id")
    assert loaded.loc["A-1", "created_date"] == pd.Timestamp("2026-03-01")
    assert loaded.loc["A-2", "created_date"] == pd.Timestamp("2026-03-02")  # time of day dropped
    assert loaded.loc["A-2", "close_date"] == pd.Timestamp("2026-04-01")
    assert loaded.loc["A-2", "amount"] == 12000.5
    assert loaded.loc["A-2", "owner"] == "=cmd|' /C calc'!A0"  # text stays text
    assert (bool(loaded.loc["A-1", "budget"]), bool(loaded.loc["A-2", "budget"])) == (True, True)
    assert res.rejected[["row", "opportunity_id"]].values.tolist() == [[5, "A-3"]]
    assert res.rejected.loc[0, "reason"].split("; ")[1] == "amount '-5' is negative"


@pytest.mark.parametrize(("sheet", "first_id"), [("Deals", "A-1"), (1, "A-1")])
def test_excel_sheet_by_name_or_index(workbook, sheet, first_id):
    assert extract_excel(excel_source(workbook, sheet=sheet)).records.loc[0, "opportunity_id"] == first_id


def test_excel_missing_sheet(workbook):
    with pytest.raises(SourceDataError, match=r"^source 'xl': cannot read sheet 'Pipeline' of deals\.xlsx"):
        extract_excel(excel_source(workbook, sheet="Pipeline"))


def test_excel_empty_sheet(workbook):
    ex = extract_excel(excel_source(workbook, sheet="Empty"))
    assert ex.rows_read == 0 and ex.notes == ["source 'xl': the file is empty"]


def test_excel_default_first_sheet_without_required_columns(workbook):
    with pytest.raises(SourceDataError, match=r"no column for opportunity_id, stage, created_date \(headers found: this sheet is not the data\)"):
        extract_excel(excel_source(workbook))


@pytest.mark.parametrize(("content", "expected"), [(None, "file not found"), (b"not a zip", "not a readable Excel workbook")])
def test_excel_unreadable(tmp_path, content, expected):
    path = tmp_path / "broken.xlsx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceDataError, match=expected):
        extract_excel(excel_source(path))
