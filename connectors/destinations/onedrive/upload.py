"""`mode: replace`: upload the whole workbook to OneDrive / SharePoint (Graph, api-contracts.md section 5).

`upload_workbook()` resolves the drive and creates missing folders (graph.py), then uploads: up to 4 MiB
(and at most one chunk) by a simple PUT, larger files by an upload session in `chunk_size` pieces
that resumes from `nextExpectedRanges` after a failed piece (waits and attempts from the shared
RetryPolicy, through `pause_before_retry`) and is cancelled (DELETE) when giving up. Graph swaps
the file only when the upload commits, so readers never see a partial workbook.

Conflicts: `conflict: replace` overwrites (keeping the item id and version history).
`fail_if_changed` compares the file's content tag (cTag) with the one this tool wrote (the state
database's `onedrive_published` table): the eTag is not compared, because OneDrive changes it by
itself after an upload (metadata only). When the cTag is unchanged the upload carries `If-Match`
with the eTag just read, so a save by someone in between is answered 412 and nothing is
overwritten. Rows written before the cTag was kept fall back to comparing the eTag.

An applied upload answered 5xx (or a dropped connection) is not taken for someone else's edit: a
conditional simple PUT (If-Match, or conflictBehavior fail / rename) is not resent blindly, where
it would meet its own new eTag (412) or name (409), nor is a conditional upload session started
over once its session is gone (a commit applied, then answered 5xx, deletes it). The file is read
back: the cTag read before the upload means it was not applied (sent again, If-Match the eTag just
read); a `file.hashes.quickXorHash` and size equal to those of the bytes sent (quickxor.py; Graph:
the hash "can be used to determine if the contents of the file change", resources/hashes) mean our
write landed (its cTag is recorded as ours); anything else is someone else's content, a conflict
as before.

A 409 at the commit of a session is told apart by its code: `nameAlreadyExists` (a file with the
name appeared) or `resourceModified` (the file changed since it was read: a person's concurrent
edit). With `conflict: replace` either is recovered by committing the finished session explicitly
(`@microsoft.graph.sourceUrl`, conflictBehavior replace); with `fail_if_changed` neither is ever
committed over, and no commit is ever sent without If-Match. Locks (423): `on_locked: wait |
sibling | fail`; the waits are this module's own (`_LockPolicy`: 30 s doubling to 300 s, at most
`lock_wait_max` in all), not the retry policy's. 429/503 wait for Retry-After (the retry policy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from config.models import OneDriveDestinationConfig
from connectors.destinations.onedrive.graph import (
    GraphApi,
    PublishResult,
    check_path,
    connect,
    ensure_folder,
    item_path,
    resolve_drive,
)
from connectors.destinations.onedrive.quickxor import quickxor_hash
from connectors.errors import DestinationError, FatalAPIError, RetriableAPIError
from connectors.http.msal_auth import GraphAuth
from connectors.http.session import (
    RETRY_STATUSES,
    TRANSIENT_EXCEPTIONS,
    OutcomeUnknown,
    default_error_message,
    pause_before_retry,
    retry_after_seconds,
)
from connectors.state.tables import onedrive_published as published

log = logging.getLogger(__name__)

SIMPLE_UPLOAD_MAX = 4 * 1024 * 1024
LOCK_BACKOFF_START = 30.0  # seconds; doubled per 423, capped at LOCK_BACKOFF_MAX
LOCK_BACKOFF_MAX = 300.0
SESSION_RESTARTS = 2  # upload sessions started over after the service lost one (404)
UNSURE_TRIES = 3  # sends of one conditional simple PUT whose earlier sends were read back as not applied


class _Locked(Exception):
    """The target answered 423 and the lock policy does not wait (any more)."""


class _SessionGone(Exception):
    """The upload session is gone (404): start over."""


class _NotOurs(Exception):
    """Read back after an upload whose outcome was unknown, the file holds content this tool did not send."""


# ----------------------------------------------------------------------------- uploads


@dataclass
class _LockPolicy:
    mode: str
    budget: float
    sleep: Callable[[float], None]
    waited: float = 0.0
    delay: float = LOCK_BACKOFF_START

    def on_locked(self) -> None:
        """Wait before trying again, or raise _Locked when the policy does not (or no longer) wait."""
        if self.mode != "wait" or self.waited >= self.budget:
            raise _Locked()
        delay = min(self.delay, self.budget - self.waited)
        log.info("onedrive: file is locked (open or checked out); trying again in %.0fs", delay)
        self.sleep(delay)
        self.waited += delay
        self.delay = min(self.delay * 2, LOCK_BACKOFF_MAX)


class _Uploader:
    def __init__(self, g: GraphApi, drive_id: str, parent_id: str, data: bytes, locks: _LockPolicy):
        self.g, self.drive_id, self.parent_id, self.data, self.locks = g, drive_id, parent_id, data, locks
        self.chunk_size = g.cfg.chunk_size
        self._quickxor: str | None = None
        self._etag_now: str | None = None  # the eTag read back after a PUT that was not applied

    def upload(self, name: str, behaviour: str, if_match: str | None, item_id: str | None,
               recover_conflicts: bool = False, known_ctag: str | None = None) -> requests.Response:
        """Upload; returns the committing response (2xx driveItem, or 409/412 for the caller).

        `recover_conflicts` (conflict: replace only) commits a session over a 409 at its commit.
        `known_ctag`: the cTag of the file as read before the upload (None: there was no file).
        """
        if len(self.data) <= min(SIMPLE_UPLOAD_MAX, self.chunk_size):
            return self._simple(name, behaviour, if_match, item_id, known_ctag)
        for _ in range(SESSION_RESTARTS + 1):
            try:
                return self._session(name, behaviour, if_match, recover_conflicts and if_match is None)
            except _SessionGone:
                if if_match is not None or behaviour != "replace":  # a commit answered 5xx may have landed
                    found = self._read_back(name, item_id, known_ctag)
                    if found is not None:
                        return found
                    if_match = self._etag_now if if_match else None
                log.warning("onedrive: the upload session expired or was lost; starting the upload again")
        raise RetriableAPIError(f"Microsoft Graph lost the upload session {SESSION_RESTARTS + 1} times; try again later")

    def _simple(self, name: str, behaviour: str, if_match: str | None, item_id: str | None,
                known_ctag: str | None) -> requests.Response:
        """PUT the bytes. A conditional PUT (If-Match, or conflictBehavior fail / rename) is not resent
        after an unknown outcome (a 5xx, a dropped connection) before the file is read back: a resend
        of an applied PUT would meet our own new eTag (412) or name (409) and look like someone
        else's edit. The read-back tells them apart by the content hash (`_read_back`)."""
        conditional = if_match is not None or behaviour != "replace"
        for attempt in range(1, UNSURE_TRIES + 1):
            if if_match and item_id:
                path, params = f"/drives/{self.drive_id}/items/{item_id}/content", {}
            else:
                path = item_path(self.drive_id, self.parent_id, name) + "/content"
                params = {"@microsoft.graph.conflictBehavior": behaviour}
            headers = {"Content-Type": "application/octet-stream"} | ({"If-Match": if_match} if if_match else {})
            try:
                while True:
                    resp = self.g.call("PUT", path, params=params, data=self.data, headers=headers,
                                       allow=frozenset({409, 412, 423}), repeat_safe=not conditional)
                    if resp.status_code != 423:
                        return resp
                    self.locks.on_locked()
            except OutcomeUnknown as exc:
                policy = self.g.policy
                pause_before_retry(policy, self.g.http.observer, "Microsoft Graph upload", attempt,
                                   f"{exc}; reading the file back first",
                                   None if exc.wait is None else min(exc.wait, policy.retry_after_max))
                found = self._read_back(name, item_id, known_ctag)
                if found is not None:
                    return found
                if_match = self._etag_now if if_match else None  # not applied: the file is as it was read
        raise RetriableAPIError(f"Microsoft Graph: the upload of {name} failed {UNSURE_TRIES} times without being "
                                "applied; try again later")

    def _read_back(self, name: str, item_id: str | None, known_ctag: str | None) -> requests.Response | None:
        """After a PUT whose outcome is unknown: None when it was not applied (no file, or the cTag
        read before the upload); the file's driveItem when it holds our bytes (its
        `file.hashes.quickXorHash` and size are those of what we sent); _NotOurs otherwise. (The hash
        is not cryptographic: it only tells our write from another save, which cannot aim at it.)"""
        where = f"/drives/{self.drive_id}/items/{item_id}" if item_id else item_path(self.drive_id, self.parent_id, name)
        resp = self.g.call("GET", where, allow=frozenset({404}))
        if resp.status_code == 404:
            log.info("onedrive: the upload of %s had not been applied (no file); sending it again", name)
            return None
        item = resp.json()
        if known_ctag is not None and item.get("cTag") == known_ctag:
            log.info("onedrive: the upload of %s had not been applied (content unchanged); sending it again", name)
            self._etag_now = item.get("eTag")
            return None
        theirs = ((item.get("file") or {}).get("hashes") or {}).get("quickXorHash")
        if theirs is not None and theirs == self.quickxor and int(item.get("size", -1)) == len(self.data):
            log.info("onedrive: the upload of %s had been applied (its quickXorHash and size are ours)", name)
            return resp
        if theirs is None:
            log.warning("onedrive: %s changed and Graph gives no quickXorHash for it: it cannot be told apart "
                        "from someone else's save", name)
        raise _NotOurs()

    @property
    def quickxor(self) -> str:
        if self._quickxor is None:
            self._quickxor = quickxor_hash(self.data)
        return self._quickxor

    def _session(self, name: str, behaviour: str, if_match: str | None, recover: bool) -> requests.Response:
        create = item_path(self.drive_id, self.parent_id, name) + "/createUploadSession"
        body = {"item": {"@microsoft.graph.conflictBehavior": behaviour, "name": name}, "deferCommit": False}
        headers = {"If-Match": if_match} if if_match else {}
        while True:
            resp = self.g.call("POST", create, json=body, headers=headers, allow=frozenset({409, 412, 423}))
            if resp.status_code != 423:
                break
            self.locks.on_locked()
        if resp.status_code != 200:
            return resp
        url = resp.json()["uploadUrl"]
        try:
            done = self._send(url)
            if done.status_code == 409 and recover and behaviour == "replace":
                done = self._commit_explicitly(url, name, error_code(done))
        except BaseException:
            self._cancel(url)
            raise
        if done.status_code >= 400:
            self._cancel(url)
        return done

    def _send(self, url: str) -> requests.Response:
        """PUT the pieces in order; after a failed piece, resume from the session's nextExpectedRanges."""
        total, failures = len(self.data), 0
        rng: tuple[int, int | None] = (0, None)
        policy = self.g.policy
        while True:
            offset, stop = rng  # fill the first expected range; a bounded one ends before data already sent
            end = min(offset + self.chunk_size, total if stop is None else stop + 1, total) - 1
            wait: float | None = None
            try:
                resp = self.g.session.put(url, data=self.data[offset:end + 1], timeout=self.g.cfg.timeout,
                                          headers={"Content-Range": f"bytes {offset}-{end}/{total}"})
            except TRANSIENT_EXCEPTIONS as exc:
                reason = f"{type(exc).__name__} while sending bytes {offset}-{end}"
            else:
                code = resp.status_code
                if code in (200, 201, 409, 412):
                    return resp
                if code == 202:
                    rng, failures = _next_range(resp) or (end + 1, None), 0
                    continue
                if code == 404:
                    raise _SessionGone()
                if code == 423:
                    self.locks.on_locked()
                    rng = self._resume(url)
                    continue
                if code != 416 and code not in RETRY_STATUSES:
                    raise FatalAPIError(f"Microsoft Graph refused upload bytes {offset}-{end} with HTTP {code}: "
                                        f"{default_error_message(resp)}")
                reason = f"HTTP {code} for bytes {offset}-{end}: {default_error_message(resp)}"
                wait = retry_after_seconds(resp)
            failures += 1  # attempts at this piece: progress (202) starts the count again
            pause_before_retry(policy, self.g.http.observer, "Microsoft Graph upload", failures, reason,
                               None if wait is None else min(wait, policy.retry_after_max))
            rng = self._resume(url)

    def _resume(self, url: str) -> tuple[int, int | None]:
        resp = self.g.upload_url("GET", url, allow=frozenset({404}))
        if resp.status_code == 404:
            raise _SessionGone()
        rng = _next_range(resp)
        if rng is None:  # every byte arrived but nothing committed: start over cleanly
            self._cancel(url)
            raise _SessionGone()
        log.info("onedrive: upload session expects bytes from %d", rng[0])
        return rng

    def _commit_explicitly(self, url: str, name: str, code: str) -> requests.Response:
        """Commit a finished session over the existing file (the documented 409 recovery; conflict: replace only)."""
        log.info("onedrive: the commit met %s; committing the session with replace", code or "HTTP 409")
        return self.g.call("PUT", item_path(self.drive_id, self.parent_id, name)[:-1], allow=frozenset({409, 412}),
                           json={"name": name, "@microsoft.graph.conflictBehavior": "replace",
                                 "@microsoft.graph.sourceUrl": url})

    def _cancel(self, url: str) -> None:
        try:
            self.g.upload_url("DELETE", url, allow=frozenset({404}))
            log.info("onedrive: cancelled the upload session")
        except Exception as exc:  # best effort: the session expires by itself
            log.warning("onedrive: could not cancel the upload session (%s); it will expire", type(exc).__name__)


