"""Workbooks Excel opens without a repair prompt (issue 20).

Three layers, each proved to catch what it claims on files broken on purpose:
- Microsoft's Open XML SDK validator (tests/ooxml/validator.py, the `conformance` extra);
- the Excel rules the SDK does not check (tests/ooxml/excel_rules.py);
- the ISO/IEC 29500-4 schemas from ../shared/standards/ (skipped without it, failing under CI).
Then the demo workbook, every example config and a corpus of hostile sources built through the
CLI must be clean, and so must workbooks written from generated headers, sheet names and text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.workbook import SheetData, SummaryData
from connectors.workbook.xlsx_writer import CUT_MARKER, WriteStats, write_workbook
from flows.cli import main
from tests.flows.test_cli_demo import AS_OF, demo_config
from tests.golden_workbooks import BUILDERS
from tests.shared_fixtures import STANDARDS, absent, in_ci


def _unavailable(reason: str) -> None:
    """Skip with a one-line reason; in CI (env CI set) a missing validator is a failure."""
    if in_ci():
        pytest.fail(f"conformance checks cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from lxml import etree

    from tests.ooxml.excel_rules import (
        MAIN,
        REL,
        decode_xstring,
        excel_rule_violations,
        is_cell_reference,
        tables_by_sheet,
        utf16_len,
        xsd_dir,
        xsd_violations,
    )
    from tests.ooxml.validator import FRAMEWORK, SdkUnavailable, ensure_layout, load_validator
except ImportError as exc:  # lxml missing: the conformance extra is not installed
    _unavailable(f"{exc.name} is not installed (pip install -e '.[conformance]')")


def _require_schemas() -> None:
    """The ISO/IEC 29500-4 schemas or a one-line skip (a failure under CI: tests/shared_fixtures.py)."""
    if xsd_dir() is None:
        absent(f"ISO/IEC 29500-4 schemas not found ($OOXML_XSD_DIR or {STANDARDS / 'ooxml-xsd'})")


# Rules a known writer bug still breaks (each with a strict xfail that checks it once); none today.
OPEN_RULES: set[str] = set()


@pytest.fixture(scope="session")
def sdk():
    try:
        return load_validator()
    except SdkUnavailable as exc:
        _unavailable(f"Open XML SDK validator unavailable: {exc}")


def _rules(path: Path) -> list:
    return [v for v in excel_rule_violations(path) if v.rule not in OPEN_RULES]


# ----------------------------------------------------------------------------- helpers


def test_cell_reference_names():
    refs = ["A1", "a1", "XFD1048576", "$B$2", "tbl2026", "R1C1", "r", "C", "RC", "R12", "C3", "rc7"]
    names = ["XFE1", "A1048577", "A0", "tblData", "Deal", "R1C1x", "tbl_2026", "Raw", "_A1"]
    assert [n for n in refs if not is_cell_reference(n)] == []
    assert [n for n in names if is_cell_reference(n)] == []


def test_utf16_length_counts_code_units():
    assert utf16_len("a" * 32_767) == 32_767
    assert utf16_len("\U0001F600") == 2
    assert utf16_len("\U0001F600" * 16) == 32


def test_runtime_is_laid_out_as_a_shared_framework(sdk, tmp_path):
    layout = ensure_layout(tmp_path / "cache")
    fw = layout.root / "shared" / FRAMEWORK / layout.runtime_version
    deps = json.loads((fw / f"{FRAMEWORK}.deps.json").read_text())
    [assets] = deps["targets"][deps["runtimeTarget"]["name"]].values()
    assert {"System.Private.CoreLib.dll", "System.Runtime.dll"} <= set(assets["runtime"])
    assert {"libcoreclr.so", "libhostpolicy.so"} <= set(assets["native"])
    assert all((fw / name).is_file() for name in [*assets["runtime"], *assets["native"]])
    assert (layout.root / "host" / "fxr" / layout.runtime_version / "libhostfxr.so").is_file()
    config = json.loads(layout.runtime_config.read_text())["runtimeOptions"]
    assert config["framework"] == {"name": FRAMEWORK, "version": layout.runtime_version}
    assert [p.name for p in layout.sdk_assemblies] == ["DocumentFormat.OpenXml.dll", "System.IO.Packaging.dll"]
    assert ensure_layout(tmp_path / "cache") == layout  # laid out once, then reused
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def test_a_cache_others_can_write_is_refused(sdk, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(SdkUnavailable, match="others can write"):
        ensure_layout(shared)


# ----------------------------------------------------------------------------- broken on purpose


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small workbook xlsxwriter writes: tables tblData (Data) and tblMore (More), shared strings."""
    import xlsxwriter

    path = tmp_path_factory.mktemp("crafted") / "base.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    data = wb.add_worksheet("Data")
    data.add_table("A1:B3", {"name": "tblData", "columns": [{"header": "id"}, {"header": "name"}],
                             "data": [[1, "alpha"], [2, "beta"]]})
    more = wb.add_worksheet("More")
    more.add_table("A1:A2", {"name": "tblMore", "columns": [{"header": "note"}], "data": [["x"]]})
    wb.close()
    return path


