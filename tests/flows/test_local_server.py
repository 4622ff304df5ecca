"""A manual `run` with no Prefect server to use starts its own local one, records the run on it, and stops it."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.local_server import LocalServer
from tests.flows.test_cli_demo import AS_OF, demo_config

REPO = Path(__file__).resolve().parents[2]


def test_each_server_log_is_a_new_owner_only_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    planted = tmp_path / "pipeline-sync-prefect-server-4300.log"
    planted.symlink_to(tmp_path / "victim")  # a name another local user could have guessed
    a, b = LocalServer(4300), LocalServer(4300)
    assert a.log_path != b.log_path
    for log in (a.log_path, b.log_path):
        assert log.parent == tmp_path and log.name.startswith("pipeline-sync-prefect-server-4300-")
        assert not log.is_symlink()
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert not (tmp_path / "victim").exists()


@pytest.mark.timeout(240)
def test_a_run_without_a_server_starts_one_records_the_run_and_stops_it(tmp_path: Path) -> None:
    cfg = demo_config(tmp_path, str(tmp_path / "out" / "pipeline.xlsx"))
    home, tmpdir = tmp_path / "prefect-home", tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_UI"))}
    env.update(PREFECT_HOME=str(home), TMPDIR=str(tmpdir))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg), "--as-of", AS_OF.isoformat()],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'out' / 'pipeline.xlsx'}" in proc.stdout
    with sqlite3.connect(home / "prefect.db") as db:  # the server it started kept the run
        runs = db.execute("SELECT flow_run.state_type, flow.name FROM flow_run JOIN flow ON flow.id = flow_run.flow_id"
                          ).fetchall()
        tasks = {name.rsplit("-", 1)[0] if name[-1].isdigit() else name: state for name, state in
                 db.execute("SELECT name, state_type FROM task_run").fetchall()}
    assert runs == [("COMPLETED", "sync-pipeline")]
    assert tasks and set(tasks.values()) == {"COMPLETED"}, tasks
    assert any(name.startswith("render") for name in tasks), tasks
    left = [p for p in psutil.process_iter(["cmdline", "environ"])
            if p.info["cmdline"] and "server" in p.info["cmdline"]
            and (p.info["environ"] or {}).get("PREFECT_HOME") == str(home)]
    assert left == []  # stopped with the run
    assert list(tmpdir.glob("pipeline-sync-prefect-server-*")) == []  # its log went with it


def test_a_manual_run_sends_no_heartbeats_and_leaves_the_setting_as_it_was(monkeypatch) -> None:
    pytest.importorskip("prefect")
    from prefect.settings import get_current_settings

    import flows.sync as sync

    seen: list[object] = []
    monkeypatch.setattr(sync, "sync_pipeline", lambda *a: seen.append(get_current_settings().flows.heartbeat_frequency)
                        or {"args": a})
    before = get_current_settings().flows.heartbeat_frequency
    assert sync.run_manual("cfg.yaml", None, True) == {"args": ("cfg.yaml", None, True)}
    assert seen == [None]
    assert get_current_settings().flows.heartbeat_frequency == before
