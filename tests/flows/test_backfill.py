"""Backfills over a synthetic history (the demo org with stage history): each date equals a direct
run at that date, a second backfill changes nothing, an interrupted one resumes, --force
recomputes, CRM sources come from the stored state, and history-only backfills feed Trends."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import openpyxl
import pytest
import sqlalchemy as sa
import yaml
from python_calamine import CalamineWorkbook

from config.loader import ConfigError, load_config
from connectors.state.backfill import backfill_dates as backfill_table
from connectors.state.db import make_engine
from connectors.state.snapshots import (
    snapshot_deal_parts,
    snapshot_deals,
    snapshot_metrics,
    snapshots,
    stored_dates,
)
from flows.backfill import backfill, backfill_dates
from flows.cli import main
from flows.pipeline import run_pipeline
from transforms.demo_data import generate_demo

REPO = Path(__file__).resolve().parents[2]
ANCHOR = date(2026, 6, 30)
MONTH_ENDS = [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30), date(2026, 5, 31),
              date(2026, 6, 30)]
VOLATILE_ABOUT = ("run id", "generated at (UTC)", "extraction seconds")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory) -> Path:
    """A small demo org (deals + stage history), written once for the module."""
    folder = tmp_path_factory.mktemp("demo-data")
    deals, history = generate_demo(ANCHOR, n_deals=150)
    deals.to_csv(folder / "deals.csv", index=False)
    history.to_csv(folder / "stage_history.csv", index=False)
    return folder


def write_config(folder: Path, demo: Path, *, write_workbooks: bool = True, dest: str = "out/pipeline {as_of}.xlsx",
                 **extra: object) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    crm = cfg["sources"][0]
    crm["path"] = str(demo / "deals.csv")
    crm["stage_history"]["path"] = str(demo / "stage_history.csv")
    cfg["sources"] = [crm]
    cfg["destinations"] = [{"type": "file", "path": dest}]
    cfg["backfill"] = {"write_workbooks": write_workbooks}
    cfg["state"] = {"url": f"sqlite:///{folder / 'state.db'}"}
    cfg.update(extra)
    path = folder / f"c-{len(list(folder.glob('c-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cells(path: Path) -> dict[str, list[tuple]]:
    """Every sheet's values; About without the rows that differ by run (run id, time, durations)."""
    book = CalamineWorkbook.from_path(str(path))
    out = {}
    for name in book.sheet_names:
        rows = [tuple(r) for r in book.get_sheet_by_name(name).to_python()]
        if name == "About":
            rows = [r for r in rows if not str(r[0]).endswith(VOLATILE_ABOUT)]
        out[name] = rows
    return out


def store(folder: Path) -> dict[str, list[tuple]]:
    """Snapshot and completion rows, without their timestamps."""
    engine = make_engine(f"sqlite:///{folder / 'state.db'}")
    with engine.connect() as conn:
        out = {}
        for table in (snapshots, snapshot_metrics, snapshot_deals, snapshot_deal_parts, backfill_table):
            cols = [c for c in table.c if c.name not in ("saved_at", "completed_at")]
            out[table.name] = [tuple(r) for r in conn.execute(sa.select(*cols).order_by(*table.primary_key.columns))]
    return out


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((folder / "out").glob("*.xlsx"))}


# ----------------------------------------------------------------------------- dates


@pytest.mark.parametrize(("start", "end", "every", "fy", "expected"), [
    (date(2026, 2, 27), date(2026, 3, 2), "day", 1,
     [date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 2)]),
    (date(2026, 1, 1), date(2026, 1, 25), "week", 1, [date(2026, 1, 4), date(2026, 1, 11), date(2026, 1, 18),
                                                      date(2026, 1, 25)]),
    (date(2026, 1, 1), date(2026, 6, 30), "month", 1, MONTH_ENDS),
    (date(2026, 1, 15), date(2026, 6, 29), "month", 1, MONTH_ENDS[:-1]),  # June ends after --to
    (date(2026, 1, 1), date(2026, 12, 31), "quarter", 1,
     [date(2026, 3, 31), date(2026, 6, 30), date(2026, 9, 30), date(2026, 12, 31)]),
    (date(2026, 1, 1), date(2026, 12, 31), "quarter", 2,  # fiscal year from February
     [date(2026, 1, 31), date(2026, 4, 30), date(2026, 7, 31), date(2026, 10, 31)]),
])
def test_backfill_dates(start, end, every, fy, expected):
    assert backfill_dates(start, end, every, fy) == expected


