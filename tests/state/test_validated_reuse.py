"""A HubSpot source that did not change: the flow reuses the rows it validated last run, and the
workbook is the same as one built from scratch; any change in the source rebuilds them."""

from __future__ import annotations

import itertools
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openpyxl
import pytest
import yaml

from config.loader import load_config
from connectors.state.db import make_engine
from connectors.state.source_state import get_version
from flows.pipeline import extract_source, prepare, run_pipeline
from tests.fakes.hubspot import TOKEN
from tests.sources.test_hubspot_flow import AS_OF, fake, write_config  # noqa: F401 - the fake is a fixture

SOURCE = "hubspot_main"


_RUNS = itertools.count()


def kept(result):
    """The run's workbook copied aside (every run of a test writes the same path), so a later
    run cannot change what an assertion about this one reads."""
    src = Path(result.outputs[0])
    dst = src.with_name(f"{src.stem}.run{next(_RUNS)}{src.suffix}")
    shutil.copyfile(src, dst)
    result.outputs[0] = str(dst)
    return result


def run_flow(path: Path, **kw):
    return kept(run_pipeline(path, AS_OF, loaded=load_config(path, env={"HUBSPOT_TOKEN": TOKEN}), **kw))


def sheets(path: str) -> dict[str, list[tuple]]:
    """Every sheet's values except About (run id and times differ between runs)."""
    book = openpyxl.load_workbook(path, read_only=True)
    return {name: list(book[name].iter_rows(values_only=True)) for name in book.sheetnames if name != "About"}


def about(path: str) -> dict[str, str]:
    rows = openpyxl.load_workbook(path, read_only=True)["About"].iter_rows(values_only=True)
    return {k: v for k, v in list(rows)[1:]}


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / ".state" / "validated").glob("*"))


def later() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=2)  # after the last run's signpost, before the next one's


@pytest.fixture
def flow(fake, tmp_path: Path):  # noqa: F811
    hub, srv = fake
    path = write_config(srv, tmp_path)
    first = run_flow(path)
    assert not first.sources[0].reused
    return hub, srv, path


def test_nothing_changed_reuses_the_validated_rows_and_writes_the_same_workbook(flow, tmp_path: Path) -> None:
    hub, srv, path = flow
    rebuilt = run_flow(path, full_refresh=True)  # the reference: every row pulled and validated again
    srv.requests.clear()
    second = run_flow(path)
    report = second.sources[0]
    assert report.reused and not report.stale
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (7, 7, 0)
    assert sheets(second.outputs[0]) == sheets(rebuilt.outputs[0])
    assert about(second.outputs[0])[f"source {SOURCE}: unchanged"].startswith("nothing changed")
    # pipelines, deal properties, one empty search, the archived list, owners (active and archived): no deal page read
    paths = [r.path for r in srv.requests]
    assert paths.count("/crm/v3/objects/deals/search") == 1 and paths.count("/crm/v3/pipelines/deals") == 1
    assert [r.q("archived") for r in srv.requests if r.path == "/crm/v3/objects/deals"] == ["true"]
    assert len(paths) == 6
    third = run_flow(path)
    assert third.sources[0].reused
    assert sheets(third.outputs[0]) == sheets(rebuilt.outputs[0])


@pytest.mark.parametrize("change", ["deal", "archive", "owner", "stage label", "new deal"])
def test_any_change_in_the_source_rebuilds_the_rows(flow, tmp_path: Path, change: str) -> None:
    hub, srv, path = flow
    engine = make_engine("sqlite:///" + str(tmp_path / ".state" / "pipeline-sync.db"))
    before = get_version(engine, SOURCE)
    if change == "deal":
        hub.update("101", later(), amount="20000")
    elif change == "archive":
        hub.archive("104", later())
    elif change == "owner":  # no deal modified: only the owner's name differs
        hub.owners[0]["firstName"] = "Renamed"
    elif change == "stage label":
        hub.pipelines[0]["stages"][0]["label"] = "Appointment Booked"
    else:
        hub.add_deal("999", later(), dealname="New", amount="5", dealstage="appointmentscheduled",
                     pipeline="default", createdate="2026-11-01T00:00:00Z")
    second = run_flow(path)
    assert not second.sources[0].reused
    # only the changed deals are validated again; the others come validated from the last run
    expected = {"deal": 1, "archive": 0, "new deal": 1}.get(change)
    validated = second.sources[0].validated_rows
    assert validated == expected if expected is not None else 0 < validated < second.sources[0].rows_read
    after = get_version(engine, SOURCE)
    assert after is not None and before is not None and after.version != before.version
    rebuilt = run_flow(path, full_refresh=True)
    assert sheets(second.outputs[0]) == sheets(rebuilt.outputs[0])
    third = run_flow(path)  # the change is now the stored state: reused again
    assert third.sources[0].reused
    assert sheets(third.outputs[0]) == sheets(rebuilt.outputs[0])


