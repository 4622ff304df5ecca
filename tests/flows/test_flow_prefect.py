"""One smoke test of the Prefect wiring: the real flow, tasks and a test server."""

from __future__ import annotations

from datetime import date

import openpyxl
import pytest

pytest.importorskip("prefect")

from flows.sync import sync_pipeline  # noqa: E402


def test_sync_pipeline_flow_runs_every_step_as_tasks(prefect_server, tmp_path):
    (tmp_path / "deals.csv").write_text(
        "opportunity_id,name,owner,stage,amount,created_date,close_date\n"
        "1,=1+1,Ann,Proposal,1000,2026-01-05,2026-03-01\n"
        "2,Beta,Bob,Won,2500,2026-01-10,2026-02-01\n"
        "3,Gamma,Ann,Bogus,10,2026-01-10,2026-02-01\n"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [{name: crm, type: csv, path: deals.csv}]\n"
                   "destinations: [{type: file, path: 'out/{period}.xlsx'}]\n")
    summary = sync_pipeline(str(cfg), date(2026, 2, 15))
    assert summary["period"] == "2026-Q1"
    assert summary["sources"] == [{"name": "crm", "read": 3, "loaded": 2, "rejected": 1, "stale": False,
                                   "unchanged": False}]
    out = tmp_path / "out" / "2026-Q1.xlsx"
    assert summary["outputs"] == [str(out)]
    ws = openpyxl.load_workbook(out)["Opportunities"]
    assert ws["B2"].value == "=1+1" and ws["B2"].data_type == "s"
    again = sync_pipeline(str(cfg), date(2026, 2, 15))  # the file did not change: its rows are reused
    assert again["sources"] == [{**summary["sources"][0], "unchanged": True}]
    ws = openpyxl.load_workbook(out)["Opportunities"]
    assert ws["B2"].value == "=1+1" and ws["B2"].data_type == "s"


def test_a_failed_run_leaves_no_secret_in_prefect_states_or_logs(prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    secret = "Zq7kP2wX-prefect-9c4e"
    (tmp_path / "deals.csv").write_text("opportunity_id,name,owner,stage,amount,created_date,close_date\n"
                                        "1,Alpha,Ann,Proposal,1000,2026-01-05,2026-03-01\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / secret).write_text("a file where the destination wants a folder")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [{name: crm, type: csv, path: deals.csv}]\n"
                   "destinations: [{type: file, path: 'out/${DEST_PART}/p.xlsx'}]\n")
    monkeypatch.setenv("DEST_PART", secret)
    with pytest.raises(Exception) as caught:
        sync_pipeline(str(cfg), date(2026, 2, 15))
    assert "cannot write" in str(caught.value) and secret not in str(caught.value)
    APILogHandler().flush()  # send the queued run logs to the API before reading them
    with get_client(sync_client=True) as client:
        [run] = [r for r in client.read_flow_runs() if r.state and r.state.is_failed()
                 and r.parameters.get("config_path") == str(cfg)]
        tasks = client.read_task_runs()
        logs = client.read_logs()
    states = [run.state.message or "", *(t.state.message or "" for t in tasks if t.flow_run_id == run.id and t.state)]
    assert any("cannot write" in m for m in states)  # the error is there, redacted
    assert [m for m in states if secret in m] == []
    texts = [lg.message for lg in logs if lg.flow_run_id == run.id]
    assert texts and [t for t in texts if secret in t] == []