def rewrite(src: Path, dst: Path, edits: dict[str, Callable[[bytes], bytes]],
            zip64: frozenset[str] = frozenset()) -> Path:
    """A copy of `src` with `edits` applied to its members (`zip64`: members written with ZIP64)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            data = zi.read(info)
            for member, edit in edits.items():
                if info.filename == member:
                    new = edit(data)
                    assert new != data, f"edit of {member} changed nothing"
                    data = new
            with zo.open(info.filename, "w", force_zip64=info.filename in zip64) as out:
                out.write(data)
    return dst


def sub(pattern: str, repl: str) -> Callable[[bytes], bytes]:
    return lambda data: re.sub(pattern.encode(), repl.encode(), data, count=1)


SHEET1, TABLE1, TABLE2 = "xl/worksheets/sheet1.xml", "xl/tables/table1.xml", "xl/tables/table2.xml"
SST, WORKBOOK = "xl/sharedStrings.xml", "xl/workbook.xml"
EMOJI = "\U0001F600"

# id -> (edits, rule, a fragment of its message)
RULE_BREAKS: dict[str, tuple[dict[str, Callable[[bytes], bytes]], str, str]] = {
    "column name is not its header": ({TABLE1: sub(r'name="name"', 'name="title"')}, "table-header",
                                      "column 2 is named 'title' but its header cell holds 'name'"),
    "column name decodes _x0020_": ({TABLE1: sub(r'name="name"', 'name="na_x0020_me"')}, "table-header",
                                    "named 'na me'"),
    "tab in a column name attribute": ({TABLE1: sub(r'name="name"', 'name="na\tme"')}, "table-header",
                                       "named 'na me'"),
    "column names repeat by case": ({TABLE1: sub(r'name="name"', 'name="ID"')}, "table-column",
                                    "column name 'ID' repeats 'id'"),
    "column name over 255": ({TABLE1: sub(r'name="name"', f'name="{"n" * 256}"')}, "table-column",
                             "is 256 UTF-16 units"),
    "column count is not the range width": ({TABLE1: sub(r'<tableColumns count="2">', '<tableColumns count="3">')},
                                            "table-column", "2 tableColumn (count=3)"),
    "table name is a cell reference": ({TABLE1: sub(r'name="tblData" displayName="tblData"',
                                                    'name="tbl2026" displayName="tbl2026"')},
                                       "table-name", "'tbl2026' is a cell reference"),
    "table name is R1C1": ({TABLE1: sub(r'displayName="tblData"', 'displayName="R1C1"')},
                           "table-name", "displayName 'R1C1' is a cell reference"),
    "table name has a space": ({TABLE1: sub(r'displayName="tblData"', 'displayName="tbl Data"')},
                               "table-name", "breaks Excel's name rules"),
    "table names repeat by case": ({TABLE2: sub(r'name="tblMore" displayName="tblMore"',
                                                'name="TBLDATA" displayName="TBLDATA"')},
                                   "table-name", "'tbldata' is also used by xl/tables/table1.xml"),
    "sheet name of 32 UTF-16 units": ({WORKBOOK: sub(r'name="Data"', f'name="{EMOJI * 16}"')},
                                      "sheet-name", "is 32 UTF-16 units"),
    "sheet name History": ({WORKBOOK: sub(r'name="More"', 'name="history"')}, "sheet-name", "reserved"),
    "sheet name with a slash": ({WORKBOOK: sub(r'name="More"', 'name="Mo/re"')}, "sheet-name",
                                "a character Excel forbids"),
    "sheet names repeat by case": ({WORKBOOK: sub(r'name="More"', 'name="DATA"')}, "sheet-name",
                                   "repeats sheet 'Data'"),
    "shared string of 32,768 units": ({SST: sub(r"<t>alpha</t>", f"<t>{EMOJI}{'a' * 32_766}</t>")},
                                      "text-length", "32,768 UTF-16 units"),
    "inline string of 32,768 units": ({SHEET1: sub(r'<c r="B3" t="s"><v>\d+</v></c>',
                                                   f'<c r="B3" t="inlineStr"><is><t>{EMOJI * 16_384}</t></is></c>')},
                                      "text-length", "row 3, column 2 holds 32,768"),
    "cell past XFD": ({SHEET1: sub(r'<c r="B3"', '<c r="XFE3"')}, "bounds", "1 cells past XFD1048576"),
    "cell past XFD by position": ({SHEET1: sub(r'<c r="B3"', '<c r="XFD3"/><c')}, "bounds",
                                  "first at row 3, column 16385"),
    "row past 1,048,576": ({SHEET1: sub(r'<row r="3"', '<row r="1048577"')}, "bounds",
                           "row 1,048,577 is past row 1,048,576"),
    "unneeded ZIP64": ({}, "zip64", "ZIP64 extra field in the local header"),
    "table part not well-formed": ({TABLE1: sub(r'name="name"', 'name="na\x01me"')}, "xml",
                                   "not well-formed"),
}


def test_base_workbook_is_clean(base, sdk):
    assert sdk.validate(base) == []
    assert excel_rule_violations(base) == []


@pytest.mark.parametrize("case", RULE_BREAKS)
def test_excel_rules_catch(case, base, tmp_path):
    edits, rule, fragment = RULE_BREAKS[case]
    broken = rewrite(base, tmp_path / "broken.xlsx", edits,
                     zip64=frozenset({SHEET1}) if rule == "zip64" else frozenset())
    found = excel_rule_violations(broken)
    assert any(v.rule == rule and fragment in v.message for v in found), found


# id -> (edits, the SDK's error id, a fragment of its description)
SDK_BREAKS: dict[str, tuple[dict[str, Callable[[bytes], bytes]], str, str]] = {
    "undeclared attribute": ({SHEET1: sub(r"<sheetData>", '<sheetData bogus="1">')},
                             "Sch_UndeclaredAttribute", "'bogus' attribute is not declared"),
    "bad enumeration value": ({SHEET1: sub(r'<c r="B2" t="s">', '<c r="B2" t="zz">')},
                              "Sch_AttributeValueDataTypeDetailed", "'t' has invalid value 'zz'"),
    "missing required attribute": ({TABLE1: sub(r' ref="A1:B3"', "")},
                                   "Sch_MissRequiredAttribute", "required attribute 'ref' is missing"),
    "unexpected element": ({SHEET1: sub(r"<sheetData>", "<sheetData><bogus/>")},
                           "Sch_InvalidElementContentExpectingComplex", "bogus"),
    "column name over 255": ({TABLE1: sub(r'name="name"', f'name="{"n" * 256}"')},
                             "Sem_AttributeValueDataTypeDetailed", "'name' has invalid value"),
    "table part not well-formed": ({TABLE1: sub(r'name="name"', 'name="na\x01me"')},
                                   "ExceptionError", "hexadecimal value 0x01, is an invalid character"),
}


@pytest.mark.parametrize("case", SDK_BREAKS)
def test_sdk_catches(case, base, tmp_path, sdk):
    edits, error_id, fragment = SDK_BREAKS[case]
    found = sdk.validate(rewrite(base, tmp_path / "broken.xlsx", edits))
    assert any(e.description.startswith(f"[{error_id}]") and fragment in e.description for e in found), found


def test_sdk_reports_a_file_that_is_no_package(tmp_path, sdk):
    bad = tmp_path / "not.xlsx"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    [error] = sdk.validate(bad)
    assert error.part == "/" and error.description.startswith("cannot open the package")


def test_xsd_catches_an_undeclared_attribute(base, tmp_path):
    _require_schemas()
    assert xsd_violations(base) == []
    broken = rewrite(base, tmp_path / "broken.xlsx", {SHEET1: sub(r"<sheetData>", '<sheetData bogus="1">')})
    found = xsd_violations(broken)
    assert [(v.part, "'bogus' is not allowed" in v.message) for v in found] == [(SHEET1, True)]


# ----------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo_workbook(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("demo")
    cfg = demo_config(tmp, "out/demo.xlsx")
    assert main(["run", "--config", str(cfg), "--as-of", AS_OF.isoformat(), "--no-prefect"]) == 0
    return tmp / "out" / "demo.xlsx"


def test_demo_passes_the_sdk_validator(demo_workbook, sdk):
    assert sdk.validate(demo_workbook) == []


def test_demo_breaks_no_excel_rule(demo_workbook):
    assert _rules(demo_workbook) == []
    assert len(sum(tables_by_sheet(demo_workbook).values(), [])) >= 10


def test_demo_passes_the_schemas(demo_workbook):
    _require_schemas()
    assert xsd_violations(demo_workbook) == []


def test_demo_has_no_unneeded_zip64(demo_workbook):
    assert [v for v in excel_rule_violations(demo_workbook) if v.rule == "zip64"] == []


@pytest.fixture(scope="module")
def demo_written_again(demo_workbook) -> Path:
    """The demo run again with nothing changed: its workbook copied from the kept one, About rebuilt."""
    from flows.pipeline import run_pipeline

    result = run_pipeline(demo_workbook.parent.parent / "demo.yaml", AS_OF)
    assert result.workbook_reused
    return Path(result.outputs[0].split(" ")[0])


def test_demo_written_again_passes_the_sdk_validator_the_rules_and_the_schemas(demo_written_again, sdk):
    assert sdk.validate(demo_written_again) == []
    assert _rules(demo_written_again) == []
    _require_schemas()
    assert xsd_violations(demo_written_again) == []


# a formula, escapes (one pair overlapping), a control character
HOSTILE_OWNER = "=HYPERLINK(\"x\")_x0041__x0042_ _x0043_x0044_\x07" + "\u00e9" * 40


@pytest.fixture(scope="module")
def movement_workbook(tmp_path_factory) -> Path:
    """Two snapshots through the analytics (tests/transforms/test_movement.py's hand case, one owner renamed
    to hostile text, quotas set): Movement with its form, owner table, deal lines and the
    Summary's waterfall, Targets with quota cells and formulas, and a raw sheet whose table name
    would clash with the Movement form's."""
    from connectors.state import snapshots as store
    from connectors.state.db import make_engine
    from tests.analytics_support import make_cfg, make_history, make_opps
    from tests.transforms.test_movement import AFTER, BEFORE, D0, D1
    from transforms.analytics import build_analytics

    engine = make_engine("sqlite://")
    cfg = make_cfg(targets={"quota": {"2026-Q2": 20000}, "quota_by_owner": {"ann": {"2026-Q2": 9000},
                                                                             HOSTILE_OWNER: {"2026-Q2": 5000}}})
    a = None
    for rows, as_of in ((BEFORE, D0), (AFTER, D1)):
        rows = [{**r, "owner": HOSTILE_OWNER if r["owner"] == "bob" else r["owner"]} for r in rows]
        a = build_analytics(make_opps(rows), make_history([]), cfg, as_of,
                            snapshots=store.load_history(engine, cfg.report, as_of))
        with engine.begin() as conn:
            store.save_snapshot(conn, cfg.report, a.snapshot)
    assert a is not None and a.movement is not None
    path = tmp_path_factory.mktemp("movement") / "movement.xlsx"
    write_workbook(path, sheets=[*a.sheets, SheetData("MovementTeam", pd.DataFrame({"x": [1, 2]}))], summary=a.summary)
    return path


