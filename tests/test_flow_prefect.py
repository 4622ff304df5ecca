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