def test_an_unreadable_cache_is_rebuilt_not_trusted(flow, tmp_path: Path) -> None:
    hub, srv, path = flow
    reference = sheets(run_flow(path, full_refresh=True).outputs[0])
    data = next(p for p in cache_files(tmp_path) if p.suffix == ".npz")
    data.write_bytes(b"not the rows")  # its checksum no longer matches: a miss
    again = run_flow(path)  # the workbook kept from the last run needs no validated rows (flows.kept_workbook)
    assert again.workbook_reused and sheets(again.outputs[0]) == reference
    second = run_flow(path, reuse_workbook=False)  # the rows are needed: not trusted, rebuilt
    assert not second.sources[0].reused and not second.workbook_reused
    assert sheets(second.outputs[0]) == reference
    data.unlink()  # the header names a version whose data is gone
    assert not run_flow(path, reuse_workbook=False).sources[0].reused


def test_a_changed_config_or_lost_state_version_is_not_reused(flow, tmp_path: Path) -> None:
    hub, srv, path = flow
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"][0]["stage_map"]["Contract Sent"] = "Proposal"  # validation differs now
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    changed = run_flow(path)
    assert not changed.sources[0].reused
    stages = {r[2] for r in sheets(changed.outputs[0])["Opportunities"][1:]}
    assert "Closing" not in stages
    assert run_flow(path).sources[0].reused
    engine = make_engine("sqlite:///" + str(tmp_path / ".state" / "pipeline-sync.db"))
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM source_versions")
    assert not run_flow(path).sources[0].reused


def test_cache_files_are_owner_only_and_live_beside_the_state_db(flow, tmp_path: Path) -> None:
    files = cache_files(tmp_path)
    assert [p.suffix for p in files] == [".json", ".npz"]  # numpy arrays, no pickle
    assert all(p.stat().st_mode & 0o077 == 0 for p in [*files, tmp_path / ".state" / "validated"])
    run = prepare(flow[2], AS_OF, loaded=load_config(flow[2], env={"HUBSPOT_TOKEN": TOKEN}))
    assert run.validated_cache is not None and run.validated_cache.folder == tmp_path / ".state" / "validated"


# ----------------------------------------------------------------------------- Salesforce


@pytest.fixture
def sf_flow(tmp_path: Path):
    from tests.fakes.salesforce import running_fake
    from tests.sources.test_salesforce_flow import write_config as sf_config

    with running_fake(tmp_path) as sf:
        path = sf_config(sf, tmp_path)
        first = sf_run(sf, path)
        assert not first.sources[0].reused
        yield sf, path


def sf_run(sf, path: Path, **kw):
    from tests.sources.test_salesforce_flow import AS_OF as SF_AS_OF

    loaded = load_config(path, env={"SF_CLIENT_ID": sf.client_id, "SF_CLIENT_SECRET": sf.client_secret})
    return kept(run_pipeline(path, SF_AS_OF, loaded=loaded, **kw))