def test_movement_and_targets_workbook_is_clean(movement_workbook, sdk):
    assert sdk.validate(movement_workbook) == []
    assert _rules(movement_workbook) == []
    tables = tables_by_sheet(movement_workbook)
    assert tables["Movement"] == ["tblMovementTeam", "tblMovementOwners", "tblMovementDeals"]
    assert tables["Targets"] == ["tblTargetsQuota"]
    assert tables["MovementTeam"] == ["tblMovementTeam_2"]  # the form's name was claimed first
    for sheet, cells in (("Movement", 7), ("Targets", 1)):  # form cells and deal lines: text, as given
        shown = [v for row in _cells(movement_workbook, sheet, rows=1_000) for v in row if v and "HYPERLINK" in v]
        assert shown == [HOSTILE_OWNER] * cells, sheet
    found = xsd_violations(movement_workbook)
    assert found in (None, [])


@pytest.mark.parametrize("example", [name for name in BUILDERS if name != "demo"])
def test_example_config_workbooks_are_clean(example, sdk, tmp_path):
    """Every config/examples/*.yaml run against its fake (tests/golden_workbooks.py builds them)."""
    books = BUILDERS[example](tmp_path)
    assert books
    for key, path in books.items():
        assert (key, sdk.validate(path), _rules(path)) == (key, [], [])


