"""connectors.workbook.reuse: the last workbook written again with a new late (About) sheet is,
member for member, the workbook written whole with that sheet; what it cannot rewrite it refuses."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from config.workbook import SheetData
from connectors.state.kept_workbook import KeptWorkbooks
from connectors.state.private import StateFolderError
from connectors.workbook.reuse import rewrite
from connectors.workbook.xlsx_writer import write_workbook

WHEN = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
DATA = SheetData("Opportunities", pd.DataFrame({"id": [f"D{i}" for i in range(500)], "stage": ["won", "lost"] * 250,
                                                "amount": range(500)}), {"amount": "int"})


def about(values: list[str]) -> SheetData:
    return SheetData("About", pd.DataFrame({"key": [f"k{i}" for i in range(len(values))], "value": values}),
                     {"key": "text", "value": "text"})


@pytest.mark.parametrize("values", [
    ["yes", "yes", "a & <b>"],  # fewer rows than kept
    ["yes"] * 12 + [" leading space", "=HYPERLINK(\"http://x\")", "ünïcødé"],  # more rows, repeats, odd text
])
def test_rewritten_equals_the_workbook_written_whole(tmp_path: Path, values: list[str]) -> None:
    kept = tmp_path / "kept.xlsx"
    stats = write_workbook(kept, sheets=[DATA], last=lambda _: about(["yes", "no", "x", "y", "z"]))
    assert (stats.late_part, stats.late_table) == ("xl/worksheets/sheet2.xml", "tblAbout")
    again = rewrite(kept, tmp_path / "again.xlsx", about(values), late_part=stats.late_part,
                    late_table=stats.late_table, generated_at=WHEN)
    assert again is not None and again.rows == {"About": len(values)}
    write_workbook(tmp_path / "whole.xlsx", sheets=[DATA], last=lambda _: about(values))
    with zipfile.ZipFile(tmp_path / "again.xlsx") as a, zipfile.ZipFile(tmp_path / "whole.xlsx") as w, \
            zipfile.ZipFile(kept) as k:
        assert a.namelist() == w.namelist() and a.testzip() is None
        differ = [n for n in a.namelist() if a.read(n) != w.read(n)]
        assert set(differ) <= {"docProps/core.xml", "xl/worksheets/sheet2.xml"}  # times; About's column widths
        assert b"2026-02-01T09:30:00Z" in a.read("docProps/core.xml")
        assert a.getinfo("xl/worksheets/sheet1.xml").compress_size == k.getinfo("xl/worksheets/sheet1.xml").compress_size
    import openpyxl
    rows = list(openpyxl.load_workbook(tmp_path / "again.xlsx")["About"].iter_rows(values_only=True))
    assert rows == [("key", "value"), *((f"k{i}", v) for i, v in enumerate(values))]


@pytest.mark.parametrize("damage", ["not_a_zip", "no_such_part", "other_table"])
def test_what_it_cannot_rewrite_is_refused_and_nothing_is_written(tmp_path: Path, damage: str) -> None:
    kept = tmp_path / "kept.xlsx"
    stats = write_workbook(kept, sheets=[DATA], last=lambda _: about(["a"]))
    part, table = stats.late_part, stats.late_table
    if damage == "not_a_zip":
        kept.write_bytes(b"PK\x03\x04 not really")
    elif damage == "no_such_part":
        part = "xl/worksheets/sheet9.xml"
    else:
        table = "tblOther"
    target = tmp_path / "out.xlsx"
    assert rewrite(kept, target, about(["b"]), late_part=part, late_table=table, generated_at=WHEN) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.xlsx"]


def test_the_store_gives_back_only_an_intact_workbook_of_the_same_key(tmp_path: Path) -> None:
    book = tmp_path / "book.xlsx"
    write_workbook(book, sheets=[DATA], last=lambda _: about(["a"]))
    store = KeptWorkbooks(tmp_path / "kept")
    store.save("r", "key-1", book, {"rows": {"About": 1}})
    found = store.match("r", "key-1")
    assert found is not None and found.meta["rows"] == {"About": 1} and found.path.read_bytes() == book.read_bytes()
    assert (store.match("r", "key-2"), store.match("other", "key-1")) == (None, None)
    data = bytearray(found.path.read_bytes())
    data[100] ^= 0x01
    found.path.write_bytes(bytes(data))
    assert store.match("r", "key-1") is None
    found.path.chmod(0o666)
    with pytest.raises(StateFolderError, match="writable by others"):
        store.match("r", "key-1")


@pytest.mark.parametrize("move", [False, True])
def test_the_store_moves_a_workbook_the_caller_is_done_with(tmp_path: Path, move: bool) -> None:
    book = tmp_path / "staging" / "book.xlsx"
    book.parent.mkdir()
    write_workbook(book, sheets=[DATA], last=lambda _: about(["a"]))
    book.chmod(0o644)
    original = book.read_bytes()
    store = KeptWorkbooks(tmp_path / "kept")
    store.save("r", "key-1", book, {"rows": {"About": 1}}, move=move)
    found = store.match("r", "key-1")
    assert found is not None and found.path.read_bytes() == original
    assert found.path.stat().st_mode & 0o777 == 0o600
    assert book.exists() is not move  # moved: renamed into the store, not copied
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(p.name for p in store._paths("r"))
