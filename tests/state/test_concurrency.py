"""Concurrency and durability: two runs of one report at once (one waits or skips), and a process killed at
any step leaves the state store as the last good run left it (each run's writes are one transaction)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import openpyxl
import pytest

from flows.cli import main
from flows.schedules import lock_path, report_lock
from tests.fault_matrix import AS_OF, ROOT, World, sheet_values

STATE_TABLES_SKIPPED = ("onedrive_published",)  # the OneDrive eTag record is the publish step's own write


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    with World(tmp_path_factory.mktemp("concurrency")) as w:
        yield w


def state_dump(folder: Path) -> list[str]:
    """Every row of the state store but the OneDrive publish record, in a stable order."""
    with sqlite3.connect(folder / ".state" / "pipeline-sync.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        rows = []
        for t in tables:
            if t not in STATE_TABLES_SKIPPED:
                rows += [f"{t}: {r}" for r in sorted(map(repr, con.execute(f'SELECT * FROM "{t}"')))]
    return rows


# ----------------------------------------------------------------------------- two runs at once


class Watch(logging.Handler):
    """Sets `event` when a log message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def _two_runs(world: World, folder: Path, monkeypatch, overlap: str) -> tuple[dict | BaseException, dict | BaseException]:
    """Run A holds the report (blocked inside its HubSpot extraction) while run B starts; then A goes on."""
    from flows.sync import sync_report

    for k, v in world.env().items():
        monkeypatch.setenv(k, v)
    cfg_path = world.write_config(folder, **{"schedule": [{"cron": "0 6 * * 1-5", "overlap": overlap}]})
    inside, go_on = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        assert go_on.wait(60)
    world.fakes.wire["hubspot"].before[1] = hold
    results: dict[str, dict | BaseException] = {}

    def run(name: str) -> None:
        try:
            results[name] = sync_report(str(cfg_path), AS_OF, schedule_index=0, task_wrapper=lambda step, n: step)
        except BaseException as exc:  # reported below
            results[name] = exc

    a = threading.Thread(target=run, args=("a",))
    a.start()
    assert inside.wait(60)
    watch = Watch("waiting for run")
    logging.getLogger("pipeline_sync").addHandler(watch)
    b = threading.Thread(target=run, args=("b",))
    b.start()
    try:
        if overlap == "wait":
            assert watch.event.wait(60)  # B is waiting for A's lock
            assert b.is_alive()
        else:
            b.join(60)  # B skipped at once, while A still holds the report
            assert "b" in results
    finally:
        logging.getLogger("pipeline_sync").removeHandler(watch)
        go_on.set()
    a.join(120)
    b.join(120)
    return results["a"], results["b"]


@pytest.mark.parametrize("overlap", ["wait", "skip"])
def test_two_runs_of_one_report_at_once_one_waits_or_skips(world: World, monkeypatch, overlap: str) -> None:
    folder = world.restore(f"two-runs-{overlap}")
    a, b = _two_runs(world, folder, monkeypatch, overlap)
    assert isinstance(a, dict) and "skipped" not in a, a
    if overlap == "wait":
        assert isinstance(b, dict) and "skipped" not in b, b  # ran after A, not alongside it
        assert b["run_id"] != a["run_id"]
    else:
        assert isinstance(b, dict) and b["skipped"].startswith("overlap: skip: run")
    # the store: one snapshot for the date, both cursors set; the workbook whole and equal to a clean run's
    dump = state_dump(folder)
    assert sum(1 for r in dump if r.startswith("snapshots: ")) == 1
    assert sum(1 for r in dump if r.startswith("source_cursors: ")) == 2
    book = (folder / "out" / f"pipeline-{AS_OF.isoformat()}.xlsx").read_bytes()
    assert sheet_values(book) == world.baseline()
    assert not list((folder / "out").glob("*.tmp"))


def test_cli_runs_of_one_report_wait_for_each_other(tmp_path: Path, capsys) -> None:
    (tmp_path / "d.csv").write_text("opportunity_id,stage,created_date,amount\n1,Proposal,2026-01-05,100\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("report: r1\nsources: [{name: s, type: csv, path: d.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n")
    codes: list[int] = []
    with report_lock(lock_path(tmp_path / ".state", "r1"), "wait", run_id="other-run") as held:
        assert held.acquired
        t = threading.Thread(target=lambda: codes.append(main(["run", "--config", str(cfg), "--no-prefect",
                                                                  "--as-of", "2026-02-01"])))
        t.start()
        t.join(3)  # it cannot finish while the report is held
        assert t.is_alive() and not (tmp_path / "o.xlsx").exists()
    t.join(120)
    assert codes == [0] and (tmp_path / "o.xlsx").is_file()
    assert "waiting for run other-run of report r1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a crash at any step

CHILD = """
import os, signal, sys
from pathlib import Path
from config.loader import load_config
from connectors.http.session import RetryPolicy
from flows.pipeline import run_pipeline
from tests.fault_matrix import AS_OF

folder, kill_at = Path(sys.argv[1]), sys.argv[2]
if kill_at == "inside-commit":  # after the cursors are written, inside the same transaction
    import connectors.state.snapshots as snapshots
    original = snapshots.save_snapshot
    def save_then_die(conn, report, record):
        original(conn, report, record)
        os.kill(os.getpid(), signal.SIGKILL)
    snapshots.save_snapshot = save_then_die

def wrap(step, name):
    def call(*args, **kwargs):
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(*args, **kwargs)
    return call

path = folder / "pipeline.yaml"
run_pipeline(path, AS_OF, loaded=load_config(path), wrap=wrap, retry_policy=RetryPolicy(sleep=lambda s: None))
"""


@pytest.mark.parametrize("kill_at", ["extract-salesforce_main", "render", "publish-file-1", "commit-state",
                                     "inside-commit"])
def test_a_run_killed_at_any_step_leaves_the_store_as_the_last_good_run(world: World, kill_at: str) -> None:
    folder = world.restore(f"kill-{kill_at}")
    world.write_config(folder)
    before = state_dump(folder)
    env = {**os.environ, **world.env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), kill_at], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert state_dump(folder) == before  # cursors, records and snapshots untouched; the file is whole
    local = folder / "out" / f"pipeline-{AS_OF.isoformat()}.xlsx"
    openpyxl.load_workbook(local, read_only=True).close()  # whichever workbook is there is complete
    assert not list((folder / "out").glob("*.tmp"))
    rerun = world.run(folder)  # the next run picks everything up
    assert rerun.error is None
    after = state_dump(folder)
    assert after != before and sheet_values(local.read_bytes()) == world.baseline()


def test_a_state_store_locked_by_another_program_ends_the_cli_run_in_one_line(world: World, capsys,
                                                                                 monkeypatch) -> None:
    from tests.fault_matrix import HOLD_LOCK

    folder = world.restore("cli-db-locked")
    db = folder / ".state" / "pipeline-sync.db"
    world.write_config(folder, **{"state.url": f"sqlite:///{db}?timeout=1"})
    for k, v in world.env().items():
        monkeypatch.setenv(k, v)
    before = (folder / "out" / f"pipeline-{AS_OF.isoformat()}.xlsx").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), "600"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        code = main(["run", "--config", str(folder / "pipeline.yaml"), "--as-of", AS_OF.isoformat(), "--no-prefect"])
    finally:
        holder.kill()
        holder.wait(30)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["pipeline-sync: run failed: state database: database is locked; nothing was committed"]
    assert (folder / "out" / f"pipeline-{AS_OF.isoformat()}.xlsx").read_bytes() == before