# ----------------------------------------------------------------------------- hostile sources


BASE_HEADERS = ["opportunity_id", "stage", "created_date", "amount", "name"]


@dataclass(frozen=True)
class Hostile:
    """A CSV source (one per raw sheet) with hostile headers, text or raw-sheet names; `broke`:
    what the writer did with it before issue 20; `refused`: the config check (issue 17) that now
    stops the run first (exit 2), with this text; the writer is then checked on its own."""

    id: str
    extra_headers: tuple[str, ...] = ()
    name: str = "Deal"
    raw_sheets: tuple[str, ...] = ("Raw",)
    encoding: str = "utf-8"
    broke: str = ""
    refused: str = ""

    def frame(self) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.csv_bytes()), dtype=str, encoding=self.encoding)

    def csv_bytes(self) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow([*BASE_HEADERS, *self.extra_headers])
        filler = [f"v{i}" for i in range(len(self.extra_headers))]
        w.writerow(["1", "Proposal", "2026-01-05", "100", self.name, *filler])
        w.writerow(["2", "Proposal", "2026-01-06", "200", "Other", *filler])
        return buf.getvalue().encode(self.encoding)


CRASH = "crashed while writing"
HOSTILE = [
    Hostile("plain"),
    Hostile("control and _xHHHH_ in cell text", name="a\x01b_x0041_c\tz"),
    Hostile("emoji text cut at 32,767", name=EMOJI + "a" * 40_000,
            broke="item 1: the cut counted code points; an emoji left 32,768 UTF-16 units"),
    Hostile("control character in a header", extra_headers=("Note\x01x",),
            broke="item 2: the table part was not well-formed XML"),
    Hostile("TAB in a header", extra_headers=("Deal\tNote",),
            broke="item 3: the table column name no longer equalled the header cell"),
    Hostile("CR in a header", extra_headers=("Deal\rNote",),
            broke="item 3: the table column name no longer equalled the header cell"),
    Hostile("300-character header", extra_headers=("H" * 300,), broke="item 4: a table column name over 255"),
    Hostile("header Deal_x0020_Name", extra_headers=("Deal_x0020_Name",),
            broke="item 5: Excel decoded _x0020_ in the table column, not in the cell"),
    Hostile("overlapping _xHHHH_ in a header and text", extra_headers=("_x0041_x0042_",), name="_x0041_x0042_",
            broke="xlsxwriter escapes the first of overlapping escapes only: Excel decoded the second"),
    Hostile("raw_sheet 2026", raw_sheets=("2026",), broke="item 6: table tbl2026 was a cell reference"),
    Hostile("raw_sheet History", raw_sheets=("History",), broke="Excel reserves the sheet name History",
            refused="sources[0].raw_sheet: 'History' is a sheet the workbook already has"),
    Hostile("lone surrogate in text", name="a\ud800b", encoding="utf-7",  # UTF-7 can carry U+D800 alone
            broke=CRASH + ": UnicodeEncodeError"),
    Hostile("two identical raw headers", extra_headers=("Note", "Note"), broke=CRASH + ": AttributeError in raw_sheets"),
    Hostile("headers differing only in case", extra_headers=("Note", "NOTE"),
            broke="xlsxwriter dropped the raw sheet's table (duplicate header)"),
    Hostile("sheets Raw-CRM and Raw_CRM", raw_sheets=("Raw-CRM", "Raw_CRM"),
            broke=CRASH + ": DuplicateTableName tblRaw_CRM",
            refused="sources[1].raw_sheet: 'Raw_CRM' gets the same table name (tblRaw_CRM)"),
    Hostile("31-character emoji sheet name", raw_sheets=(EMOJI * 31,),
            broke=CRASH + ": InvalidWorksheetName (62 UTF-16 units)"),
    Hostile("raw_sheet About and Summary", raw_sheets=("About", "summary"),
            refused="sources[0].raw_sheet: 'About' is a sheet the workbook already has"),
    Hostile("16,400 columns", extra_headers=tuple(f"c{i}" for i in range(16_395)),
            broke="item 9: the raw sheet's table was dropped, cells written past XFD with no note"),
]


