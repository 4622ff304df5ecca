"""connectors.destinations.onedrive.upload (mode replace) against a fake Graph + fake Entra authority over HTTPS (msal runs for real)."""

from __future__ import annotations

import base64
import logging
import os
import random
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa

from config.models import OneDriveDestinationConfig
from connectors.destinations import onedrive
from connectors.destinations.onedrive import upload
from connectors.destinations.onedrive.quickxor import quickxor_hash
from connectors.errors import DestinationError, FatalAPIError, RetriableAPIError
from connectors.http import msal_auth
from connectors.registry import PublishContext
from connectors.state.db import make_engine
from tests.fakes import graph as fake_graph
from tests.fakes.entra import FakeEntra
from tests.fakes.graph import FakeGraph
from tests.fakes.server import FakeServer, Request, Response
from tests.shared_fixtures import recorded_bytes

CHUNK = 327_680
USER = "adele@contoso.com"
DRIVE = "b!ctJlwDRIVE0001"
SITE = "contoso.sharepoint.com:/sites/Sales"
REMOTE = "/Sales/Reports/Pipeline Q3.xlsx"


class Router:
    """One HTTPS server for the module (its shutdown takes 0.5 s); each test plugs in fresh fakes."""

    def __init__(self) -> None:
        self.entra: FakeEntra | None = None
        self.graph: FakeGraph | None = None

    def __call__(self, req: Request) -> Response:
        if req.path.startswith(("/v1.0/", "/up/")):
            return self.graph(req)
        return self.entra(req)