def error_code(resp: requests.Response) -> str:
    """The Graph error envelope's top-level `code` ("" when there is none)."""
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _next_range(resp: requests.Response) -> tuple[int, int | None] | None:
    """The first of `nextExpectedRanges` ("12345-55232" or open-ended "77829-"); None when none."""
    try:
        ranges = resp.json().get("nextExpectedRanges") or []
    except (ValueError, AttributeError):
        return None
    if not ranges:
        return None
    start, _, stop = str(ranges[0]).partition("-")
    return int(start), int(stop) if stop.strip() else None


# ----------------------------------------------------------------------------- what this tool wrote


@dataclass
class _Written:
    etag: str
    ctag: str | None  # None in rows written before the cTag was kept


def _ensure_ctag_column(engine: sa.Engine) -> None:
    """State databases made before `onedrive_published.ctag` existed get the (nullable) column."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns(published.name)}
    if "ctag" not in columns:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {published.name} ADD COLUMN ctag VARCHAR(200)"))
        log.info("onedrive: added the ctag column to the state table %s", published.name)


def _last_write(engine: sa.Engine | None, drive_id: str, path: str) -> _Written | None:
    if engine is None:
        return None
    _ensure_ctag_column(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(published.c.etag, published.c.ctag).where(
            published.c.drive_id == drive_id, published.c.path == path.lower())).first()
    return None if row is None else _Written(row.etag, row.ctag)


def _record_write(engine: sa.Engine | None, drive_id: str, path: str, item: dict[str, Any]) -> None:
    if engine is None:
        return
    _ensure_ctag_column(engine)
    key = (published.c.drive_id == drive_id) & (published.c.path == path.lower())
    with engine.begin() as conn:
        conn.execute(sa.delete(published).where(key))
        conn.execute(sa.insert(published).values(
            drive_id=drive_id, path=path.lower(), item_id=item["id"], etag=item.get("eTag", ""),
            ctag=item.get("cTag") or None, size=int(item.get("size", 0)), written_at=datetime.now(UTC)))


def _changed_since(known: _Written, current: dict[str, Any]) -> bool:
    """Whether the file's content differs from what this tool wrote (the cTag; old rows: the eTag)."""
    if known.ctag is not None:
        return current.get("cTag") != known.ctag
    return current.get("eTag") != known.etag