HOSTILE_PARAMS = [pytest.param(h, id=h.id) for h in HOSTILE if not h.refused]
REFUSED_PARAMS = [pytest.param(h, id=h.id) for h in HOSTILE if h.refused]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """Runs each case through the CLI once: (exit code, workbook path, stderr, exception)."""
    built: dict[str, tuple[int | None, Path, str, BaseException | None]] = {}

    def run(case: Hostile) -> tuple[int | None, Path, str, BaseException | None]:
        if case.id not in built:
            tmp = tmp_path_factory.mktemp("hostile")
            sources = []
            for i, sheet in enumerate(case.raw_sheets):
                (tmp / f"d{i}.csv").write_bytes(case.csv_bytes())
                sources.append({"name": f"s{i}", "type": "csv", "path": f"d{i}.csv", "raw_sheet": sheet,
                                "encoding": case.encoding})
            (tmp / "c.yaml").write_text(yaml.safe_dump(
                {"sources": sources, "destinations": [{"type": "file", "path": "o.xlsx"}]}))
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    code, error = main(["run", "--config", str(tmp / "c.yaml"), "--as-of", "2026-02-01",
                                        "--no-prefect"]), None
            except Exception as exc:  # a crash: every test of the case reports it
                code, error = None, exc
            built[case.id] = (code, tmp / "o.xlsx", err.getvalue(), error)
        return built[case.id]

    return run