class Env:
    def __init__(self, tmp: Path, server: FakeServer, router: Router):
        self.tmp = tmp
        self.entra = FakeEntra()
        self.graph = FakeGraph(self.entra.valid)
        self.drive = self.graph.add_drive(DRIVE, user=USER, site=SITE, me=True)
        self.sleeps: list[float] = []
        self.server = server
        router.entra, router.graph = self.entra, self.graph
        server.requests.clear()

    def cfg(self, **over) -> OneDriveDestinationConfig:
        base = dict(type="onedrive", tenant_id=self.entra.tenant, client_id=self.entra.client_id,
                    client_secret=self.entra.client_secret, authority=self.server.url,
                    graph_url=self.server.url + "/v1.0", ca_bundle=self.server.ca_path, user=USER,
                    path="/Sales/Reports/Pipeline {period}.xlsx", chunk_size=CHUNK)
        base.update(over)
        return OneDriveDestinationConfig(**base)

    def publish(self, cfg: OneDriveDestinationConfig, data: bytes, remote: str = REMOTE, **kw) -> upload.PublishResult:
        wb = self.tmp / "book.xlsx"
        wb.write_bytes(data)
        kw.setdefault("sleep", self.sleeps.append)
        kw.setdefault("now", lambda: datetime(2026, 11, 27, 8, 15, 3, tzinfo=UTC))
        return upload.upload_workbook(cfg, wb, remote_path=remote, **kw)

    def stored(self, path: str = REMOTE) -> bytes | None:
        item = self.graph.file(DRIVE, path)
        return None if item is None else item.content

    def graph_requests(self, method: str | None = None, prefix: str = "") -> list[Request]:
        return [r for r in self.server.requests if r.path.startswith(("/v1.0", "/up/"))
                and (method is None or r.method == method) and r.path.startswith(prefix)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    router = Router()
    with FakeServer(router, tmp_path_factory.mktemp("tls")) as server:
        yield server, router


@pytest.fixture
def env(tmp_path: Path, served: tuple[FakeServer, Router]) -> Env:
    return Env(tmp_path, *served)


def blob(size: int, seed: int = 1) -> bytes:
    return (bytes(range(seed, 256)) + bytes(range(seed))) * (size // 256) + b"x" * (size % 256)


SMALL = blob(50_000)
OURS = random.Random(19).randbytes(50_000)  # blobs of one length share a quickXorHash (bytes 160 apart XOR together)
LARGE = blob(1_500_000)  # five 320 KiB pieces (4 full + 1 partial)


# ----------------------------------------------------------------------------- addressing, folders, sizes


@pytest.mark.parametrize("where", [{"user": USER}, {"site": SITE, "user": None},
                                   {"site": "https://contoso.sharepoint.com/sites/Sales", "user": None},
                                   {"drive_id": DRIVE, "user": None}])
def test_small_file_lands_in_new_folders(env: Env, where: dict) -> None:
    res = env.publish(env.cfg(**where), SMALL)
    assert env.stored() == SMALL
    sales = env.graph.file(DRIVE, "/Sales/Reports")
    assert sales is not None and sales.folder
    item = env.graph.file(DRIVE, REMOTE)
    assert (res.item_id, res.size, res.path, res.note) == (item.id, len(SMALL), REMOTE, None)
    assert res.etag == f'"{{{item.guid}}},1"' != item.etag  # the commit's eTag; OneDrive changed it since
    assert res.web_url.endswith("/Sales/Reports/Pipeline%20Q3.xlsx")
    assert len(env.graph_requests("POST", f"/v1.0/drives/{DRIVE}/items/")) == 2  # two folders created
    assert env.graph.created_sessions == 0  # a simple PUT


def test_existing_folders_are_reused_and_unknown_user_is_named(env: Env) -> None:
    env.graph.put_file(DRIVE, "/Sales/Reports/other.xlsx", b"x")
    env.publish(env.cfg(), SMALL)
    assert not env.graph_requests("POST", f"/v1.0/drives/{DRIVE}/items/")
    with pytest.raises(DestinationError, match="user 'nobody@contoso.com' has no drive"):
        env.publish(env.cfg(user="nobody@contoso.com"), SMALL)


def test_a_file_where_a_folder_should_be_is_refused(env: Env) -> None:
    env.graph.put_file(DRIVE, "/Sales", b"not a folder")
    with pytest.raises(DestinationError, match="/Sales exists but is a file"):
        env.publish(env.cfg(), SMALL)


def test_large_file_goes_through_an_upload_session_in_pieces(env: Env) -> None:
    old = env.graph.put_file(DRIVE, REMOTE, SMALL)
    res = env.publish(env.cfg(), LARGE)
    assert env.stored() == LARGE
    assert env.graph.chunk_puts == 5 and env.graph.created_sessions == 1
    puts = env.graph_requests("PUT", "/up/")
    assert [r.headers["content-range"] for r in puts] == [
        f"bytes {i * CHUNK}-{min((i + 1) * CHUNK, len(LARGE)) - 1}/{len(LARGE)}" for i in range(5)]
    assert all("authorization" not in r.headers for r in puts)
    assert res.item_id == old.id and res.size == len(LARGE)  # replaced in place: same item, new version
    assert env.graph.file(DRIVE, REMOTE).content_version == 2


def test_dropped_connection_mid_piece_resumes_from_next_expected_ranges(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    env.graph.drop_chunk(3, keep=100_000)  # the service keeps 100000 bytes of the 3rd piece, then the line dies
    res = env.publish(env.cfg(), LARGE)
    assert env.stored() == LARGE and res.size == len(LARGE)
    assert env.graph.created_sessions == 1  # resumed, not started over
    ranges = [r.headers["content-range"].split()[1].split("/")[0] for r in env.graph_requests("PUT", "/up/")]
    resumed_at = 2 * CHUNK + 100_000
    assert ranges[3] == f"{resumed_at}-{resumed_at + CHUNK - 1}"
    assert len(env.graph_requests("GET", "/up/")) == 1  # asked the session where to carry on
    assert len(env.sleeps) == 1


def test_readers_see_the_old_file_until_the_session_commits(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    seen: list[bytes] = []
    env.graph.on_chunk = lambda n: seen.append(env.stored())
    env.publish(env.cfg(), LARGE)
    assert seen == [SMALL] * 5 and env.stored() == LARGE


def test_giving_up_cancels_the_session_and_keeps_the_old_file(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    for n in range(2, 12):
        env.graph.drop_chunk(n, keep=0)
    with pytest.raises(RetriableAPIError, match=r"Microsoft Graph upload: gave up after 6 attempts; last: .*bytes"):
        env.publish(env.cfg(), LARGE)
    assert env.stored() == SMALL
    assert env.graph.deleted_sessions == 1 and not env.graph.sessions


def test_lost_session_starts_over(env: Env) -> None:
    env.graph.on_chunk = lambda n: env.graph.sessions.clear() if n == 2 else None
    env.publish(env.cfg(), LARGE)
    assert env.stored() == LARGE and env.graph.created_sessions == 2


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_honours_retry_after(env: Env, status: int) -> None:
    env.graph.throttle(2, status=status, retry_after="7")
    env.graph.chunk_failures[2] = (status, "11")
    env.publish(env.cfg(), LARGE)
    assert env.stored() == LARGE
    assert env.sleeps == [7.0, 7.0, 11.0]


def test_409_at_commit_with_replace_is_recovered_with_an_explicit_commit(env: Env) -> None:
    old = env.graph.put_file(DRIVE, REMOTE, SMALL)
    env.graph.commit_conflict = 1
    res = env.publish(env.cfg(), LARGE)
    assert env.stored() == LARGE and res.item_id == old.id
    commit = [r for r in env.graph_requests("PUT") if r.path.endswith("Pipeline%20Q3.xlsx")]
    assert len(commit) == 1 and commit[0].json()["@microsoft.graph.conflictBehavior"] == "replace"
    assert not env.graph.sessions


@pytest.mark.parametrize("sample, expected", [
    ("uploadChunk_202_nextExpectedRanges.json", (26, None)),
    ("uploadChunk_202_multipleRanges.json", (12345, 55232)),
    ("uploadSession_status_200.json", (12345, None)),
])
def test_next_expected_ranges_of_the_recorded_samples(sample: str, expected: tuple) -> None:
    resp = requests.Response()
    resp.status_code, resp._content = 202, recorded_bytes("msgraph", sample)
    assert upload._next_range(resp) == expected


# ----------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["simple", "session"])
def test_fail_if_changed_compares_the_ctag_and_sends_the_etag_just_read(env: Env, data: bytes) -> None:
    """OneDrive changes the eTag after every upload by itself: a rerun with nobody's edit still publishes."""
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    cfg = env.cfg(conflict="fail_if_changed")
    first = env.publish(cfg, data, engine=engine)
    item = env.graph.file(DRIVE, REMOTE)
    assert item.etag != first.etag  # background processing: metadata only
    read_before_second = item.etag
    second = env.publish(cfg, data[::-1], engine=engine)
    assert env.stored() == data[::-1]
    sent = [r.headers.get("if-match") for r in env.graph_requests() if "if-match" in r.headers]
    assert sent == [read_before_second] and second.etag != first.etag
    with engine.connect() as conn:
        assert conn.execute(sa.select(upload.published.c.ctag)).scalar_one() == env.graph.file(DRIVE, REMOTE).ctag
    theirs = b"edited by a colleague"
    env.graph.edit(DRIVE, REMOTE, theirs)
    with pytest.raises(DestinationError, match="changed by someone else"):
        env.publish(cfg, data, engine=engine)
    assert env.stored() == theirs


@pytest.mark.parametrize("status", [412, 409], ids=["412", "409-resourceModified"])
def test_fail_if_changed_edit_during_a_session_keeps_their_version(env: Env, status: int) -> None:
    """A save by someone while the pieces go up: the commit answers 412 or 409 resourceModified; never overwritten."""
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    cfg = env.cfg(conflict="fail_if_changed")
    env.publish(cfg, SMALL, engine=engine)
    env.graph.commit_edit_status = status
    theirs = b"saved while we were uploading"
    env.graph.on_chunk = lambda n: env.graph.edit(DRIVE, REMOTE, theirs) if n == 3 else None
    with pytest.raises(DestinationError, match="changed by someone else"):
        env.publish(cfg, LARGE, engine=engine)
    assert env.stored() == theirs and env.graph.deleted_sessions == 1
    explicit = [r for r in env.graph_requests("PUT") if r.path.endswith("Pipeline%20Q3.xlsx")]
    assert explicit == []  # no commit over their save, with or without If-Match


def test_a_state_database_from_before_the_ctag_column_keeps_working(env: Env) -> None:
    db = env.tmp / "old.db"
    old = sa.create_engine(f"sqlite:///{db}")
    with old.begin() as conn:  # the table as earlier versions created it
        conn.execute(sa.text("CREATE TABLE onedrive_published (drive_id VARCHAR(200) NOT NULL, path VARCHAR(450) "
                             "NOT NULL, item_id VARCHAR(200) NOT NULL, etag VARCHAR(200) NOT NULL, size BIGINT NOT "
                             "NULL, written_at DATETIME NOT NULL, PRIMARY KEY (drive_id, path))"))
    item = env.graph.put_file(DRIVE, REMOTE, SMALL)
    with old.begin() as conn:  # their last write, with the eTag the drive still shows
        conn.execute(sa.text("INSERT INTO onedrive_published VALUES (:d, :p, :i, :e, 1, '2026-01-01 00:00:00')"),
                     {"d": DRIVE, "p": REMOTE.lower(), "i": item.id, "e": item.etag})
    old.dispose()
    engine = make_engine(f"sqlite:///{db}")
    env.publish(env.cfg(conflict="fail_if_changed"), LARGE, engine=engine)  # the eTag fallback: unchanged
    assert env.stored() == LARGE
    with engine.connect() as conn:
        assert conn.execute(sa.select(upload.published.c.ctag)).scalar_one() == env.graph.file(DRIVE, REMOTE).ctag
    env.publish(env.cfg(conflict="fail_if_changed"), SMALL, engine=engine)  # and from now on the cTag
    assert env.stored() == SMALL


def test_fail_if_changed_refuses_a_file_it_never_wrote(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    with pytest.raises(DestinationError, match="no record of writing it"):
        env.publish(env.cfg(conflict="fail_if_changed"), LARGE, engine=engine)
    assert env.stored() == SMALL


def test_fail_if_changed_does_not_overwrite_a_file_created_meanwhile(env: Env) -> None:
    theirs = b"created by someone during our upload"
    env.graph.on_chunk = lambda n: env.graph.put_file(DRIVE, REMOTE, theirs) if n == 1 else None
    with pytest.raises(DestinationError, match="nameAlreadyExists"):
        env.publish(env.cfg(conflict="fail_if_changed"), LARGE)
    assert env.stored() == theirs and not env.graph.sessions


# ----------------------------------------------------------------------------- applied, then answered 5xx


def quickxor_as_documented(data: bytes) -> str:
    """The pseudocode of https://learn.microsoft.com/onedrive/developer/code-snippets/quickxorhash, step by
    step (slow): a block is 20 bytes, read here as a big-endian number."""
    width = 160

    def rotate(block: int, n: int) -> int:  # left by n bits
        n %= width
        return ((block << n) | (block >> (width - n))) & ((1 << width) - 1)

    def reverse(block: int) -> int:  # 00010203... => ...03020100
        return int.from_bytes(block.to_bytes(20, "big")[::-1], "big")

    def extend64(i: int) -> int:  # the lower 64 bits from i, in little-endian byte order
        return int.from_bytes(i.to_bytes(8, "little"), "big")

    ret = 0
    for i, byte in enumerate(data):
        ret ^= rotate(byte, i * 11)  # extend8(byte): the lower 8 bits
    return base64.b64encode((extend64(len(data)) ^ reverse(ret)).to_bytes(20, "big")).decode()


@pytest.mark.parametrize("size", [0, 1, 11, 159, 160, 161, 320, 1_000, 4_099])
def test_quickxor_hash_is_the_documented_algorithm(size: int) -> None:
    data = os.urandom(size)
    assert quickxor_hash(data) == quickxor_as_documented(data) == fake_graph.quickxor_hash(data)


def test_quickxor_hash_of_a_published_vector_and_of_a_large_file() -> None:
    # 'hello world': the value the quickxorhash project (a C port of Microsoft's snippet) publishes
    assert quickxor_hash(b"hello world") == quickxor_as_documented(b"hello world") == "aCgDG9jwBhDc4Q1yawMZAAAAAAA="
    assert quickxor_hash(LARGE) == fake_graph.quickxor_hash(LARGE)  # the fake's bit-by-bit version
    assert quickxor_hash(LARGE) != quickxor_hash(LARGE[:-1] + b"y")
    assert quickxor_hash(SMALL) != quickxor_hash(OURS)  # the uploads below are told apart


@pytest.mark.parametrize("status", [503, 504])
@pytest.mark.parametrize("existing", [True, False], ids=["replace-with-if-match", "new-file"])
def test_an_applied_upload_answered_5xx_is_read_back_as_ours(env: Env, status: int, existing: bool) -> None:
    """conflict: fail_if_changed. Resent blindly, the PUT would meet its own new eTag (412) or name (409)."""
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    cfg = env.cfg(conflict="fail_if_changed")
    if existing:
        env.publish(cfg, SMALL, engine=engine)
    env.server.requests.clear()
    env.graph.fail_simple_put(status, applied=True)
    res = env.publish(cfg, OURS, engine=engine)
    assert env.stored() == OURS and len(env.graph_requests("PUT")) == 1  # landed once, never resent
    item = env.graph.file(DRIVE, REMOTE)
    assert res.item_id == item.id
    with engine.connect() as conn:  # its cTag is recorded as ours
        assert conn.execute(sa.select(upload.published.c.ctag)).scalar_one() == item.ctag
    assert (5.0 in env.sleeps) == (status == 503)  # the 503's Retry-After waited out before the read-back
    env.publish(cfg, SMALL, engine=engine)  # the next run: no edit by anyone, so no conflict
    assert env.stored() == SMALL


@pytest.mark.parametrize("applied", [True, False], ids=["ours-then-theirs", "only-theirs"])
def test_someone_elses_save_read_back_after_a_5xx_is_a_conflict(env: Env, applied: bool) -> None:
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    cfg = env.cfg(conflict="fail_if_changed")
    env.publish(cfg, SMALL, engine=engine)
    theirs = b"saved by a colleague while our upload timed out"
    env.server.requests.clear()
    env.graph.fail_simple_put(504, applied=applied, then=lambda: env.graph.edit(DRIVE, REMOTE, theirs))
    with pytest.raises(DestinationError, match="changed by someone else"):
        env.publish(cfg, OURS, engine=engine)
    assert env.stored() == theirs and len(env.graph_requests("PUT")) == 1


def test_an_upload_read_back_as_not_applied_is_sent_again_with_the_etag_just_read(env: Env) -> None:
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    cfg = env.cfg(conflict="fail_if_changed")
    env.publish(cfg, SMALL, engine=engine)
    env.server.requests.clear()
    env.graph.fail_simple_put(503, applied=False, then=lambda: setattr(item, "version", item.version + 1))
    item = env.graph.file(DRIVE, REMOTE)  # OneDrive's own processing changes the eTag meanwhile
    env.publish(cfg, OURS, engine=engine)
    assert env.stored() == OURS
    puts = env.graph_requests("PUT")
    assert len(puts) == 2 and puts[0].headers["if-match"] != puts[1].headers["if-match"]


@pytest.mark.parametrize("existing", [True, False], ids=["replace-with-if-match", "new-file"])
def test_a_session_commit_applied_then_answered_504_is_read_back_as_ours(env: Env, existing: bool) -> None:
    """The commit deleted the session: started over, the upload would meet its own eTag (412) or name (409)."""
    engine = make_engine(f"sqlite:///{env.tmp / 'state.db'}")
    cfg = env.cfg(conflict="fail_if_changed")
    if existing:
        env.publish(cfg, SMALL, engine=engine)
    ours = random.Random(20).randbytes(len(LARGE))
    env.graph.commit_then_fail = 1
    res = env.publish(cfg, ours, engine=engine)
    item = env.graph.file(DRIVE, REMOTE)
    assert env.stored() == ours and env.graph.created_sessions == 1 and res.item_id == item.id
    with engine.connect() as conn:
        assert conn.execute(sa.select(upload.published.c.ctag)).scalar_one() == item.ctag
    env.publish(cfg, LARGE, engine=engine)  # the next run: no conflict
    assert env.stored() == LARGE


# ----------------------------------------------------------------------------- locks


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["simple", "session"])
def test_locked_wait_retries_with_backoff_then_writes(env: Env, data: bytes) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL[::-1])
    env.graph.lock(REMOTE, times=3)
    env.publish(env.cfg(on_locked="wait"), data)
    assert env.stored() == data and env.sleeps == [30.0, 60.0, 120.0]


def test_locked_wait_gives_up_after_lock_wait_max(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    env.graph.lock(REMOTE)
    with pytest.raises(DestinationError, match="stayed locked .* for 200s"):
        env.publish(env.cfg(on_locked="wait", lock_wait_max=200), LARGE)
    assert env.stored() == SMALL and sum(env.sleeps) == 200


def test_lock_at_commit_waits_and_resends_the_last_piece(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    env.graph.on_chunk = lambda n: env.graph.lock(REMOTE, times=1) if n == 5 else None
    env.publish(env.cfg(on_locked="wait"), LARGE)
    assert env.stored() == LARGE and env.sleeps == [30.0] and env.graph.chunk_puts == 6


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["simple", "session"])
def test_locked_sibling_writes_next_to_it_and_says_so(env: Env, data: bytes) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL[::-1])
    env.graph.lock(REMOTE)
    res = env.publish(env.cfg(on_locked="sibling"), data)
    sib = "/Sales/Reports/Pipeline Q3 (refreshed 2026-11-27 08.15.03 UTC).xlsx"
    assert res.path == sib and env.stored(sib) == data
    assert env.stored() == SMALL[::-1]
    assert "locked" in res.note and sib in res.note
    assert not env.sleeps and not env.graph.sessions


def test_lock_at_commit_with_sibling_cancels_the_session(env: Env) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL)
    env.graph.on_chunk = lambda n: env.graph.lock(REMOTE) if n == 5 else None
    res = env.publish(env.cfg(on_locked="sibling"), LARGE)
    assert env.stored(res.path) == LARGE and env.stored() == SMALL
    assert env.graph.deleted_sessions == 1 and env.graph.created_sessions == 2


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["simple", "session"])
def test_locked_fail_stops_at_once(env: Env, data: bytes) -> None:
    env.graph.put_file(DRIVE, REMOTE, SMALL[::-1])
    env.graph.lock(REMOTE)
    with pytest.raises(DestinationError, match="locked .*on_locked: fail"):
        env.publish(env.cfg(on_locked="fail"), data)
    assert env.stored() == SMALL[::-1] and not env.sleeps


# ----------------------------------------------------------------------------- paths, auth, secrets


@pytest.mark.parametrize("bad", ["/Sales/../../etc/Pipeline.xlsx", "/Sales/CON.xlsx", "/Sales/a:b.xlsx",
                                 "Sales/Pipeline.xlsx", "/Sales//Pipeline.xlsx", "/Sales/~$Pipeline.xlsx",
                                 "/Sales/Pipeline.csv", "/Sales /Pipeline.xlsx"])
def test_paths_that_escape_or_are_reserved_are_refused_before_any_request(env: Env, bad: str) -> None:
    with pytest.raises(DestinationError, match="onedrive destination path"):
        env.publish(env.cfg(), SMALL, remote=bad)
    assert not env.server.requests


@pytest.mark.parametrize("bad", ["/Sales/../Pipeline {period}.xlsx", "/Sales/LPT1.xlsx"])
def test_config_rejects_bad_path_templates(env: Env, bad: str) -> None:
    with pytest.raises(ValueError, match="path: "):
        env.cfg(path=bad)


def test_expired_token_is_renewed_once(env: Env) -> None:
    auth = msal_auth.GraphAuth(env.cfg())
    env.publish(env.cfg(), SMALL, auth=auth)
    env.entra.revoke()
    env.publish(env.cfg(), SMALL[::-1], auth=auth)
    assert env.stored() == SMALL[::-1]
    assert sum(r.path.endswith("/token") for r in env.server.requests) == 2


def test_delegated_me_drive_after_device_login(env: Env) -> None:
    cfg = env.cfg(auth="delegated", client_secret=None, user=None, me=True,
                  token_cache=str(env.tmp / "cache" / "msal.json"))
    assert msal_auth.device_code_login(cfg, echo=lambda m: None) == USER
    res = env.publish(cfg, SMALL)
    assert env.stored() == SMALL and res.path == REMOTE
    assert any(r.path == "/v1.0/me/drive" for r in env.server.requests)


def test_no_secret_or_token_in_logs_errors_or_results(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env.graph.throttle(1)
    env.graph.drop_chunk(2, keep=5)
    res = env.publish(env.cfg(), LARGE)
    env.graph.lock(REMOTE)
    with pytest.raises(DestinationError) as locked:
        env.publish(env.cfg(on_locked="fail"), SMALL)
    with pytest.raises(FatalAPIError) as refused:
        env.publish(env.cfg(client_secret="wrong-secret-value-123"), SMALL)
    secrets = [env.entra.client_secret, "wrong-secret-value-123", *env.entra.ever_issued]
    assert len(secrets) > 2
    texts = [caplog.text, str(locked.value), str(refused.value), repr(res), repr(env.cfg())]
    assert "invalid_client" in str(refused.value)
    assert not [s for s in secrets for t in texts if s in t]


def test_example_config_loads_with_both_auth_styles() -> None:
    from config.loader import load_config

    example = Path(__file__).resolve().parents[2] / "config" / "examples" / "onedrive.yaml"
    loaded = load_config(example, env={"ONEDRIVE_CLIENT_SECRET": "example-secret"})
    app, me = loaded.config.destinations
    assert (app.auth, app.site, app.conflict, app.on_locked, app.chunk_size) == (
        "app", "contoso.sharepoint.com:/sites/Sales", "replace", "wait", 10 * 1024 * 1024)
    assert (me.auth, me.me, me.on_locked) == ("delegated", True, "sibling")
    assert me.token_cache == str(example.parent / ".state" / "msal-token-cache.json")
    assert "example-secret" in loaded.secrets


def test_state_table_is_created_by_make_engine(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert "onedrive_published" in sa.inspect(engine).get_table_names()
    assert os.stat(tmp_path / "db.sqlite").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("locked", [False, True], ids=["replaced", "sibling"])
def test_the_destination_fills_the_path_and_names_where_the_workbook_went(env: Env, locked: bool) -> None:
    """connectors.destinations.onedrive.publish(dest, staged, ctx): what the flow calls."""
    if locked:
        env.graph.put_file(DRIVE, REMOTE, SMALL[::-1])
        env.graph.lock(REMOTE)
    staged = env.tmp / "staged.xlsx"
    staged.write_bytes(SMALL)
    engine = make_engine(f"sqlite:///{env.tmp / 'state.sqlite'}")
    where = onedrive.publish(env.cfg(on_locked="sibling"), staged,  # path "/Sales/Reports/Pipeline {period}.xlsx"
                             PublishContext(date(2026, 9, 30), "Q3", lambda: engine, env.sleeps.append))
    with engine.connect() as conn:
        kept = conn.execute(sa.select(upload.published.c.path, upload.published.c.ctag)).all()
    web_root = env.graph.drives[DRIVE].web_root
    if locked:  # the sibling got the workbook, the note says why; no eTag is kept for a file it did not replace
        sib = "/Sales/Reports/Pipeline Q3 (refreshed "
        assert where.startswith(web_root + quote(sib)) and "was locked" in where and where.endswith(".xlsx)")
        assert env.stored() == SMALL[::-1] and kept == []
    else:
        assert where == web_root + quote(REMOTE) and env.stored() == SMALL
        assert kept == [(REMOTE.lower(), env.graph.file(DRIVE, REMOTE).ctag)]
