"""Named reports (`reports:`): one extraction, one workbook per report following its filter, on
plain threads, on a fan-out passed in, on Prefect's default task runner and on a local Dask cluster."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from config.loader import ConfigError, load_config
from connectors.state.db import make_engine
from connectors.state.snapshots import snapshots as snapshots_table
from flows.pipeline import run_pipeline
from flows.reports import report_specs, thread_fan_out

AS_OF = date(2026, 3, 31)
DEALS = """opportunity_id,name,owner,team,product,stage,amount,created_date,close_date
1,Alpha,Ann,East,Platform,Proposal,1000,2026-01-05,2026-04-30
2,Beta,Bob,West,Services,Qualification,2500,2026-01-10,2026-05-15
3,Gamma,Ann,East,Services,Won,4000,2026-01-12,2026-02-20
4,Delta,Cid,West,Platform,Contact,1500,2026-02-01,2026-06-01
5,Epsilon,Bob,West,Analytics,Lost,800,2026-02-03,2026-03-01
6,Zeta,Dee,East,Platform,Closing,3000,2026-02-10,2026-04-15
7,Eta,Cid,West,Platform,Bogus,10,2026-02-11,2026-04-15
"""


def write_config(folder: Path, **extra: object) -> Path:
    (folder / "deals.csv").write_text(DEALS)
    cfg = {
        "timezone": "Europe/Berlin",
        "report": "all",
        "sources": [{"name": "crm", "type": "csv", "path": "deals.csv"}],
        "reports": [
            {"name": "east", "filter": {"teams": ["East"], "owners": ["Ann", "Dee", "Bob"]},  # Bob is West
             "targets": {"new_pipeline_per_day": 10},
             "destinations": [{"type": "file", "path": "out/east-{as_of}.xlsx"}]},
            {"name": "platform", "filter": {"products": [" platform "]},
             "destinations": [{"type": "file", "path": "out/platform-{as_of}.xlsx"}]},
        ],
        **extra,
    }
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def column(path: Path, sheet: str, name: str) -> list[object]:
    rows = list(openpyxl.load_workbook(path, read_only=True)[sheet].iter_rows(values_only=True))
    i = rows[0].index(name)
    return [r[i] for r in rows[1:] if any(v is not None for v in r)]  # an empty table keeps one blank row


def about(path: Path) -> dict[str, object]:
    return {r[0]: r[1] for r in openpyxl.load_workbook(path, read_only=True)["About"].iter_rows(min_row=2, values_only=True)}


def check_workbooks(folder: Path) -> None:
    east, platform = folder / "out" / f"east-{AS_OF}.xlsx", folder / "out" / f"platform-{AS_OF}.xlsx"
    assert sorted(column(east, "Opportunities", "name")) == ["Alpha", "Gamma", "Zeta"]
    assert set(column(east, "Opportunities", "team")) == {"East"}
    assert sorted(column(east, "Owners", "owner")) == ["Ann", "Dee"]
    assert sorted(column(platform, "Opportunities", "name")) == ["Alpha", "Delta", "Zeta"]
    assert set(column(platform, "Opportunities", "product")) == {"Platform"}
    assert sorted(column(platform, "Owners", "owner")) == ["Ann", "Cid", "Dee"]
    assert sorted(p for p in column(platform, "Products", "product") if p) == ["Platform"]
    # the rejected row (stage 'Bogus') is West / Platform: only in the platform report
    assert column(east, "Rejected", "opportunity_id") == []
    assert column(platform, "Rejected", "opportunity_id") == ["7"]
    assert about(east)["report filter"] == "owners: Ann, Dee, Bob; teams: East"
    assert about(east)["opportunities in this report"] == "3"
    assert about(platform)["report filter"] == "products: platform"
    # the source is read once; About reconciles the whole source in every report
    for wb in (east, platform):
        assert about(wb)["source crm: rows read"] == "7"


def stored_reports(folder: Path) -> list[tuple[str, date]]:
    engine = make_engine(f"sqlite:///{folder / '.state' / 'pipeline-sync.db'}")
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(snapshots_table.c.report, snapshots_table.c.as_of)))


def test_two_reports_follow_their_filters_on_threads(tmp_path):
    result = run_pipeline(write_config(tmp_path), AS_OF)
    check_workbooks(tmp_path)
    assert [r["report"] for r in result.reports] == ["east", "platform"]
    assert {r["report"]: r["open_deals"] for r in result.reports} == {"east": 2, "platform": 3}
    assert result.outputs == [str(tmp_path / "out" / f"east-{AS_OF}.xlsx"),
                              str(tmp_path / "out" / f"platform-{AS_OF}.xlsx")]
    assert stored_reports(tmp_path) == [("east", AS_OF), ("platform", AS_OF)]
    assert not (tmp_path / "out" / "pipeline.xlsx").exists()


def test_report_targets_override_only_the_keys_given(tmp_path):
    cfg = load_config(write_config(tmp_path, targets={"new_pipeline_per_day": 99, "max_inactive_days": 12})).config
    top, east, platform = ({s.name: s for s in report_specs(cfg)}.get(n) for n in ("all", "east", "platform"))
    assert top is None  # no top-level destinations: no top-level report
    assert east.config.targets.new_pipeline_per_day == 10
    assert east.config.targets.max_inactive_days == 12
    assert platform.config.targets.new_pipeline_per_day == 99
    assert east.config.destinations[0].path == str(tmp_path / "out" / "east-{as_of}.xlsx")


def test_top_level_destinations_add_the_unfiltered_report(tmp_path):
    path = write_config(tmp_path, destinations=[{"type": "file", "path": "out/all.xlsx"}])
    result = run_pipeline(path, AS_OF)
    assert [r["report"] for r in result.reports] == ["all", "east", "platform"]
    assert sorted(column(tmp_path / "out" / "all.xlsx", "Opportunities", "name")) == [
        "Alpha", "Beta", "Delta", "Epsilon", "Gamma", "Zeta"]
    assert stored_reports(tmp_path) == [("all", AS_OF), ("east", AS_OF), ("platform", AS_OF)]


def test_a_run_can_produce_some_reports_only(tmp_path):
    result = run_pipeline(write_config(tmp_path), AS_OF, reports=["platform"])
    assert [r["report"] for r in result.reports] == ["platform"]
    assert not (tmp_path / "out" / f"east-{AS_OF}.xlsx").exists()
    assert stored_reports(tmp_path) == [("platform", AS_OF)]
    with pytest.raises(Exception, match="unknown report\\(s\\): west; this config has: east, platform"):
        run_pipeline(write_config(tmp_path), AS_OF, reports=["west"])


def test_one_failing_report_fails_the_run_after_the_others_published(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "out" / f"east-{AS_OF}.xlsx").mkdir(parents=True)  # the file cannot be written
    with pytest.raises(Exception, match=r"1 of 2 reports failed \(east: cannot write"):
        run_pipeline(path, AS_OF)
    assert (tmp_path / "out" / f"platform-{AS_OF}.xlsx").is_file()
    assert stored_reports(tmp_path) == [("platform", AS_OF)]


def test_a_fan_out_passed_in_runs_the_reports(tmp_path):
    seen: list[tuple[str, str]] = []

    def in_order(cfg, calls):  # a FanOut: each call's result, or the exception it raised
        seen.extend((cfg.report, name) for name, _, _ in calls)
        return [thread_fan_out(cfg, [call])[0] for call in calls]

    result = run_pipeline(write_config(tmp_path), AS_OF, fan_out=in_order)
    assert seen == [("all", "report-east"), ("all", "report-platform")]
    check_workbooks(tmp_path)
    assert [r["report"] for r in result.reports] == ["east", "platform"]


def test_the_default_fan_out_uses_threads_and_collects_errors_in_order(tmp_path):
    def boom() -> str:
        raise ValueError("boom")

    def where(n: int) -> str:
        return f"{n} {threading.current_thread().name}"

    cfg = load_config(write_config(tmp_path)).config
    out = thread_fan_out(cfg, [("a", where, (1,)), ("b", boom, ()), ("c", where, (3,))])
    assert [o.split(" ")[0] for o in (out[0], out[2])] == ["1", "3"]
    assert all(o.split(" ")[1].startswith("report") for o in (out[0], out[2]))
    assert isinstance(out[1], ValueError) and str(out[1]) == "boom"
    assert thread_fan_out(cfg, []) == []


@pytest.mark.parametrize(("extra", "message"), [
    ({"reports": [{"name": "a", "filter": {"sources": ["nope"]}, "destinations": [{"type": "file", "path": "a.xlsx"}]}]},
     "reports[0].filter.sources: nope not in sources (sources: crm)"),
    ({"reports": [{"name": "a", "destinations": [{"type": "file", "path": "a.xlsx"}]}] * 2},
     "repeated: a"),
    ({"reports": [{"name": "a", "filter": {"owner": ["Ann"]}, "destinations": [{"type": "file", "path": "a.xlsx"}]}]},
     "reports[0].filter.owner: unknown key; did you mean 'owners'?"),
    ({"reports": [], "dask_address": "tcp://x:8786"}, "destinations: required key is missing"),
    ({"runner": "dask_cluster"}, "runner: Input should be 'thread' or 'dask'"),
])
def test_report_config_errors_name_the_key(tmp_path, extra, message):
    (tmp_path / "deals.csv").write_text(DEALS)
    cfg = {"sources": [{"name": "crm", "type": "csv", "path": "deals.csv"}],
           "reports": [{"name": "r", "destinations": [{"type": "file", "path": "r.xlsx"}]}], **extra}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert any(message in p for p in err.value.problems), err.value.problems


# ----------------------------------------------------------------------------- Prefect and Dask



def test_reports_fan_out_on_prefects_default_task_runner(prefect_server, tmp_path):
    from flows.sync import sync_pipeline

    summary = sync_pipeline(str(write_config(tmp_path)), AS_OF)
    check_workbooks(tmp_path)
    assert len(summary["outputs"]) == 2
    assert stored_reports(tmp_path) == [("east", AS_OF), ("platform", AS_OF)]


def test_reports_fan_out_on_a_local_dask_cluster(prefect_server, tmp_path):
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("prefect_dask")
    from flows.sync import sync_pipeline

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        path = write_config(tmp_path, runner="dask", dask_address=cluster.scheduler_address)
        summary = sync_pipeline(str(path), AS_OF)
        ran_on_dask = cluster.scheduler.transition_counter
    assert ran_on_dask > 0  # the report tasks went through the cluster's scheduler
    check_workbooks(tmp_path)
    assert len(summary["outputs"]) == 2
    assert stored_reports(tmp_path) == [("east", AS_OF), ("platform", AS_OF)]


@pytest.mark.parametrize(("flt", "expected"), [
    ({}, [True, True, True, True, True]),
    ({"owners": ["ANN"]}, [True, True, False, False, False]),  # trimmed, case-insensitive
    ({"owners": ["ann", "bob"], "teams": ["west"]}, [False, False, False, False, True]),  # every list must match
    ({"teams": ["East"]}, [True, True, False, True, False]),  # no team (row 2): only in unfiltered reports
    ({"products": ["Platform"]}, [False, False, False, False, False]),  # no product column at all
])
def test_filter_mask(flt, expected):
    from config.models import ReportFilterConfig
    from transforms.report_filter import filter_mask

    frame = pd.DataFrame({"owner": ["Ann", " ann ", None, np.nan, "Bob"],
                          "team": pd.Series(["East", "east", None, "East", "West"], dtype=object)})
    assert filter_mask(frame, ReportFilterConfig(**flt)).tolist() == expected



def _in_child(fn, args, secret):
    """One report call as a Dask worker process runs it (it never loaded the config), then a log record
    with the secret in it: what the worker's loggers received."""
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("pipeline_sync").addHandler(handler)
    outcome = fn(*args)
    logging.getLogger("pipeline_sync").warning("token %s in a worker's log", secret)
    return outcome, seen


def test_reports_run_in_another_process_redact_its_log_records(tmp_path, monkeypatch):
    import multiprocessing

    secret = "s3cr3t-hook-value-42"
    monkeypatch.setenv("ALERT_TOKEN", secret)
    path = write_config(tmp_path, notify=[{"url": "json://127.0.0.1:9/hook?token=${ALERT_TOKEN}"}])
    logs: list[list[str]] = []

    def process_fan_out(cfg, calls):
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # fresh interpreters, as Dask's workers
            done = [pool.apply(_in_child, (fn, args, secret)) for _, fn, args in calls]
        logs.extend(seen for _, seen in done)
        return [outcome for outcome, _ in done]

    result = run_pipeline(path, AS_OF, fan_out=process_fan_out)
    assert len(result.outputs) == 2 and len(logs) == 2
    for seen in logs:
        assert seen[-1] == "token *** in a worker's log", seen
        assert not any(secret in line for line in seen)
