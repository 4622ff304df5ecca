"""HubSpot close date / amount history (`field_history: true`): read with propertiesWithHistory in
batches of 50, stored between runs, and counted by push_count (against tests/fakes/hubspot.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import yaml

from config.loader import load_config
from config.models import AppConfig
from flows.pipeline import extract_source, prepare
from tests.fakes.hubspot import STAGE_MAP, T0, TOKEN, Harness, demo_harness
from tests.sources.test_hubspot_flow import AS_OF, fake, write_config  # noqa: F401 - the fake is a fixture
from tests.state.test_validated_reuse import later, run_flow, sheets
from transforms.analytics import build_analytics
from transforms.canonical import canonicalize, canonicalize_history
from transforms.field_history import canonicalize_field_history

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)
BATCH = "/crm/v3/objects/deals/batch/read"


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path) as harness:
        hub = harness.hub
        # deal 101 (open, Contract Sent; closedate now 2026-06-30): 05-31 -> 06-15 -> 06-10 -> 06-30
        for days, close in ((300, "2026-05-31T00:00:00Z"), (250, "2026-06-15T00:00:00Z"),
                            (200, "2026-06-10T00:00:00Z"), (150, "2026-06-30T00:00:00Z")):
            hub.add_history("101", "closedate", close, T0 - timedelta(days=days))
        hub.add_history("101", "amount", "10000", T0 - timedelta(days=300))
        hub.add_history("101", "amount", "12500", T0 - timedelta(days=100))
        yield harness


def history_rows(h: Harness) -> int:
    return sum(len(r.json()["inputs"]) for r in h.requests("POST", BATCH))


def test_off_by_default_no_history_is_read(h) -> None:
    ex = h.run(started=RUN1)
    assert ex.field_history is None and not h.requests("POST", BATCH)


def test_history_is_read_in_batches_of_50_and_kept_for_the_next_run(h) -> None:
    for k in range(120):  # 127 deals in all
        h.hub.add_deal(str(9000 + k), T0, dealname=f"Bulk {k}", amount="10", closedate="2026-12-31T00:00:00Z")
    cfg = h.cfg(field_history=True)
    first = h.run(cfg, started=RUN1)
    batches = h.requests("POST", BATCH)
    assert [len(r.json()["inputs"]) for r in batches] == [50, 50, 27]
    assert all(r.json()["propertiesWithHistory"] == ["closedate", "amount"] for r in batches)
    fh = first.field_history
    closes = fh[(fh["opportunity_id"] == "101") & (fh["field"] == "close_date")]["value"].tolist()
    assert closes == ["2026-05-31T00:00:00Z", "2026-06-15T00:00:00Z", "2026-06-10T00:00:00Z", "2026-06-30T00:00:00Z"]
    assert fh[(fh["opportunity_id"] == "101") & (fh["field"] == "amount")]["value"].tolist() == ["10000", "12500"]
    h.commit(first)

    h.server.requests.clear()
    h.hub.update("102", RUN1 + timedelta(minutes=5), amount="9000")
    h.hub.add_history("102", "amount", "9000", RUN1 + timedelta(minutes=5))
    second = h.run(cfg, started=RUN2)
    assert [r.json()["inputs"] for r in h.requests("POST", BATCH)] == [[{"id": "102"}]]  # only what changed
    fh2 = second.field_history
    assert fh2[(fh2["opportunity_id"] == "101") & (fh2["field"] == "close_date")]["value"].tolist() == closes  # stored
    assert fh2[(fh2["opportunity_id"] == "102") & (fh2["field"] == "amount")]["value"].tolist() == ["9000"]


def test_push_count_from_hubspot_history(h) -> None:
    ex = h.run(h.cfg(field_history=True), started=RUN1)
    cfg = AppConfig.model_validate({"sources": [{"type": "csv", "name": "hubspot_main", "path": "x.csv"}],
                                    "destinations": [{"type": "file", "path": "o.xlsx"}], "targets": {"max_pushes": 2}})
    res = canonicalize(ex.records, source="hubspot_main", stages=cfg.pipeline.stages, stage_map=STAGE_MAP, tz=UTC)
    hist = canonicalize_history(ex.history, source="hubspot_main", tz=UTC, stages=cfg.pipeline.stages,
                                stage_map=STAGE_MAP)
    fields = canonicalize_field_history(ex.field_history, source="hubspot_main", tz=UTC)
    a = build_analytics(res.loaded, hist, cfg, date(2026, 11, 27), field_history=fields)
    counts = dict(zip(a.opportunities["opportunity_id"], a.opportunities["push_count"], strict=True))
    assert counts["101"] == 2  # 05-31 -> 06-15 and 06-10 -> 06-30
    assert counts["103"] == 0  # one version: nothing moved
    assert a.flags.loc[a.flags["check"] == "pushed_repeatedly", "key"].tolist() == ["hubspot_main:101"]


def test_a_narrow_run_keeps_the_history_of_the_deals_it_did_not_read(fake, tmp_path) -> None:  # noqa: F811
    """The flow holds last run's validated rows: the connector reads only the changed deal (and
    its history); the close date history of the others comes from those rows, so push_count and
    the workbook are what a full refresh gives."""
    hub, srv = fake
    for days, close in ((40, "2026-12-05"), (30, "2026-12-20"), (20, "2026-12-10"), (10, "2026-12-31")):
        hub.add_history("101", "closedate", f"{close}T00:00:00Z", T0 - timedelta(days=days))  # pushed twice
    path = write_config(srv, tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"][0]["field_history"] = True
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    first = run_flow(path)
    pushes = push_counts(first.outputs[0])
    assert pushes["101"] == 2
    hub.update("102", later(), amount="9000")
    run = prepare(path, AS_OF, loaded=load_config(path, env={"HUBSPOT_TOKEN": TOKEN}))
    extracted = extract_source(run, 0)  # not committed: the run below reads the same window
    assert extracted.partial and list(extracted.field_history["opportunity_id"].unique()) == ["102"]
    second = run_flow(path)
    assert second.sources[0].validated_rows == 1
    assert push_counts(second.outputs[0]) == pushes
    rebuilt = run_flow(path, full_refresh=True)
    assert sheets(second.outputs[0]) == sheets(rebuilt.outputs[0])


def push_counts(workbook: str) -> dict[str, int]:
    rows = sheets(workbook)["Opportunities"]
    i, p = rows[0].index("opportunity_id"), rows[0].index("push_count")
    return {r[i]: r[p] for r in rows[1:]}