@pytest.mark.parametrize(("start", "end", "every", "message"), [
    (date(2026, 2, 1), date(2026, 1, 1), "day", "--from 2026-02-01 is after --to 2026-01-01"),
    (date(2026, 1, 1), date(2026, 2, 1), "fortnight", "--every must be one of day, week, month, quarter"),
])
def test_backfill_dates_reject_bad_arguments(start, end, every, message):
    with pytest.raises(ValueError, match=message):
        backfill_dates(start, end, every)


# ----------------------------------------------------------------------------- backfill


def test_each_date_equals_a_direct_run_at_that_date(tmp_path, demo_files):
    result = backfill(write_config(tmp_path, demo_files), date(2026, 1, 1), date(2026, 4, 30), "month")
    assert [(o.as_of, o.status) for o in result.outcomes] == [(d, "done") for d in MONTH_ENDS[:4]]
    assert all(o.open_deals > 0 and o.flags > 0 for o in result.outcomes)
    # direct runs on the same store, writing elsewhere
    direct = write_config(tmp_path, demo_files, dest="direct/{as_of}.xlsx")
    for o in result.outcomes:
        run = run_pipeline(direct, o.as_of)
        ours, theirs = cells(Path(o.output)), cells(Path(run.outputs[0]))
        assert ours["Metrics"] == theirs["Metrics"]
        assert ours == theirs | {"About": ours["About"]}  # every sheet, Trends and Changes included
        assert len(ours["Metrics"]) > 50 and run.flags_count == o.flags
    assert stored_dates(make_engine(f"sqlite:///{tmp_path / 'state.db'}"), "demo") == MONTH_ENDS[:4]
    # the backfill's own markers: each workbook knows its as_of and that it came from a backfill
    about = dict(r[:2] for r in cells(Path(result.outcomes[2].output))["About"])
    assert (about["as_of"], about["period"], about["backfill"]) == ("2026-03-31", "2026-Q1", "yes")
    changes = openpyxl.load_workbook(result.outcomes[2].output, read_only=True)["Changes"]
    assert changes.max_row >= 2


def test_running_twice_leaves_the_same_store_and_files_and_force_recomputes(tmp_path, demo_files):
    path = write_config(tmp_path, demo_files)
    first = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month", concurrency=3)
    store1, files1 = store(tmp_path), files(tmp_path)
    assert len(files1) == 4 and len(store1["backfill_dates"]) == 4

    second = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month")
    assert [o.status for o in second.outcomes] == ["skipped"] * 4
    assert [(o.open_deals, o.flags, o.output) for o in second.outcomes] == [
        (o.open_deals, o.flags, o.output) for o in first.outcomes]
    assert store(tmp_path) == store1 and files(tmp_path) == files1  # untouched, byte for byte

    forced = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month", force=True, concurrency=1)
    assert [o.status for o in forced.outcomes] == ["done"] * 4
    assert store(tmp_path) == store1
    after = files(tmp_path)
    assert all(after[name][1] != files1[name][1] for name in after)  # rewritten ...
    for o in first.outcomes:  # ... with the same values
        assert cells(Path(o.output)) == cells(Path(forced.outcomes[first.outcomes.index(o)].output))