@pytest.fixture(scope="module")
def hostile_build(hostile_run):
    """The workbook each accepted case's run wrote."""

    def build(case: Hostile) -> Path:
        code, path, stderr, error = hostile_run(case)
        if error is not None:
            raise error
        assert (code, path.is_file()) == (0, True), stderr
        return path

    return build


@pytest.fixture(scope="module")
def direct_build(tmp_path_factory):
    """A refused case's raw sheets written by the writer itself (after Summary, before About,
    as the flow orders them): (workbook, WriteStats)."""
    built: dict[str, tuple[Path, WriteStats]] = {}

    def build(case: Hostile) -> tuple[Path, WriteStats]:
        if case.id not in built:
            path = tmp_path_factory.mktemp("direct") / "o.xlsx"
            summary = SummaryData("T", pd.DataFrame({"metric": ["m"], "value": [1.0]}),
                                  pd.DataFrame({"rule": ["r"], "count": [1]}))
            stats = write_workbook(path, sheets=[SheetData(name, case.frame()) for name in case.raw_sheets],
                                   summary=summary, last=lambda w: SheetData(
                                       "About", pd.DataFrame({"key": ["note"] * len(w.fixes), "value": w.fixes},
                                                             dtype=object)))
            built[case.id] = (path, stats)
        return built[case.id]

    return build


@pytest.mark.parametrize("case", REFUSED_PARAMS)
def test_hostile_config_is_refused_with_its_key(case, hostile_run):
    code, path, stderr, error = hostile_run(case)
    assert (error, code, path.exists()) == (None, 2, False)
    assert case.refused in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("case", REFUSED_PARAMS)
def test_refused_names_still_make_a_clean_workbook_from_the_writer(case, direct_build, sdk):
    path, stats = direct_build(case)
    assert sdk.validate(path) == []
    assert _rules(path) == []
    assert {s: len(t) for s, t in tables_by_sheet(path).items()} == {"Summary": 0, **dict.fromkeys(stats.sheets[1:], 1)}


@pytest.mark.parametrize("case", HOSTILE_PARAMS)
def test_hostile_source_builds_with_its_raw_tables(case, hostile_build):
    tables = tables_by_sheet(hostile_build(case))
    sheets = list(tables)
    raw = sheets[sheets.index("Rejected") + 1: sheets.index("About")]  # the contract's raw-sheet slot
    assert len(raw) >= len(case.raw_sheets)
    assert {s: len(tables[s]) for s in raw} == dict.fromkeys(raw, 1), "each raw sheet is one table"


@pytest.mark.parametrize("case", HOSTILE_PARAMS)
def test_hostile_source_passes_the_sdk_validator(case, hostile_build, sdk):
    assert sdk.validate(hostile_build(case)) == []


@pytest.mark.parametrize("case", HOSTILE_PARAMS)
def test_hostile_source_breaks_no_excel_rule(case, hostile_build):
    path = hostile_build(case)
    assert _rules(path) == []
    assert xsd_violations(path) in (None, [])


# ----------------------------------------------------------------------------- what the hostile cases hold


def _sheet_part(z: zipfile.ZipFile, sheet: str) -> str:
    rels = {r.get("Id"): r.get("Target") for r in etree.fromstring(z.read("xl/_rels/workbook.xml.rels"))}
    [rid] = [s.get(f"{{{REL}}}id") for s in etree.fromstring(z.read("xl/workbook.xml")).iter(f"{{{MAIN}}}sheet")
             if s.get("name") == sheet]
    return "xl/" + rels[rid].removeprefix("/xl/")


def _text(el: etree._Element) -> str:
    return decode_xstring("".join(t.text or "" for t in el.iter(f"{{{MAIN}}}t")
                                  if t.getparent().tag != f"{{{MAIN}}}rPh"))