@pytest.mark.parametrize("change", [None, "update", "delete"])
def test_salesforce_reuses_unchanged_rows_and_rebuilds_changed_ones(sf_flow, change: str | None) -> None:
    from tests.fakes.salesforce import oid

    sf, path = sf_flow
    # 2 s ago: inside the overlap before the last cursor, so the next run's query re-reads it
    now = (datetime.now(UTC) - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    if change == "update":
        sf.update(oid(2), now, StageName="Needs Analysis")
    elif change == "delete":
        sf.delete(oid(4), now)
    second = sf_run(sf, path)
    assert second.sources[0].reused is (change is None)
    assert second.sources[0].validated_rows == {None: 0, "update": 1, "delete": 0}[change]
    rebuilt = sf_run(sf, path, full_refresh=True)
    assert sheets(second.outputs[0]) == sheets(rebuilt.outputs[0])
    assert second.sources[0].rows_loaded == (4 if change == "delete" else 5)
    third = sf_run(sf, path)  # re-reads the same change in the overlap window: equal to stored, reused
    assert third.sources[0].reused
    assert sheets(third.outputs[0]) == sheets(rebuilt.outputs[0])


# ----------------------------------------------------------------------------- CSV files


@pytest.fixture
def demo(tmp_path: Path):
    from tests.flows.test_cli_demo import AS_OF as DEMO_AS_OF
    from tests.flows.test_cli_demo import demo_config

    path = demo_config(tmp_path, "out/pipeline.xlsx")
    return path, DEMO_AS_OF, tmp_path / "demo"


@pytest.mark.parametrize("change", [None, "deals", "history"])
def test_an_unchanged_file_is_not_parsed_or_validated_again(demo, change: str | None) -> None:
    path, as_of, folder = demo
    first = kept(run_pipeline(path, as_of))
    assert not any(s.reused for s in first.sources)
    if change == "deals":
        deals = folder / "deals.csv"
        deals.write_text(deals.read_text().replace("Won", "Lost", 1))
    elif change == "history":
        hist = folder / "stage_history.csv"
        hist.write_text(hist.read_text() + "\n")
    second = kept(run_pipeline(path, as_of))
    crm = next(s for s in second.sources if s.name == "crm_export")
    assert crm.reused is (change is None)
    assert crm.reconciles and crm.rows_read == first.sources[0].rows_read
    rebuilt = sheets(second.outputs[0])
    full = kept(run_pipeline(path, as_of, full_refresh=True))  # --full-refresh never reuses
    assert not any(s.reused for s in full.sources)
    (path.parent / ".state" / "validated").rename(path.parent / "moved")  # no cache: built from the files
    assert rebuilt == sheets(run_pipeline(path, as_of).outputs[0]) == sheets(full.outputs[0])


@pytest.mark.parametrize(("url", "where"), [
    ("sqlite:///{tmp}/db/state.db?timeout=5", "{tmp}/db/validated"),
    ("postgresql+psycopg://etl@db.example/pipeline", "{tmp}/.state/validated"),
    ("sqlite:///:memory:", None),
])
def test_where_the_validated_rows_are_kept(tmp_path: Path, url: str, where: str | None) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "crm", "type": "csv", "path": "deals.csv"}],
                                    "destinations": [{"type": "file", "path": "out/x.xlsx"}],
                                    "state": {"url": url.format(tmp=tmp_path)}}))
    cache = prepare(path, AS_OF).validated_cache
    assert (cache.folder if cache else None) == (Path(where.format(tmp=tmp_path)) if where else None)


def test_kept_rejects_are_renumbered_when_a_deal_before_them_goes(flow, tmp_path: Path) -> None:
    hub, srv, path = flow
    hub.update("104", later(), dealstage="mystery-stage")  # rejected: not a configured stage
    first = run_flow(path)
    before = sheets(first.outputs[0])["Rejected"]
    assert [r[3] for r in before[1:]] == ["104"]
    hub.archive("102", later())
    second = run_flow(path)
    assert second.sources[0].validated_rows == 0  # nothing to validate: 104's reject comes from the last run
    after = sheets(second.outputs[0])
    assert after["Rejected"][1][:4] == (before[1][0], before[1][1] - 1, *before[1][2:4])  # one row further up
    rebuilt = run_flow(path, full_refresh=True)
    assert after == sheets(rebuilt.outputs[0])