def test_an_interrupted_backfill_resumes_where_it_stopped(tmp_path, demo_files):
    path = write_config(tmp_path, demo_files)
    clean = tmp_path / "clean"
    clean.mkdir()
    reference = backfill(write_config(clean, demo_files), date(2026, 1, 1), date(2026, 4, 30), "month")

    # stopped half-way: only January and February were backfilled
    half = backfill(path, date(2026, 1, 1), date(2026, 2, 28), "month")
    assert [o.status for o in half.outcomes] == ["done"] * 2
    # then March's workbook cannot be written (a folder is in the way): that date fails
    blocker = tmp_path / "out" / "pipeline 2026-03-31.xlsx"
    blocker.mkdir(parents=True)
    failed = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month")
    assert [o.status for o in failed.outcomes] == ["skipped", "skipped", "failed", "done"]
    assert "cannot write" in failed.outcomes[2].error
    assert [o.as_of for o in failed.failed] == [date(2026, 3, 31)]

    blocker.rmdir()
    resumed = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month")
    assert [o.status for o in resumed.outcomes] == ["skipped", "skipped", "done", "skipped"]
    # the same store and workbooks as an uninterrupted backfill
    mine, theirs = store(tmp_path), store(clean)
    assert {k: v for k, v in mine.items() if k != "backfill_dates"} == {
        k: v for k, v in theirs.items() if k != "backfill_dates"}
    assert [r[:-1] for r in mine["backfill_dates"]] == [r[:-1] for r in theirs["backfill_dates"]]
    for ref in reference.outcomes:  # About differs by the config file (its sha256)
        mine_cells, ref_cells = cells(tmp_path / "out" / Path(ref.output).name), cells(Path(ref.output))
        assert mine_cells | {"About": None} == ref_cells | {"About": None}

    # a forced backfill that fails half-way resumes at its own failure, not at the older completions
    blocker = tmp_path / "out" / "pipeline 2026-02-28.xlsx"
    blocker.unlink()
    blocker.mkdir()
    forced = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month", force=True)
    assert [o.status for o in forced.outcomes] == ["done", "failed", "done", "done"]
    blocker.rmdir()
    again = backfill(path, date(2026, 1, 1), date(2026, 4, 30), "month")
    assert [o.status for o in again.outcomes] == ["skipped", "done", "skipped", "skipped"]


def test_history_only_backfill_feeds_the_trends_of_the_next_run(tmp_path, demo_files):
    path = write_config(tmp_path, demo_files, write_workbooks=False, dest="out/pipeline.xlsx")
    result = backfill(path, date(2026, 1, 1), date(2026, 5, 31), "month")
    assert [(o.status, o.output) for o in result.outcomes] == [("done", "snapshot only")] * 5
    assert not (tmp_path / "out").exists()
    run = run_pipeline(path, ANCHOR)
    trends = list(openpyxl.load_workbook(run.outputs[0], read_only=True)["Trends"].iter_rows(values_only=True))
    assert [r[0].date() for r in trends[1:]] == MONTH_ENDS
    # turning workbooks on later recomputes the dates that have none yet
    later = write_config(tmp_path, demo_files, dest="out/pipeline {as_of}.xlsx")
    again = backfill(later, date(2026, 1, 1), date(2026, 2, 28), "month")
    assert [o.status for o in again.outcomes] == ["done"] * 2
    assert sorted(p.name for p in (tmp_path / "out").glob("pipeline 2026-*.xlsx")) == [
        "pipeline 2026-01-31.xlsx", "pipeline 2026-02-28.xlsx"]


def test_workbooks_need_as_of_in_the_destination_path(tmp_path, demo_files):
    path = write_config(tmp_path, demo_files, dest="out/pipeline.xlsx")
    with pytest.raises(ConfigError) as err:
        backfill(path, date(2026, 1, 1), date(2026, 3, 31), "month")
    assert err.value.problems == [
        f"destinations[0].path '{tmp_path / 'out' / 'pipeline.xlsx'}' has no {{as_of}}: every backfill date would "
        "overwrite it; add {as_of} to the path, or set backfill.write_workbooks: false"]


