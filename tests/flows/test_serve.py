"""`pipeline-sync serve`: deployments from the config, and one real start/stop of a local Prefect server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from config.loader import load_config
from flows.cli import main
from flows.serve import check_unique, deployment_specs, describe

REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
timezone: Europe/Berlin
report: sales-emea
sources: [{name: crm, type: csv, path: deals.csv}]
destinations: [{type: file, path: out/pipeline.xlsx}]
schedule:
  - cron: "0 6 * * 1-5"
  - {cron: "30 2 * * *", timezone: America/New_York, catch_up: all, overlap: skip}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sales.yaml"
    path.write_text(CONFIG)
    return path


def test_one_deployment_per_schedule_entry(config: Path):
    specs = deployment_specs(load_config(config))
    assert [(s.name, s.cron, s.timezone, s.catch_up, s.overlap, s.parameters) for s in specs] == [
        ("sales-emea", "0 6 * * 1-5", "Europe/Berlin", "latest", "wait", {"config_path": str(config), "schedule_index": 0}),
        ("sales-emea-2", "30 2 * * *", "America/New_York", "all", "skip",
         {"config_path": str(config), "schedule_index": 1}),
    ]
    assert describe(specs[0], datetime(2026, 3, 27, 12, tzinfo=UTC)) == (
        "sync-pipeline/sales-emea: '0 6 * * 1-5' Europe/Berlin (catch_up: latest, overlap: wait); "
        "next run 2026-03-30T06:00+02:00")


def test_config_without_schedule_gets_one_manual_deployment_and_names_must_not_clash(tmp_path: Path, config: Path):
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.split("schedule:")[0])
    [spec] = deployment_specs(load_config(other))
    assert (spec.name, spec.cron, spec.parameters["schedule_index"]) == ("sales-emea", None, None)
    with pytest.raises(ValueError, match="two deployments would be named 'sales-emea'"):
        check_unique([*deployment_specs(load_config(config)), spec])


def test_named_reports_get_their_own_deployments(tmp_path: Path):
    path = tmp_path / "teams.yaml"
    path.write_text(CONFIG.replace("destinations: [{type: file, path: out/pipeline.xlsx}]\n", "")
                    .split("schedule:")[0]
                    + "schedule: [{cron: '0 5 * * 1'}]\n"
                    + "reports:\n"
                    + "  - {name: east, filter: {teams: [East]}, destinations: [{type: file, path: east.xlsx}],\n"
                    + "     schedule: [{cron: '0 6 * * 1-5', timezone: Asia/Tokyo, overlap: skip}, {cron: '0 18 * * 5'}]}\n"
                    + "  - {name: west, filter: {teams: [West]}, destinations: [{type: file, path: west.xlsx}]}\n")
    specs = deployment_specs(load_config(path))
    assert [(s.name, s.cron, s.timezone, s.schedule_index, s.reports, s.tags[-1]) for s in specs] == [
        ("sales-emea", "0 5 * * 1", "Europe/Berlin", 0, None, "report:sales-emea"),
        ("east", "0 6 * * 1-5", "Asia/Tokyo", 0, ["east"], "report:east"),
        ("east-2", "0 18 * * 5", "Europe/Berlin", 1, ["east"], "report:east"),
    ]
    assert specs[1].parameters == {"config_path": str(path), "schedule_index": 0, "reports": ["east"]}
    from flows.schedules import schedules_for

    cfg = load_config(path).config
    assert [s.cron for s in schedules_for(cfg, ["east"])[1]] == ["0 6 * * 1-5", "0 18 * * 5"]
    assert schedules_for(cfg, None) == ("sales-emea", cfg.schedule)
    assert schedules_for(cfg, ["east", "west"]) == ("sales-emea", cfg.schedule)


def test_trigger_without_a_server_says_what_to_do(config: Path, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["trigger", "--config", str(config)]) == 1
    assert "PREFECT_API_URL is not set: start `pipeline-sync serve`" in capsys.readouterr().err


def _get(url: str) -> tuple[int, dict | bool]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.timeout(90)
def test_serve_starts_a_local_server_registers_deployments_and_stops_it(config: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(config), "--no-ui"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("press Ctrl-C") or proc.poll() is not None:
                break
        ready = time.monotonic() - t0
        out = "\n".join(lines)
        assert lines[-1] == "press Ctrl-C to stop (stops the local Prefect server too)", out
        port = int(lines[0].split("127.0.0.1:")[1].split()[0])
        api = f"http://127.0.0.1:{port}/api"
        assert f"API: {api}" in out
        assert f"export PREFECT_API_URL={api}" in out  # what `trigger` in another shell needs
        record = config.parent / ".state" / "prefect-server.json"
        assert json.loads(record.read_text())["api_url"] == api  # a manual `run` of this config uses it
        from flows.server_record import find_server

        assert find_server(config.parent / ".state") == api
        assert _get(f"{api}/health") == (200, True)
        status, dep = _get(f"{api}/deployments/name/sync-pipeline/sales-emea-2")
        assert status == 200
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["30 2 * * *"]
        assert [s["schedule"]["timezone"] for s in dep["schedules"]] == ["America/New_York"]
        assert dep["parameters"] == {"config_path": str(config), "schedule_index": 1}
        assert dep["paused"] is False
        servers = [p for p in psutil.process_iter(["cmdline"])
                   if p.info["cmdline"] and "server" in p.info["cmdline"] and str(port) in p.info["cmdline"]]
        assert len(servers) == 1

        proc.send_signal(signal.SIGTERM)  # what `docker stop` / systemd send
        rest, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, rest
        assert rest.rstrip().splitlines()[-2:] == ["stopping the local Prefect server ...", "stopped"]
        assert not record.exists()
        assert not servers[0].is_running() or servers[0].status() == psutil.STATUS_ZOMBIE
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        print(f"serve ready after {ready:.1f} s, stopped after {time.monotonic() - t0:.1f} s")
    finally:
        if proc.poll() is None:
            proc.terminate()  # serve stops its server on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