@pytest.mark.parametrize("cache", ["kept", "gone", "unreadable"])
def test_changes_and_deletions_merge_into_the_kept_rows(flow, tmp_path: Path, cache: str) -> None:
    """With the last run's validated rows at hand the connector hands over only the changed deals
    (and the ids that left); the flow merges them: the same workbook as a full refresh. Without
    those rows (`gone`), or when they cannot be read after the connector relied on them
    (`unreadable`), the run reads every stored deal instead, to the same workbook."""
    hub, srv, path = flow
    hub.update("101", later(), amount="20000")
    hub.archive("104", later())
    hub.add_deal("999", later(), dealname="New", amount="5", dealstage="appointmentscheduled",
                 pipeline="default", createdate="2026-11-01T00:00:00Z")
    if cache == "gone":
        for p in cache_files(tmp_path):
            p.unlink()
    elif cache == "unreadable":  # the header still names the version: the connector hands over the changes
        for p in cache_files(tmp_path):
            if p.suffix != ".json":
                p.write_bytes(b"not rows")
    run = prepare(path, AS_OF, loaded=load_config(path, env={"HUBSPOT_TOKEN": TOKEN}))
    extracted = extract_source(run, 0)  # not committed: the run below reads the same window
    if cache == "kept":
        assert extracted.partial and sorted(extracted.records["opportunity_id"]) == ["101", "999"]
        assert extracted.delta_ids == {"101", "104", "999"} and "104" not in extracted.row_ids
        assert len(extracted.row_ids) == 7 and list(extracted.raw["id"]) == ["101", "999"]
    else:
        assert not extracted.partial and len(extracted.records) == 7
    second = run_flow(path)
    report = second.sources[0]
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (7, 7, 0)
    assert report.validated_rows == (2 if cache == "kept" else 7)
    rebuilt = run_flow(path, full_refresh=True)
    assert sheets(second.outputs[0]) == sheets(rebuilt.outputs[0])
    assert [r[0] for r in sheets(second.outputs[0])["HubSpot raw"][1:]] == [
        r[0] for r in sheets(rebuilt.outputs[0])["HubSpot raw"][1:]]
    third = run_flow(path)
    assert third.sources[0].reused and sheets(third.outputs[0]) == sheets(rebuilt.outputs[0])


@pytest.mark.parametrize("rows", [0, 1, 5000])
def test_kept_text_columns_read_back_one_string_per_distinct_text(tmp_path: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    from connectors.state.validated_cache import SourceRows, ValidatedCache

    owners = np.array(["Ana", "Ben", None, "Ćira", "a\x00b"], dtype=object)
    loaded = pd.DataFrame({"owner": pd.Series(owners[np.arange(rows) % 5], dtype=object),
                           "team": pd.Series(owners[np.arange(rows) % 5], dtype="str"),
                           "amount": np.where(np.arange(rows) % 7 == 0, np.nan, np.arange(rows) * 1.5).astype(object),
                           "id": pd.Series([f"D-{i}" for i in range(rows)], dtype="str")})
    rejected = pd.DataFrame({"source": pd.Series(["s"] * min(rows, 2), dtype=object)})
    cache = ValidatedCache(tmp_path / "validated")
    cache.save("s", "digest", "v1", SourceRows(loaded, rejected, None, None, rows))
    back = cache.load("s", "digest", "v1")
    assert back is not None and back.rows_read == rows
    pd.testing.assert_frame_equal(back.loaded, loaded, check_exact=True)
    pd.testing.assert_frame_equal(back.rejected, rejected, check_exact=True)
    for column in ("owner", "team"):  # texts shared, as validation made them
        texts = [v for v in back.loaded[column] if isinstance(v, str)]
        assert len({id(v) for v in texts}) == len(set(texts)) == min(rows, 4)
    assert cache.load("s", "digest", "v2") is None


@pytest.mark.parametrize("kept_rows", [True, False])
def test_a_failed_source_falls_back_to_its_kept_rows_with_their_links(flow, tmp_path: Path, kept_rows: bool) -> None:
    from tests.sources.test_hubspot_flow import ACTED_ON, _links

    hub, srv, path = flow
    live = run_flow(path, full_refresh=True)  # rows, links and a kept copy of the validated rows
    if not kept_rows:
        for f in cache_files(tmp_path):
            f.unlink()
    hub.token = "pat-na1-rotated"  # the token was revoked in HubSpot: every request is a 401
    stale = run_flow(path)
    report = stale.sources[0]
    assert report.stale and "401" in (report.error or "")
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (7, 7, 0)
    assert not report.reused and report.validated_rows == (0 if kept_rows else 7)  # kept: none validated again
    assert "unchanged" not in " ".join(about(stale.outputs[0]))
    want = {k: (v if kept_rows else (None, None)) for k, v in _links(live.outputs[0]).items()}
    assert list(want) == ACTED_ON and all(v[0] for v in _links(live.outputs[0]).values())
    assert _links(stale.outputs[0]) == want  # the stored payloads alone do not know the portal's links
    if kept_rows:  # the same deals as the live run's (the sheets that name the stale source aside: M5)
        skip = {"Actions", "Flags", "Flags by mistake", "Summary", "Data quality", "Rejected"}
        same = {k: v for k, v in sheets(stale.outputs[0]).items() if k not in skip}
        assert "Opportunities" in same and same == {k: v for k, v in sheets(live.outputs[0]).items() if k not in skip}