# ----------------------------------------------------------------------------- publish


def sibling_name(name: str, when: datetime) -> str:
    """`Pipeline Q3 (refreshed 2026-11-27 08.15 UTC).xlsx` for `Pipeline Q3.xlsx`."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem} (refreshed {when.astimezone(UTC):%Y-%m-%d %H.%M.%S} UTC){dot}{ext}"


def upload_workbook(cfg: OneDriveDestinationConfig, workbook: Path, *, remote_path: str,
                    engine: sa.Engine | None = None, session: requests.Session | None = None,
                    sleep: Callable[[float], None] = time.sleep, auth: GraphAuth | None = None,
                    config_dir: Path | None = None,
                    now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> PublishResult:
    """Upload `workbook` to `remote_path` (cfg.path with placeholders filled) on the configured drive.

    Raises DestinationError for the documented outcomes (path refused, changed by someone else,
    locked, name conflict), RetriableAPIError / FatalAPIError for transport and auth failures. In
    every failure the file already on the drive is left as it was (Graph swaps it only when an
    upload commits). `engine` keeps the eTag and cTag this tool wrote (for conflict:
    fail_if_changed); None keeps nothing.
    """
    check_path(remote_path)
    data = Path(workbook).read_bytes()
    g = connect(cfg, session=session, sleep=sleep, auth=auth, config_dir=config_dir)
    drive_id = resolve_drive(g, cfg)
    *folders, name = remote_path.strip("/").split("/")
    parent_id = ensure_folder(g, drive_id, folders)
    existing = g.call("GET", item_path(drive_id, parent_id, name), allow=frozenset({404}))
    current = existing.json() if existing.status_code == 200 else None

    behaviour, if_match = "replace", None
    if cfg.conflict == "fail_if_changed":
        known = _last_write(engine, drive_id, remote_path)
        if current is not None and known is None:
            raise DestinationError(f"{remote_path} exists but this tool has no record of writing it, so "
                                   "conflict: fail_if_changed cannot tell whether someone changed it; "
                                   "move it away, or publish once with conflict: replace")
        if current is not None and _changed_since(known, current):
            raise _changed(remote_path)
        behaviour, if_match = ("replace", current["eTag"]) if current is not None else ("fail", None)

    uploader = _Uploader(g, drive_id, parent_id, data, _LockPolicy(cfg.on_locked, cfg.lock_wait_max, sleep))
    note, written = None, remote_path
    try:
        try:
            resp = uploader.upload(name, behaviour, if_match, current["id"] if current else None,
                                   recover_conflicts=cfg.conflict == "replace",
                                   known_ctag=current.get("cTag") if current else None)
        except _Locked:
            if cfg.on_locked != "sibling":
                raise DestinationError(_locked_message(remote_path, cfg)) from None
            sib = sibling_name(name, now())
            written = "/" + "/".join([*folders, sib])
            log.warning("onedrive: %s is locked; writing %s next to it", remote_path, sib)
            uploader.locks = _LockPolicy("fail", 0, sleep)
            try:
                resp = uploader.upload(sib, "rename", None, None)
            except _Locked:
                raise DestinationError(f"{remote_path} is locked and so is the sibling {written}; nothing was "
                                       "written") from None
            note = (f"{remote_path} was locked (open in Excel or checked out), so the refreshed workbook was "
                    f"written next to it as {written}")
    except _NotOurs:  # read back after an unknown outcome: someone else's content, not ours
        if if_match is not None and written == remote_path:  # the file itself, not a sibling
            raise _changed(remote_path) from None
        raise DestinationError(f"{written}: a file with this name appeared while uploading (its content is not "
                               f"what this tool sent); with conflict: {cfg.conflict} it was not overwritten") from None
    if resp.status_code == 412 or (resp.status_code == 409 and error_code(resp) == "resourceModified"):
        raise _changed(remote_path)
    if resp.status_code == 409:
        raise DestinationError(f"{written}: a file with this name appeared while uploading "
                               f"(nameAlreadyExists); with conflict: {cfg.conflict} it was not overwritten")
    item = resp.json()
    written = "/" + "/".join([*folders, item.get("name", written.rsplit("/", 1)[-1])])
    if note is None:
        _record_write(engine, drive_id, remote_path, item)
    result = PublishResult(web_url=item.get("webUrl", ""), item_id=item["id"], etag=item.get("eTag", ""),
                           size=int(item.get("size", len(data))), path=written, note=note)
    log.info("onedrive: published %s (%d bytes, item %s) %s", result.path, result.size, result.item_id, result.web_url)
    return result


def _changed(path: str) -> DestinationError:
    return DestinationError(f"{path} was changed by someone else since this tool last wrote it (its content tag "
                            "differs, or Graph answered 412 / resourceModified); the new workbook was NOT uploaded "
                            "and their version is intact. Merge or move their file, or set conflict: replace to "
                            "overwrite")


def _locked_message(path: str, cfg: OneDriveDestinationConfig) -> str:
    if cfg.on_locked == "wait":
        return (f"{path} stayed locked (open in Excel or checked out) for {cfg.lock_wait_max:.0f}s; the previous "
                "file is intact. Close it, raise lock_wait_max, or set on_locked: sibling")
    return f"{path} is locked (open in Excel or checked out); on_locked: fail, so nothing was written"