def test_reports_are_backfilled_each_with_its_own_snapshots(tmp_path, demo_files):
    reports = [{"name": team.lower(), "filter": {"teams": [team]},
                "destinations": [{"type": "file", "path": f"out/{team} {{as_of}}.xlsx"}]} for team in ("East", "West")]
    path = write_config(tmp_path, demo_files, write_workbooks=False, reports=reports)
    result = backfill(path, date(2026, 1, 1), date(2026, 3, 31), "month")
    assert [(o.report, o.as_of) for o in result.outcomes] == [
        (r, d) for r in ("demo", "east", "west") for d in MONTH_ENDS[:3]]
    by = {(o.report, o.as_of): o.open_deals for o in result.outcomes}
    assert all(by["east", d] + by["west", d] == by["demo", d] for d in MONTH_ENDS[:3])
    only_west = backfill(path, date(2026, 1, 1), date(2026, 3, 31), "month", reports=["west"], force=True)
    assert {o.report for o in only_west.outcomes} == {"west"}


def test_cli_prints_progress_and_the_final_table(tmp_path, demo_files, capsys):
    path = write_config(tmp_path, demo_files)
    args = ["backfill", "--config", str(path), "--from", "2026-01-01", "--to", "2026-03-31", "--every", "month"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "[1/3] demo 2026-01-31: done (" in err and "[3/3] demo 2026-03-31: done (" in err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["date", "report", "status", "open", "deals", "flags", "output"]
    assert lines[1].split()[:3] == ["2026-01-31", "demo", "done"]
    assert lines[1].endswith(str(tmp_path / "out" / "pipeline 2026-01-31.xlsx"))
    assert lines[-1].startswith("3 done in ")
    assert main([*args, "--report", "nope"]) == 1
    assert "unknown report(s): nope; this config has: demo" in capsys.readouterr().err
    assert main([*args[:-2], "--every", "month", "--to", "2025-01-01"]) == 2


# ----------------------------------------------------------------------------- CRM sources


def test_crm_sources_come_from_the_stored_state_unless_refetch(tmp_path):
    from tests.fakes.hubspot import TOKEN, FakeHubSpot, seed_demo
    from tests.fakes.server import FakeServer

    hub = FakeHubSpot(clock=lambda: 0.0)
    seed_demo(hub)
    cfg = yaml.safe_load((REPO / "config" / "examples" / "hubspot.yaml").read_text())
    cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    cfg["backfill"] = {"write_workbooks": True}
    path = tmp_path / "hubspot.yaml"
    env = {"HUBSPOT_TOKEN": TOKEN}
    with FakeServer(hub, tmp_path) as srv:
        cfg["sources"][0].update(base_url=srv.url, ca_bundle=srv.ca_path)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with pytest.raises(Exception, match="source 'hubspot_main' has no stored records yet: run 'pipeline-sync run' "
                                            "once, or backfill with --refetch"):
            backfill(path, date(2026, 9, 1), date(2026, 11, 30), "month", loaded=load_config(path, env=env))
        pulled = backfill(path, date(2026, 9, 1), date(2026, 11, 30), "month", refetch=True,
                          loaded=load_config(path, env=env))
        assert srv.requests  # --refetch pulled
    assert [o.status for o in pulled.outcomes] == ["done"] * 3
    assert pulled.sources[0].rows_read == 7 and not pulled.sources[0].stale
    # the server is gone: a backfill reads the state the refetch committed
    again = backfill(path, date(2026, 9, 1), date(2026, 11, 30), "month", force=True, loaded=load_config(path, env=env))
    assert [o.status for o in again.outcomes] == ["done"] * 3
    assert again.sources[0].rows_read == 7 and not again.sources[0].stale
    assert "hubspot_main: 7 stored records" in again.notes[0]
    for a, b in zip(pulled.outcomes, again.outcomes, strict=True):
        assert (a.open_deals, a.flags) == (b.open_deals, b.flags)
        assert cells(Path(b.output))["Metrics"] == cells(Path(a.output))["Metrics"]
