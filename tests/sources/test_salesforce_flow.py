"""The example Salesforce config through the flow (plain functions, no Prefect) against the fake."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
import yaml

from config.loader import load_config
from connectors.sources.salesforce import extract, from_state
from connectors.state.source_state import load_records
from flows.pipeline import run_pipeline
from tests.fakes.salesforce import FAST, make_cfg, make_ctx, oid, running_fake

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "salesforce.yaml"
AS_OF = date(2025, 5, 2)


@pytest.fixture()
def fake(tmp_path: Path):
    with running_fake(tmp_path) as sf:
        yield sf


def write_config(fake, tmp_path: Path) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    src = cfg["sources"][0]
    src.update(domain=fake.server.url, ca_bundle=fake.server.ca_path, next_step_field="Next_Step_Date__c")
    del src["where"]
    cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    path = tmp_path / "salesforce.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_flow(fake, path: Path):
    loaded = load_config(path, env={"SF_CLIENT_ID": fake.client_id, "SF_CLIENT_SECRET": fake.client_secret})
    return run_pipeline(path, AS_OF, loaded=loaded)


def test_example_config_runs_and_the_second_run_is_incremental(fake, tmp_path: Path) -> None:
    path = write_config(fake, tmp_path)
    first = run_flow(fake, path)
    report = first.sources[0]
    assert (report.name, report.rows_read, report.rows_loaded, report.rows_rejected) == ("salesforce_main", 5, 5, 0)
    book = openpyxl.load_workbook(first.outputs[0], read_only=True)
    assert "Salesforce raw" in book.sheetnames
    assert book["Salesforce raw"].max_row == 6  # header + 5 opportunities

    # 2 s ago: inside the overlap before run 1's cursor, and before run 2's signpost (whole seconds)
    now = (datetime.now(UTC) - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    fake.update(oid(2), now, StageName="Needs Analysis")
    fake.delete(oid(4), now)
    fake.served.clear()
    second = run_flow(fake, path)
    assert (second.sources[0].rows_read, second.sources[0].rows_loaded) == (4, 4)
    assert fake.rows_served("Opportunity") == 1 and fake.rows_served("Opportunity", "queryAll") == 1
    engine_db = tmp_path / ".state" / "pipeline-sync.db"
    assert engine_db.is_file()


def test_from_state_rebuilds_the_frames_of_a_successful_run(fake, tmp_path: Path) -> None:
    from connectors.state.db import make_engine
    from connectors.state.source_state import save_state

    engine = make_engine("sqlite:///" + str(tmp_path / "s.db"))
    cfg = make_cfg(fake)
    out = extract(cfg, make_ctx(engine), policy=FAST)
    p = out.pending_state
    with engine.begin() as conn:
        save_state(conn, cfg.name, p.cursor, p.upserts, p.deletes, p.replace_all)
    stale = from_state(cfg, load_records(engine, cfg.name))
    assert stale.stale and stale.notes == ["source 'sfdc' failed; data from an earlier run"]
    pd.testing.assert_frame_equal(stale.records, out.records)
    pd.testing.assert_frame_equal(stale.history, out.history)
    pd.testing.assert_frame_equal(stale.raw, out.raw)
