"""Runs that merge their changes into the kept validated rows write only what changed: a patch over
the last full copy (connectors.state.validated_patch), which reads back as every row, exactly."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config.loader import load_config
from connectors.state.validated_cache import SourceRows, ValidatedCache
from connectors.state.validated_patch import (
    COMPACT_MIN_ROWS,
    PATCHED,
    Held,
    Merged,
    compose,
    origin,
)
from flows.pipeline import prepare, validation_digest
from tests.fakes.hubspot import TOKEN
from tests.sources.test_hubspot_flow import AS_OF, fake  # noqa: F401 - the fake is a fixture
from tests.state.test_validated_reuse import SOURCE, flow, later, run_flow, sheets  # noqa: F401 - a fixture


def held_rows(path: Path) -> tuple[ValidatedCache, str, str]:
    run = prepare(path, AS_OF, loaded=load_config(path, env={"HUBSPOT_TOKEN": TOKEN}))
    digest = validation_digest(run.config, 0, run.as_of)
    cache = run.validated_cache
    return cache, digest, cache.version(SOURCE, digest)


def frames_of(rows: SourceRows) -> dict[str, pd.DataFrame | None]:
    return {n: rows.frame(n) for n in ("loaded", "rejected", *PATCHED)}


def test_merged_runs_write_a_patch_that_reads_back_as_a_full_rebuild(flow, tmp_path: Path) -> None:  # noqa: F811
    hub, srv, path = flow
    folder = tmp_path / ".state" / "validated"
    full_copy = next(folder.glob("*[!h].npz"))
    first_bytes = full_copy.read_bytes()
    changes = [
        lambda: hub.update("101", later(), amount="20000"),
        lambda: (hub.archive("102", later()),
                 hub.add_deal("999", later(), dealname="New", amount="5", dealstage="appointmentscheduled",
                              pipeline="default", createdate="2026-11-01T00:00:00Z")),
        lambda: (hub.update("999", later(), amount="7", dealstage="qualifiedtobuy"),
                 hub.update("103", later(), dealname="Renamed")),
    ]
    for change in changes:
        change()
        report = run_flow(path).sources[0]
        assert not report.reused and report.validated_rows <= 2
        patches = list(folder.glob("*.patch.npz"))
        assert len(patches) == 1 and patches[0].stat().st_mode & 0o777 == 0o600
        assert full_copy.read_bytes() == first_bytes  # the full copy is not written again
    cache, digest, version = held_rows(path)
    patched = cache.load(SOURCE, digest, version)
    assert patched is not None and patched.held is not None and set(patched.held.added) >= {"loaded", "raw"}
    again = run_flow(path, reuse_workbook=False)  # nothing changed: the workbook from the patched rows
    assert again.sources[0].reused
    rebuilt = run_flow(path, full_refresh=True)
    assert sheets(again.outputs[0]) == sheets(rebuilt.outputs[0])
    assert not list(folder.glob("*.patch.npz"))  # a full refresh writes a full copy
    full = cache.load(SOURCE, digest, cache.version(SOURCE, digest))
    assert full is not None and full.rows_read == patched.rows_read == 7
    for name, frame in frames_of(full).items():  # (a merged text column may hold object, not str: same values)
        other = frames_of(patched)[name]
        if frame is None:
            assert other is None
        else:
            pd.testing.assert_frame_equal(other, frame, check_exact=True, check_dtype=False)


def test_a_damaged_or_missing_patch_is_a_miss_and_the_rows_are_rebuilt(flow, tmp_path: Path, caplog) -> None:  # noqa: F811
    hub, srv, path = flow
    hub.update("101", later(), amount="20000")
    run_flow(path)
    patch = next((tmp_path / ".state" / "validated").glob("*.patch.npz"))
    cache, digest, version = held_rows(path)
    data = bytearray(patch.read_bytes())
    data[len(data) // 2] ^= 0xFF
    patch.write_bytes(bytes(data))
    assert cache.load(SOURCE, digest, version) is None
    assert "do not match their checksum" in caplog.text
    patch.unlink()
    assert cache.version(SOURCE, digest) is None  # the connector reads every stored deal again
    hub.update("103", later(), dealname="Renamed")
    report = run_flow(path).sources[0]
    assert report.validated_rows == report.rows_read == 7


def _rows(n: int, start: int = 0) -> pd.DataFrame:
    ids = [f"D{i}" for i in range(start, start + n)]
    return pd.DataFrame({"opportunity_id": pd.Series(ids, dtype=object),
                         "amount": np.arange(start, start + n, dtype=float)})


def _saved(tmp_path: Path, n: int) -> tuple[ValidatedCache, SourceRows]:
    cache = ValidatedCache(tmp_path / "validated")
    rows = SourceRows(_rows(n), _rows(0), None, None, n)
    cache.save("s", "d", "v0", rows)
    back = cache.load("s", "d", "v0")
    assert back is not None and back.held is not None
    return cache, back


def _merge(held: SourceRows, version: str, replace: list[int], add: int) -> SourceRows:
    """`held` with the rows at `replace` given amount -1 and `add` new rows, in id order, as the flow merges."""
    old = held.loaded
    keep = ~old.index.isin(replace)
    new = pd.concat([old.iloc[replace].assign(amount=-1.0), _rows(add, 10_000 + len(old))], ignore_index=True)
    frame = pd.concat([old[keep], new], ignore_index=True)
    order = np.argsort(frame["opportunity_id"].str[1:].astype(int).to_numpy(), kind="stable")
    rows = SourceRows(frame.iloc[order].reset_index(drop=True), held.rejected, None, None, len(frame))
    rows.merged = Merged(held.held, version, {"loaded": (origin(keep, len(old), len(new))[order], new)})
    return rows


@pytest.mark.parametrize("replace, add", [([3], 0), ([0, 5, 99], 2), ([], 4), ([1, 2], 0)])
def test_chained_patches_compose_over_the_same_full_copy(tmp_path: Path, replace: list[int], add: int) -> None:
    cache, held = _saved(tmp_path, 100)
    for k in range(1, 4):  # three runs in a row, each over the rows the last one kept
        rows = _merge(held, f"v{k - 1}", sorted({(r + k) % len(held.loaded) for r in replace}), add)
        cache.save("s", "d", f"v{k}", rows)
        assert cache.version("s", "d") == f"v{k}"
        held = cache.load("s", "d", f"v{k}")
        assert held is not None and held.held is not None and set(held.held.added) == {"loaded"}
        pd.testing.assert_frame_equal(held.loaded, rows.loaded, check_exact=True)
        assert held.held.base_rows == {"loaded": 100}
        assert len(held.held.added["loaded"][1]) == k * (len(replace) + add)


@pytest.mark.parametrize("rows, changed, patched", [
    (10_000, 2_000, True), (10_000, 2_001, False), (3_000, COMPACT_MIN_ROWS, True), (3_000, COMPACT_MIN_ROWS + 1, False)])
def test_past_the_compact_share_a_full_copy_is_written_again(tmp_path: Path, rows: int, changed: int,
                                                              patched: bool) -> None:
    cache, held = _saved(tmp_path, rows)
    merged = _merge(held, "v0", list(range(changed)), 0)
    cache.save("s", "d", "v1", merged)
    back = cache.load("s", "d", "v1")
    assert back is not None and back.held is not None and back.held.base_rows == {"loaded": rows}
    assert bool(back.held.added) == patched == bool(list((tmp_path / "validated").glob("*.patch.npz")))
    pd.testing.assert_frame_equal(back.loaded, merged.loaded, check_exact=True)


def test_a_full_copy_follows_a_patch(tmp_path: Path) -> None:
    cache, held = _saved(tmp_path, 100)
    cache.save("s", "d", "v1", _merge(held, "v0", [1], 1))
    assert list((tmp_path / "validated").glob("*.patch.npz"))
    cache.save("s", "d", "v2", SourceRows(_rows(5), _rows(0), None, None, 5))
    back = cache.load("s", "d", "v2")
    assert back is not None and back.held.added == {} and len(back.loaded) == 5
    assert not list((tmp_path / "validated").glob("*.patch.npz"))


@pytest.mark.parametrize("case", ["other version on disk", "full copy replaced", "every row new", "other columns"])
def test_a_merge_that_no_longer_fits_the_entry_writes_a_full_copy(tmp_path: Path, case: str) -> None:
    cache, held = _saved(tmp_path, 10)
    rows = _merge(held, "v0", [1], 1)
    if case == "other version on disk":
        rows.merged = Merged(rows.merged.held, "v-other", rows.merged.parts)
    elif case == "full copy replaced":
        rows.merged = Merged(Held("0" * 64, {"loaded": 10}, rows.merged.held.columns), "v0", rows.merged.parts)
    elif case == "every row new":
        positions, new = rows.merged.parts["loaded"]
        rows.merged.parts["loaded"] = (np.full(len(positions), 10) + np.arange(len(positions)), new)
    else:
        rows.merged.held.columns["loaded"] = ["opportunity_id"]
    assert compose(rows.merged, {"loaded": rows.loaded}) is None or case in ("other version on disk",
                                                                             "full copy replaced")
    cache.save("s", "d", "v1", rows)
    back = cache.load("s", "d", "v1")
    assert back is not None and back.held.added == {}
    pd.testing.assert_frame_equal(back.loaded, rows.loaded, check_exact=True)


def test_the_held_rows_are_read_during_the_search_once_a_deal_changed(flow, monkeypatch) -> None:  # noqa: F811
    """The flow reads the rows it holds on a worker while the search pages (ExtractContext.prefetch),
    from the first page with a deal not stored as it is; a deal re-read in the overlap window as
    stored starts no read."""
    hub, srv, path = flow
    reads: list[str] = []
    load = ValidatedCache.load

    def recorded(self, *args, **kw):
        reads.append(threading.current_thread().name.split("_")[0])
        return load(self, *args, **kw)

    monkeypatch.setattr(ValidatedCache, "load", recorded)
    hub.update("101", later(), amount="20000")
    second = run_flow(path)
    assert reads == ["held-rows"] and second.sources[0].validated_rows == 1
    reads.clear()
    # 101 changed 2 s before the last run's signpost, inside the 60 s overlap: read again, as stored
    third = run_flow(path, reuse_workbook=False)
    assert third.sources[0].reused and reads == ["MainThread"]  # for the workbook, after the extraction
    assert sheets(third.outputs[0]) == sheets(second.outputs[0])