def _cells(path: Path, sheet: str, rows: int = 3) -> list[list[str | None]]:
    """The first `rows` rows of `sheet` as Excel shows their text (`_xHHHH_` decoded; numbers as
    written). Read from the XML: openpyxl decodes shared strings and inline strings differently."""
    with zipfile.ZipFile(path) as z:
        sst = ([_text(si) for si in etree.fromstring(z.read("xl/sharedStrings.xml")).iter(f"{{{MAIN}}}si")]
               if "xl/sharedStrings.xml" in z.namelist() else [])
        out: list[list[str | None]] = []
        for row in etree.fromstring(z.read(_sheet_part(z, sheet)), etree.XMLParser(huge_tree=True)).iter(
                f"{{{MAIN}}}row"):
            if len(out) == rows:
                break
            values: list[str | None] = []
            for c in row.iter(f"{{{MAIN}}}c"):
                ref = re.match(r"[A-Z]+", c.get("r", ""))
                if ref:
                    col = sum((ord(ch) - 64) * 26 ** k for k, ch in enumerate(reversed(ref.group(0))))
                    values += [None] * (col - 1 - len(values))
                v = c.find(f"{{{MAIN}}}v")
                kind = c.get("t")
                values.append(_text(c) if kind == "inlineStr" else sst[int(v.text)] if kind == "s"
                              else None if v is None else v.text)
            out.append(values)
        return out


def _about_notes(path: Path) -> list[str]:
    return [value for key, value in _cells(path, "About", rows=10_000)[1:] if key == "note"]


def _table_columns(path: Path, table: str) -> list[str]:
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.startswith("xl/tables/"):
                root = etree.fromstring(z.read(name))
                if root.get("name") == table:
                    return [decode_xstring(c.get("name")) for c in root.iter(f"{{{MAIN}}}tableColumn")]
    raise AssertionError(f"no table {table}")


def _case(case_id: str) -> Hostile:
    return next(h for h in HOSTILE if h.id == case_id)


def _cut_cells(path: Path) -> int:
    with zipfile.ZipFile(path) as z:
        names = [s.get("name") for s in etree.fromstring(z.read("xl/workbook.xml")).iter(f"{{{MAIN}}}sheet")]
    return sum(1 for name in names for row in _cells(path, name, rows=10**7)
               for v in row if isinstance(v, str) and v.endswith(CUT_MARKER))


def test_hostile_emoji_text_is_cut_at_32767_utf16_units_and_counted(hostile_build):
    path = hostile_build(_case("emoji text cut at 32,767"))
    header, first = _cells(path, "Raw", rows=2)
    text = first[header.index("name")]
    assert utf16_len(text) == 32_767 and text.startswith(EMOJI + "aaa") and text.endswith(CUT_MARKER)
    about = dict(_cells(path, "About", rows=10_000)[1:])
    assert about["cells cut at 32,767 characters"] == str(_cut_cells(path)) and _cut_cells(path) >= 2


@pytest.mark.parametrize(("case_id", "shown"), [
    ("lone surrogate in text", "a\ufffdb"),  # U+FFFD, not a crash
    ("control and _xHHHH_ in cell text", "a\x01b_x0041_c\tz"),
    ("overlapping _xHHHH_ in a header and text", "_x0041_x0042_"),
])
def test_hostile_text_reads_back_as_excel_shows_it(case_id, shown, hostile_build):
    path = hostile_build(_case(case_id))
    for sheet in ("Raw", "Opportunities"):
        header, first = _cells(path, sheet, rows=2)
        assert first[header.index("name")] == shown


@pytest.mark.parametrize(("case_id", "header", "column"), [
    ("control character in a header", "Note\x01x", "Note x"),
    ("TAB in a header", "Deal\tNote", "Deal Note"),
    ("CR in a header", "Deal\rNote", "Deal Note"),
    ("300-character header", "H" * 300, "H" * 255),
    ("header Deal_x0020_Name", "Deal_x0020_Name", "Deal_x0020_Name"),
    ("overlapping _xHHHH_ in a header and text", "_x0041_x0042_", "_x0041_x0042_"),
    ("two identical raw headers", "Note", "Note (2)"),
    ("headers differing only in case", "NOTE", "NOTE (2)"),
])
def test_hostile_header_is_renamed_once_and_noted(case_id, header, column, hostile_build):
    path = hostile_build(_case(case_id))
    cells = _cells(path, "Raw", rows=1)[0]
    assert cells[len(BASE_HEADERS):] == [*_case(case_id).extra_headers[:-1], column]
    assert _table_columns(path, "tblRaw") == cells
    notes = [n for n in _about_notes(path) if n.startswith("sheet 'Raw': 1 column header(s) renamed")]
    if column == header or column.endswith(" (2)"):  # kept (only its table column name is escaped:
        assert notes == []  # _x005F_x0020_), or numbered by the CSV source already (issue 17)
    else:
        [note] = notes
        assert f"{header!r}"[:20] in note and "→" in note


