"""The CLI end to end on the bundled demo, in a temp folder; read the workbook back."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import openpyxl
import pytest
import yaml

from config.workbook import SHEET_ORDER
from flows.cli import main

REPO = Path(__file__).resolve().parents[2]
AS_OF = date(2026, 6, 30)


def demo_config(tmp: Path, destination: str, as_of: date = AS_OF, history_weeks: int = 0) -> Path:
    """The bundled demo config reading the demo files from `tmp/demo` (written by `demo-data` for `as_of`,
    with `history_weeks` weekly snapshots before it in the config's state)."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for src in cfg["sources"]:
        src["path"] = str(tmp / "demo" / Path(src["path"]).name)
        if "stage_history" in src:
            src["stage_history"]["path"] = str(tmp / "demo" / "stage_history.csv")
    cfg["destinations"] = [{"type": "file", "path": destination}]
    cfg_path = tmp / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    history = ["--history-weeks", str(history_weeks), "--config", str(cfg_path)] if history_weeks else []
    assert main(["demo-data", "--out", str(tmp / "demo"), "--as-of", as_of.isoformat(), *history]) == 0
    return cfg_path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """demo-data + run (plain functions, no Prefect) into a temp folder."""
    tmp = tmp_path_factory.mktemp("demo")
    cfg_path = demo_config(tmp, "out/pipeline {as_of}.xlsx")
    code = main(["run", "--config", str(cfg_path), "--as-of", AS_OF.isoformat(), "--no-prefect"])
    return tmp, cfg_path, code


def test_run_exits_zero_and_writes_the_workbook(demo_run, capsys):
    tmp, _, code = demo_run
    assert code == 0
    out = tmp / "out" / f"pipeline {AS_OF.isoformat()}.xlsx"
    assert out.is_file()
    wb = openpyxl.load_workbook(out, read_only=True)
    names = wb.sheetnames
    for required in ("Summary", "Opportunities", "Rejected", "About"):
        assert required in names
    known = [n for n in names if n in SHEET_ORDER]
    assert known == [n for n in SHEET_ORDER if n in names], "sheets follow the contract's order"
    assert names[0] == "Summary" and names[-1] == "About"


def test_about_reconciles_every_source(demo_run):
    tmp, _, _ = demo_run
    wb = openpyxl.load_workbook(tmp / "out" / f"pipeline {AS_OF.isoformat()}.xlsx", read_only=True)
    about = {r[0]: r[1] for r in wb["About"].iter_rows(min_row=2, values_only=True)}
    assert about["as_of"] == AS_OF.isoformat()
    assert about["period"] == "2026-Q2"
    for src in ("crm_export", "partner_export"):
        read = int(about[f"source {src}: rows read"])
        loaded = int(about[f"source {src}: rows loaded"])
        rejected = int(about[f"source {src}: rows rejected"])
        assert read == loaded + rejected
        assert about[f"source {src}: read = loaded + rejected"] == "yes"
    assert int(about["source crm_export: rows rejected"]) == 6
    assert len(about["config sha256"]) == 64


def test_rejected_rows_have_reasons_and_raw_values(demo_run):
    tmp, _, _ = demo_run
    ws = openpyxl.load_workbook(tmp / "out" / f"pipeline {AS_OF.isoformat()}.xlsx", read_only=True)["Rejected"]
    rows = list(ws.iter_rows(values_only=True))
    header, body = rows[0], rows[1:]
    assert header[:3] == ("source", "row", "reason")
    reasons = " | ".join(r[2] for r in body)
    for expected in ("amount 'abc' is not a number", "stage 'Negotiation??' is not a configured stage",
                     "created_date '2026-13-45' is not a date", "duplicate opportunity_id",
                     "amount '-1500' is negative", "currency 'XYZ' has no rate"):
        assert expected in reasons
    assert all(isinstance(r[1], int) and r[1] >= 2 for r in body)


def test_injected_deal_names_stay_text(demo_run):
    tmp, _, _ = demo_run
    ws = openpyxl.load_workbook(tmp / "out" / f"pipeline {AS_OF.isoformat()}.xlsx")["Opportunities"]
    header = [c.value for c in ws[1]]
    col = header.index("name")
    names = {row[col].value: row[col].data_type for row in ws.iter_rows(min_row=2)}
    assert names['=HYPERLINK("http://evil.example/","click me")'] == "s"
    assert names["+SUM(1,2)"] == "s"
    assert not any(t == "f" for t in names.values())
    date_col = header.index("created_date")
    assert ws.cell(row=2, column=date_col + 1).is_date


def test_summary_line_printed(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    (tmp_path / "d.csv").write_text("opportunity_id,stage,created_date,amount\n1,Proposal,2026-01-05,100\n2,Nope,2026-01-05,5\n")
    cfg.write_text("sources: [{name: s, type: csv, path: d.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n")
    assert main(["run", "--config", str(cfg), "--as-of", "2026-02-01", "--no-prefect"]) == 0
    out = capsys.readouterr().out
    assert "source s: 2 read, 1 loaded, 1 rejected" in out
    assert str(tmp_path / "o.xlsx") in out


def test_validate_and_failure_exit_codes(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [{name: s, type: csv, path: missing.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n")
    assert main(["validate", "--config", str(cfg)]) == 2
    assert f"sources[0].path (s): file not found: {tmp_path / 'missing.csv'}" in capsys.readouterr().err
    for extra in (["--no-prefect"], []):  # refused before Prefect starts, with or without it
        assert main(["run", "--config", str(cfg), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"config error in {cfg}:", f"  - sources[0].path (s): file not found: {tmp_path / 'missing.csv'}"]
    assert not (tmp_path / "o.xlsx").exists()


def test_demo_data_writes_a_config_that_runs_from_any_folder(tmp_path, monkeypatch, capsys):
    """An installed package has no out/ beside config/: demo-data writes a config for its own folder."""
    folder = tmp_path / "x"
    assert main(["demo-data", "--out", str(folder), "--as-of", AS_OF.isoformat()]) == 0
    written = folder / "demo.yaml"
    assert f"demo config: {written}" in capsys.readouterr().out
    cfg = yaml.safe_load(written.read_text())
    bundled = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    assert [s["path"] for s in cfg["sources"]] == ["deals.csv", "partner-deals.xlsx"]
    assert cfg["sources"][0]["stage_history"]["path"] == "stage_history.csv"
    assert cfg["destinations"] == [{"type": "file", "path": "pipeline.xlsx"}]
    assert {k: v for k, v in cfg.items() if k not in ("sources", "destinations")} == \
        {k: v for k, v in bundled.items() if k not in ("sources", "destinations")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "--config", str(written), "--as-of", AS_OF.isoformat(), "--no-prefect"]) == 0
    assert "source crm_export: " in capsys.readouterr().out
    assert (folder / "pipeline.xlsx").is_file() and not list(elsewhere.iterdir())


def test_check_source_names_the_rows_of_bad_values(tmp_path, capsys):
    """check-source shows each kind of rejection with its count, the file rows it was found on and one
    full reason (issue 21: 'check-source names the rows of the bad values it shows')."""
    import pandas as pd

    cfg_path = demo_config(tmp_path, str(tmp_path / "unused.xlsx"))
    deals_csv = tmp_path / "demo" / "deals.csv"
    deals = pd.read_csv(deals_csv, dtype=str, keep_default_na=False)
    bad_amount = [2, 5, 9, 11, 13, 17, 20]  # data-row positions; file row = position + 2 (header is row 1)
    for i in bad_amount:
        deals.loc[i, "Amount"] = f"lots{i}"
    deals.loc[7, "Close Date"] = "someday"
    deals.to_csv(deals_csv, index=False)
    capsys.readouterr()
    assert main(["check-source", "--config", str(cfg_path), "--source", "crm_export", "--sample", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    amount = next(line for line in out if "is not a number" in line and "(rows " in line)
    rows = [i + 2 for i in bad_amount]
    count = int(amount.split()[0])
    assert count >= 7  # ours, plus the demo's own deliberately bad amounts further down the file
    assert f"(rows {', '.join(map(str, rows[:5]))} and {count - 5} more)" in amount
    example = out[out.index(amount) + 1]
    assert example.strip().startswith(f"e.g. row {rows[0]}:") and "lots2" in example
    close = next(line for line in out if line.lstrip().startswith("1  close_date"))
    assert close.endswith("(row 9)")


HISTORY_SUNDAYS = [date(2026, 6, 14), date(2026, 6, 21), date(2026, 6, 28)]  # the 3 week ends before AS_OF (a Tuesday)


def _rows(book: Path, sheet: str) -> list[tuple]:
    return list(openpyxl.load_workbook(book, read_only=True)[sheet].iter_rows(values_only=True))


@pytest.fixture(scope="module")
def demo_with_history(tmp_path_factory):
    """demo-data --history-weeks 3, the run, then both again (what a second `make run` does)."""
    tmp = tmp_path_factory.mktemp("history")
    book = tmp / "out.xlsx"
    cfg_path = demo_config(tmp, str(book), history_weeks=3)
    run = ["run", "--config", str(cfg_path), "--as-of", AS_OF.isoformat(), "--no-prefect"]
    assert main(run) == 0
    first = {s: _rows(book, s) for s in ("Trends", "Changes", "Movement")}
    demo_config(tmp, str(book), history_weeks=3)
    assert main(run) == 0
    return first, {s: _rows(book, s) for s in ("Trends", "Changes", "Movement")}


def test_demo_history_fills_trends_changes_and_movement(demo_with_history):
    first, _ = demo_with_history
    trends = first["Trends"]
    assert trends[0][:3] == ("as_of", "open_deals", "open_value")
    assert [r[0].date() for r in trends[1:]] == [*HISTORY_SUNDAYS, AS_OF]
    assert all(r[1] > 100 and r[2] > 1_000_000 for r in trends[1:])  # every snapshot holds the open pipeline
    changes = first["Changes"]
    assert changes[0][0] == "change" and len(changes) > 1
    assert {r[0] for r in changes[1:]} <= {"new", "won", "lost", "pushed", "pulled_in", "increased", "decreased",
                                           "stage_forward", "stage_backward", "removed"}
    movement = first["Movement"]
    assert movement[0][0].endswith("from the snapshot of 2026-06-28 (D0) to 2026-06-30 (D1)")
    head = next(i for i, r in enumerate(movement) if r[:4] == ("category", "sign", "deals", "value"))
    team = {r[0]: r for r in movement[head + 1:head + 11]}
    assert list(team) == ["start", "created", "pulled_in", "increased", "decreased", "won", "lost", "pushed_out",
                          "removed", "end"]
    assert team["start"][3] > 0 and team["start"][2] > 10
    moved = sum((1 if team[c][1] == "+" else -1) * team[c][3] for c in list(team)[1:-1])
    assert team["start"][3] + moved == pytest.approx(team["end"][3], abs=0.005)  # balances to the cent
    assert any(team[c][2] for c in list(team)[1:-1]), "something moved between D0 and D1"


def test_demo_history_twice_adds_nothing(demo_with_history, capsys):
    first, second = demo_with_history
    assert second["Trends"] == first["Trends"]  # no duplicated dates
    assert second["Movement"][0] == first["Movement"][0]
    assert second["Changes"] == first["Changes"]


def test_demo_history_refuses_a_config_reading_other_files(tmp_path, capsys):
    other = tmp_path / "mine.yaml"
    (tmp_path / "d.csv").write_text("opportunity_id,stage,created_date,amount\n1,Proposal,2026-01-05,100\n")
    other.write_text("sources: [{name: s, type: csv, path: d.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n")
    args = ["demo-data", "--out", str(tmp_path / "demo"), "--as-of", AS_OF.isoformat(), "--history-weeks", "2"]
    assert main([*args, "--config", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"sources[0].path (s): {tmp_path / 'd.csv'} is not in {tmp_path / 'demo'}" in err
    assert not (tmp_path / ".state").exists()  # nothing stored
    assert main([*args[:-1], "-1"]) == 2
    assert "--history-weeks must be 0 to 104 (got -1)" in capsys.readouterr().err


def test_make_run_stores_the_history_first():
    """`make run` asks demo-data for the weekly snapshots, into the state of the config it then runs."""
    recipe = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    steps = [line.split()[1:] for line in recipe]
    assert [s[0] for s in steps] == ["demo-data", "run"]
    demo, run = steps
    assert int(demo[demo.index("--history-weeks") + 1]) >= 2
    assert demo[demo.index("--config") + 1] == run[run.index("--config") + 1] == "config/demo.yaml"
