"""flows.kept_workbook: a run whose inputs are all as they were for the last workbook writes that
workbook again (new About sheet); any change in what the workbook shows makes a full run."""

from __future__ import annotations

import shutil
import zipfile
from datetime import date
from pathlib import Path

import openpyxl
import pytest

from flows.pipeline import run_pipeline

AS_OF = date(2026, 2, 1)
ROWS = [
    "1,Acme,Ava,Proposal,2026-01-05,2026-03-01,100",
    "2,Beta,Ben,Qualification,2026-01-06,2026-02-20,250",
    "3,Corp,Ava,Proposal,2025-12-01,2026-01-20,400",
    '4,"=HYPERLINK(""http://x"")",Ben,Proposal,2026-01-10,2026-02-28,75',
    "5,Delta,Cy,Proposal,2025-11-01,2026-01-15,not a number",
]


def write(tmp_path: Path, rows: list[str] = ROWS, quota: int = 1000) -> Path:
    (tmp_path / "d.csv").write_text("opportunity_id,name,owner,stage,created_date,close_date,amount\n"
                                    + "\n".join(rows) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("report: r\nsources: [{name: s, type: csv, path: d.csv}]\n"
                   "destinations: [{type: file, path: o.xlsx}]\n"
                   f"targets: {{quota: {{2026-Q1: {quota}}}}}\n")
    return cfg


def run(cfg: Path, as_of: date = AS_OF, **kw):
    result = run_pipeline(cfg, as_of, **kw)
    out = cfg.parent / f"run{len(list(cfg.parent.glob('run*.xlsx')))}.xlsx"
    shutil.copyfile(result.outputs[0].split(" ")[0], out)
    return result, out


def values(path: Path) -> dict[str, list[tuple]]:
    book = openpyxl.load_workbook(path)
    return {ws.title: [tuple(c.value for c in row) for row in ws.iter_rows()] for ws in book}


def body(sheets: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    return {k: v for k, v in sheets.items() if k != "About"}


def about(path: Path) -> dict[str, str]:
    return dict(values(path)["About"][1:])


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write(tmp_path)


def test_nothing_changed_writes_the_same_workbook_again_with_this_runs_about(cfg: Path) -> None:
    first, one = run(cfg)
    second, two = run(cfg)
    reference, three = run(cfg, reuse_workbook=False)  # analysed and rendered again
    assert (first.workbook_reused, second.workbook_reused, reference.workbook_reused) == (False, True, False)
    a, b, c = values(one), values(two), values(three)
    assert list(a) == list(b) == list(c)
    assert body(a) == body(b) == body(c)
    assert b["Opportunities"][4][1] == '=HYPERLINK("http://x")'  # still text
    assert about(two)["run id"] == second.run_id != first.run_id
    assert about(two)["source s: unchanged"].startswith("nothing changed")
    assert about(two)["workbook"].startswith(f"the sheets of run {first.run_id} (") and "workbook" not in about(three)
    same = ("run id", "generated at (UTC)", "workbook")
    assert {k: v for k, v in about(two).items() if "seconds" not in k and k not in same} \
        == {k: v for k, v in about(three).items() if "seconds" not in k and k not in same}
    assert (second.flags_count, second.notes) == (reference.flags_count, reference.notes)
    assert second.workbook_rows == {**reference.workbook_rows, "About": reference.workbook_rows["About"] + 1}
    assert [(s.rows_read, s.rows_loaded, s.rows_rejected, s.reused) for s in second.sources] == [(5, 4, 1, True)]
    with zipfile.ZipFile(two) as z2, zipfile.ZipFile(one) as z1:  # copied as stored: same deflated bytes
        opp = "xl/worksheets/sheet1.xml"
        assert (z2.getinfo(opp).CRC, z2.getinfo(opp).compress_size) == (z1.getinfo(opp).CRC, z1.getinfo(opp).compress_size)
        assert z2.testzip() is None


@pytest.mark.parametrize("change", ["row", "config", "as_of", "full_refresh", "state_gone", "kept_damaged"])
def test_any_change_makes_a_full_run(cfg: Path, change: str) -> None:
    run(cfg)
    as_of, kw = AS_OF, {}
    if change == "row":
        write(cfg.parent, [*ROWS[:1], ROWS[1].replace(",250", ",260"), *ROWS[2:]])
    elif change == "config":
        write(cfg.parent, quota=2000)
    elif change == "as_of":
        as_of = date(2026, 2, 2)
    elif change == "full_refresh":
        kw = {"full_refresh": True}
    elif change == "state_gone":  # the snapshot of as_of is gone with the state database
        for db in (cfg.parent / ".state").glob("*.db"):
            db.unlink()
    elif change == "kept_damaged":
        book = next((cfg.parent / ".state" / "workbooks").glob("*.xlsx"))
        data = bytearray(book.read_bytes())
        data[len(data) // 2] ^= 0xFF
        book.write_bytes(bytes(data))
    result, out = run(cfg, as_of, **kw)
    assert not result.workbook_reused
    reference, ref = run(cfg, as_of, reuse_workbook=False, **kw)
    assert body(values(out)) == body(values(ref))
    if change == "row":
        amounts = {r[0]: r for r in values(out)["Opportunities"][1:]}
        assert 260 in amounts["2"]


def test_the_kept_workbook_is_private_and_reused_only_once_committed(cfg: Path) -> None:
    run(cfg)
    folder = cfg.parent / ".state" / "workbooks"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".xlsx"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())


def test_the_digest_of_a_run_written_again_takes_its_kpis_from_the_snapshot_store(cfg: Path) -> None:
    from flows.notify import digests_for_run
    from flows.pipeline import prepare

    seen: dict[str, object] = {}

    def capture(step, name):  # as flows.sync._Steps keeps the transform's result
        def call(*a, **kw):
            out = step(*a, **kw)
            seen[name] = out
            return out
        return call

    first = run_pipeline(cfg, AS_OF, wrap=capture)
    (analysed,) = digests_for_run(prepare(cfg, AS_OF), first, seen["transform"])
    seen.clear()
    second = run_pipeline(cfg, AS_OF, wrap=capture)
    assert second.workbook_reused and "transform" not in seen
    (digest,) = digests_for_run(prepare(cfg, AS_OF), second, None)
    assert digest.report == "r" and digest.flags_total == first.flags_count and not digest.flag_details
    assert len(analysed.all_kpis) > 5
    assert [(k.metric, k.value) for k in digest.all_kpis] == [(k.metric, k.value) for k in analysed.all_kpis]
    assert (digest.health.rows_read, digest.health.rows_loaded, digest.health.rows_rejected) == (5, 4, 1)