@pytest.mark.parametrize(("case_id", "tables", "note"), [
    ("raw_sheet 2026", {"2026": ["tbl_2026"]}, "sheet '2026': its table is named tbl_2026 (tbl2026 would be read as "
                                               "a cell reference)"),
    ("raw_sheet History", {"History (2)": ["tblHistory__2_"]}, "sheet 'History' is written as 'History (2)'"),
    ("sheets Raw-CRM and Raw_CRM", {"Raw-CRM": ["tblRaw_CRM"], "Raw_CRM": ["tblRaw_CRM_2"]},
     "sheet 'Raw_CRM': its table is named tblRaw_CRM_2 (tblRaw_CRM is taken)"),
    ("31-character emoji sheet name", {EMOJI * 15: ["tbl" + "_" * 15]}, f"is written as '{EMOJI * 15}'"),
    ("raw_sheet About and Summary", {"About (2)": ["tblAbout__2_"], "summary (2)": ["tblsummary__2_"],
                                     "About": ["tblAbout"]}, "sheet 'About' is written as 'About (2)'"),
])
def test_hostile_sheet_names_and_tables(case_id, tables, note, hostile_build, direct_build):
    case = _case(case_id)
    path = direct_build(case)[0] if case.refused else hostile_build(case)
    found = tables_by_sheet(path)
    assert {s: found.get(s) for s in tables} == tables
    notes = [v for _, v in _cells(path, "About", rows=10_000)[1:]] if case.refused else _about_notes(path)
    assert any(note in n for n in notes), notes


def test_hostile_columns_past_xfd_continue_on_a_sheet_noted_in_about(hostile_build):
    case = _case("16,400 columns")
    path = hostile_build(case)
    given = [*BASE_HEADERS, *case.extra_headers]
    first, more = _cells(path, "Raw", rows=2), _cells(path, "Raw (cols 2)", rows=2)
    assert len(first[0]) == 16_384 and first[0] + more[0] == given
    assert first[1] + more[1] == ["1", "Proposal", "2026-01-05", "100", "Deal", *[f"v{i}" for i in range(16_395)]]
    assert (f"sheet 'Raw': {len(given):,} columns are more than a sheet holds (16,384); columns 16,385-{len(given):,} "
            "are on sheet 'Raw (cols 2)' (same rows)") in _about_notes(path)


# ----------------------------------------------------------------------------- inputs nobody wrote down

# Any text: every plane, control characters, lone surrogates, `_xHHHH_`, Excel's forbidden characters.
_CHAR = st.characters(codec=None, exclude_categories=()) | st.integers(0xD800, 0xDFFF).map(chr)  # lone surrogates too
_TEXT = st.lists(_CHAR, max_size=40).map("".join) | st.sampled_from(
    ["History", "history", "'", "R1C1", "A1", "tbl", "2026", "_x0041_", "_x0041_x0042_", "Note", "NOTE", "", " ",
     EMOJI * 31])
_HEADERS = st.lists(_TEXT, min_size=1, max_size=6)


@st.composite
def _workbook(draw: st.DrawFn) -> list:
    sheets = []
    for name in draw(st.lists(_TEXT, min_size=1, max_size=4)):
        headers = draw(_HEADERS)
        rows = draw(st.lists(st.lists(_TEXT | st.just(EMOJI * 16_384) | st.integers(-10**6, 10**6),
                                      min_size=len(headers), max_size=len(headers)), max_size=3))
        frame = pd.DataFrame(rows or [[None] * len(headers)], columns=headers).iloc[: len(rows)]
        sheets.append(SheetData(name, frame))
    return sheets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sheets=_workbook())
def test_generated_names_headers_and_text_break_no_excel_rule(sheets, tmp_path_factory):
    path = tmp_path_factory.mktemp("generated") / "g.xlsx"
    stats = write_workbook(path, sheets=sheets, last=lambda w: SheetData(
        "About", pd.DataFrame({"key": ["note"] * len(w.fixes), "value": w.fixes}, dtype=object)))
    assert _rules(path) == []
    assert len(stats.sheets) == len(sheets) + 1
    assert {s: len(t) for s, t in tables_by_sheet(path).items()} == dict.fromkeys(stats.sheets, 1)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sheets=_workbook())
def test_generated_workbooks_pass_the_sdk_validator(sheets, tmp_path_factory, sdk):
    path = tmp_path_factory.mktemp("generated") / "g.xlsx"
    write_workbook(path, sheets=sheets)
    assert sdk.validate(path) == []
