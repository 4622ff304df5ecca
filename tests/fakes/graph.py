"""A fake Microsoft Graph for OneDrive/SharePoint files, per api-contracts.md section 5.

Drives with folders and files addressed by path or id, drive lookup for users / sites / me,
folder creation, simple upload (4 MiB cap, so bigger files must use sessions), upload sessions
with the real rules (pieces in order, multiples of 320 KiB except the last, same total, no
Authorization header, nextExpectedRanges, GET status, DELETE, explicit commit through
`@microsoft.graph.sourceUrl`), quoted eTags and If-Match (412), locks (423), nameAlreadyExists
(409), throttling (429/503 + Retry-After). Bodies follow Microsoft's pages: the error envelope
(https://learn.microsoft.com/graph/errors) and the upload session answers
(https://learn.microsoft.com/graph/api/driveitem-createuploadsession); tests/sources/test_recorded_samples.py
checks them against the recorded samples in ../shared/fixtures/real/msgraph/ when that is there.

eTag and cTag follow the driveItem resource page
(https://learn.microsoft.com/graph/api/resources/driveitem): the eTag is "for the entire item
(metadata + content)", the cTag "an eTag for the content of the item ... not changed if only the
metadata is changed". OneDrive changes an item's metadata by itself after an upload (background
processing such as metadata promotion), so after every upload this fake changes the eTag again and
leaves the cTag (`background_etag_change`, on by default). If-Match takes either tag
(driveitem-createuploadsession.md: "the eTag (or cTag) provided").

A file's `file.hashes.quickXorHash` is computed from its bytes (`quickxor_hash` below, written from
Microsoft's description of the algorithm, not from the project's connectors/.../quickxor.py): "Hashes
of the file's binary content" (https://learn.microsoft.com/graph/api/resources/file), the
quickXorHash "can be used to determine if the contents of the file change" and is "the only value
that is guaranteed to be available" on both OneDrive kinds (https://learn.microsoft.com/graph/api/resources/hashes).

Switches (each a countdown of requests it affects): `lock(path, times)`, `throttle(times, ...)`,
`drop_chunk(nth, keep)`, `chunk_failures[nth]`, `commit_conflict` (409 nameAlreadyExists at a
commit), `commit_edit_status` (what a commit answers when the file's content changed after the
session was created with If-Match: 412, or 409 `resourceModified`, "The resource being updated has
changed since the caller last read it", concepts/errors.md); `on_chunk(n)` runs test code
(another user's edit, a lock, a lost session) when the nth piece arrives. `fail_simple_put(status,
applied, then)`: the next simple PUT that passes its checks is applied (or not), then `then()` runs
(another user's save, say), then it answers 503 serviceNotAvailable (Retry-After 5) or 504
gatewayTimeout (`commit_then_fail`: the same for a session's commit, whose session is then gone): a
504 is a proxy that "didn't receive a timely response from the upstream server"
(https://learn.microsoft.com/graph/errors), which may have done the work all the same. `edit(path, data)` plays another user saving the file.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

import numpy as np

from tests.fakes.server import Request, Response

CHUNK_UNIT = 320 * 1024
SIMPLE_MAX = 4 * 1024 * 1024
FRAGMENT_MAX = 60 * 1024 * 1024
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


SESSION_EXPIRES = "2026-12-31T09:21:55.523Z"  # an upload session's expirationDateTime (ISO 8601, UTC)
NAME_EXISTS = ("Another file exists with the same name as the uploaded session. Commit the session to a new "
               "name, or with @microsoft.graph.conflictBehavior replace, through @microsoft.graph.sourceUrl.")


def gerror(status: int, code: str, message: str, inner: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    err: dict = {"code": code, "message": message,
                 "innerError": {"date": "2025-05-01T10:00:00", "request-id": str(uuid.uuid4())}}
    if inner:
        err["innerError"]["code"] = inner
    return Response(status, {"error": err}, headers=headers or {})


@functools.lru_cache(maxsize=32)
def quickxor_hash(data: bytes) -> str:
    """QuickXorHash as https://learn.microsoft.com/onedrive/developer/code-snippets/quickxorhash describes it,
    bit by bit: bit j of byte i is XORed into bit (11 * i + j) mod 160 of a 160-bit block (byte i rotated
    left by 11 * i bits; the block read little-endian after its bytes are reversed), then the length, 64
    bits little-endian, into the block's last 8 bytes ("the least significant bits" of the reversed block)."""
    parity = np.zeros(160, dtype=np.int64)
    step = 1 << 16
    for start in range(0, len(data), step):
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(step, len(data) - start), offset=start)
        bits = np.unpackbits(chunk, bitorder="little").reshape(-1, 8).astype(bool)
        where = (11 * np.arange(start, start + len(chunk), dtype=np.int64)[:, None] + np.arange(8)) % 160
        parity += np.bincount(where[bits], minlength=160)
    block = bytearray(np.packbits((parity & 1).astype(np.uint8), bitorder="little").tobytes())
    for k, b in enumerate(len(data).to_bytes(8, "little")):
        block[12 + k] ^= b
    return base64.b64encode(bytes(block)).decode("ascii")


@dataclass
class Item:
    id: str
    name: str
    parent: str | None
    folder: bool
    content: bytes = b""
    version: int = 1  # any change (metadata or content): the eTag
    content_version: int = 1  # content changes only: the cTag
    guid: str = field(default_factory=lambda: str(uuid.uuid4()).upper())

    @property
    def etag(self) -> str:
        return f'"{{{self.guid}}},{self.version}"'

    @property
    def ctag(self) -> str:
        return f'"c:{{{self.guid}}},{self.content_version}"'


@dataclass
class UploadSession:
    token: str
    drive: str
    parent: str
    name: str
    conflict: str
    if_match: str | None
    total: int | None = None
    target_ctag: str | None = None  # the target's content when the session was created
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Drive:
    id: str
    web_root: str
    items: dict[str, Item] = field(default_factory=dict)
    root: str = ""

    def __post_init__(self) -> None:
        self.root = "root-" + self.id[-6:]
        self.items[self.root] = Item(self.root, "root", None, True)

    def child(self, parent: str, name: str) -> Item | None:
        for it in self.items.values():
            if it.parent == parent and it.name.lower() == name.lower():
                return it
        return None

    def walk(self, start: str, rel: str) -> Item | None:
        item: Item | None = self.items[start]
        for seg in [s for s in rel.strip("/").split("/") if s]:
            item = self.child(item.id, seg) if item and item.folder else None
        return item

    def path_of(self, item: Item) -> str:
        parts = []
        while item.parent is not None:
            parts.append(item.name)
            item = self.items[item.parent]
        return "/" + "/".join(reversed(parts))


class FakeGraph:
    """The Graph app; `token_ok` decides whether a bearer token is valid (e.g. FakeEntra.valid)."""

    def __init__(self, token_ok: Callable[[str], bool] = lambda t: bool(t), *, web_host: str = "contoso.sharepoint.com"):
        self.token_ok = token_ok
        self.base = ""  # set from the Host header of the first request
        self.drives: dict[str, Drive] = {}
        self.users: dict[str, str] = {}
        self.sites: dict[str, str] = {}  # "host:/sites/x" -> site id
        self.site_drive: dict[str, str] = {}
        self.me: str | None = None
        self.web_host = web_host
        self.sessions: dict[str, UploadSession] = {}
        self.locks: dict[str, int] = {}  # lower path -> remaining 423 answers (-1 forever)
        self.throttles: list[tuple[int, str]] = []  # (status, retry-after) per coming request
        self.drops: dict[int, int] = {}  # nth chunk PUT (1-based) -> bytes kept before the drop
        self.commit_conflict = 0
        self.commit_edit_status = 412  # or 409 (resourceModified)
        self.background_etag_change = True
        self.uploads = 0  # committed uploads (simple PUTs and sessions)
        self.chunk_failures: dict[int, tuple[int, str]] = {}  # nth chunk PUT -> (status, Retry-After)
        self.on_chunk: Callable[[int], None] | None = None  # called with n before the nth chunk PUT is judged
        self.chunk_puts = 0
        self.simple_put_failures: list[tuple[int, bool, Callable[[], None] | None]] = []
        self.commit_then_fail = 0  # a session's commit is applied, then answered 504 (once)
        self.created_sessions = 0
        self.deleted_sessions = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ set-up helpers
    def add_drive(self, drive_id: str, *, user: str | None = None, site: str | None = None,
                  me: bool = False) -> Drive:
        drive = Drive(drive_id, f"https://{self.web_host}/personal/{drive_id[-6:]}/Documents")
        self.drives[drive_id] = drive
        if user:
            self.users[user.lower()] = drive_id
        if site:
            site_id = f"{site.split(':')[0]},{uuid.uuid4()},{uuid.uuid4()}"
            self.sites[site.lower()] = site_id
            self.site_drive[site_id] = drive_id
        if me:
            self.me = drive_id
        return drive

    def put_file(self, drive_id: str, path: str, data: bytes) -> Item:
        drive = self.drives[drive_id]
        *folders, name = path.strip("/").split("/")
        parent = drive.items[drive.root]
        for seg in folders:
            nxt = drive.child(parent.id, seg)
            if nxt is None:
                nxt = Item(_new_id(), seg, parent.id, True)
                drive.items[nxt.id] = nxt
            parent = nxt
        return self._write(drive, parent.id, name, data)

    def file(self, drive_id: str, path: str) -> Item | None:
        drive = self.drives[drive_id]
        return drive.walk(drive.root, path)

    def edit(self, drive_id: str, path: str, data: bytes) -> Item:
        """Another user saves the file: new content, new eTag."""
        return self.put_file(drive_id, path, data)

    def lock(self, path: str, times: int = -1) -> None:
        self.locks[path.lower()] = times

    def throttle(self, times: int = 1, status: int = 429, retry_after: str = "7") -> None:
        self.throttles += [(status, retry_after)] * times

    def fail_simple_put(self, status: int, applied: bool, then: Callable[[], None] | None = None) -> None:
        """The next simple PUT is applied (or not), then `then()` runs, then it answers `status` (503 or 504)."""
        self.simple_put_failures.append((status, applied, then))

    def drop_chunk(self, nth: int, keep: int) -> None:
        """On the nth chunk PUT, store only `keep` bytes of it, then drop the connection."""
        self.drops[nth] = keep

    # ------------------------------------------------------------------ dispatch
    def __call__(self, req: Request) -> Response:
        with self._lock:
            if not self.base:
                self.base = f"https://{req.headers.get('host', '127.0.0.1')}"
            if self.throttles:
                status, after = self.throttles.pop(0)
                if status == 429:
                    return gerror(429, "activityLimitReached", "The request has been throttled", "throttledRequest",
                                  {"Retry-After": after})
                return gerror(503, "serviceNotAvailable", "Service unavailable", None, {"Retry-After": after})
            if req.path.startswith("/up/"):
                return self._upload_url(req)
            auth = req.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not self.token_ok(auth[7:]):
                return gerror(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            return self._api(req)

    def _api(self, req: Request) -> Response:
        p = unquote(req.path)
        prefix = "/v1.0"
        if not p.startswith(prefix):
            return gerror(400, "invalidRequest", "Invalid version")
        p = p[len(prefix):]
        m = re.fullmatch(r"/sites/([^/]+?):(/.+)", p)
        if m and req.method == "GET":
            site_id = self.sites.get(f"{m.group(1)}:{m.group(2)}".lower())
            if not site_id:
                return gerror(404, "itemNotFound", "Requested site could not be found")
            return Response(200, {"id": site_id, "webUrl": f"https://{m.group(1)}{m.group(2)}",
                                  "displayName": m.group(2).rsplit("/", 1)[-1]})
        m = re.fullmatch(r"/(users/([^/]+)|me|sites/([^/]+)|drives/([^/]+))/drive", p) or re.fullmatch(
            r"/drives/([^/]+)", p)
        if m and req.method == "GET":
            return self._get_drive(p)
        m = re.fullmatch(r"/drives/([^/]+)/(root|items/([^/:]+))(?::(/[^:]*)(:?)(/\w+)?)?(/\w+)?", p)
        if not m:
            return gerror(400, "invalidRequest", f"Unsupported path {p}")
        drive = self.drives.get(m.group(1))
        if drive is None:
            return gerror(404, "itemNotFound", "The drive does not exist")
        anchor = drive.root if m.group(2) == "root" else m.group(3)
        if anchor not in drive.items:
            return gerror(404, "itemNotFound", "The resource could not be found.")
        rel, action = m.group(4), (m.group(6) or m.group(7) or "").lstrip("/")
        return self._item_op(req, drive, anchor, rel, action)

    def _get_drive(self, p: str) -> Response:
        if p.startswith("/me/"):
            drive_id = self.me
        elif p.startswith("/users/"):
            drive_id = self.users.get(p.split("/")[2].lower())
        elif p.startswith("/sites/"):
            drive_id = self.site_drive.get(p.split("/")[2])
        else:
            drive_id = p.split("/")[2]
        if drive_id not in self.drives:
            return gerror(404, "itemNotFound", "The resource could not be found.")
        return Response(200, {"id": drive_id, "driveType": "business", "webUrl": self.drives[drive_id].web_root})

    def _item_op(self, req: Request, drive: Drive, anchor: str, rel: str | None, action: str) -> Response:
        if rel is not None:
            parent_rel, _, name = rel.strip("/").rpartition("/")
            parent = drive.walk(anchor, parent_rel)
            target = drive.child(parent.id, name) if parent and parent.folder else None
        else:
            target = drive.items[anchor]
            parent = drive.items.get(target.parent or "")
            name = target.name
        if req.method == "GET" and not action:
            return Response(200, self._item_json(drive, target)) if target else gerror(
                404, "itemNotFound", "The resource could not be found.")
        if req.method == "POST" and action == "children":
            return self._create_folder(req, drive, target)
        if parent is None or not parent.folder:
            return gerror(404, "itemNotFound", "The parent folder does not exist.")
        if req.method == "PUT" and action == "content":
            return self._simple_put(req, drive, parent, name, target)
        if req.method == "POST" and action == "createUploadSession":
            return self._create_session(req, drive, parent, name, target)
        if req.method == "PUT" and not action:
            return self._commit_from_source(req, drive, parent, name)
        return gerror(400, "invalidRequest", f"Unsupported {req.method} {action}")

    # ------------------------------------------------------------------ operations
    def _create_folder(self, req: Request, drive: Drive, parent: Item | None) -> Response:
        if parent is None or not parent.folder:
            return gerror(404, "itemNotFound", "The resource could not be found.")
        body = req.json()
        if "folder" not in body:
            return gerror(400, "invalidRequest", "folder facet required")
        existing = drive.child(parent.id, body["name"])
        if existing is not None:
            if body.get("@microsoft.graph.conflictBehavior", "fail") == "fail":
                return gerror(409, "nameAlreadyExists", "The specified item name already exists.")
            return Response(200, self._item_json(drive, existing))
        item = Item(_new_id(), body["name"], parent.id, True)
        drive.items[item.id] = item
        return Response(201, self._item_json(drive, item))

    def _precondition(self, req_if_match: str | None, target: Item | None) -> Response | None:
        if req_if_match is None:
            return None
        if not (req_if_match.startswith('"') and req_if_match.endswith('"')):
            return gerror(400, "invalidRequest", "malformedEntityTag")
        if target is None or req_if_match not in (target.etag, target.ctag):
            return gerror(412, "resourceModified", "ETag does not match current item's value",
                          "entityTagDoesNotMatch")
        return None

    def _locked(self, drive: Drive, parent: Item, name: str) -> Response | None:
        key = f"{drive.path_of(parent).rstrip('/')}/{name}".lower()
        left = self.locks.get(key)
        if left is None or left == 0:
            return None
        if left > 0:
            self.locks[key] = left - 1
        return gerror(423, "notAllowed", "The resource you are attempting to access is locked", "resourceLocked")

    def _simple_put(self, req: Request, drive: Drive, parent: Item, name: str, target: Item | None) -> Response:
        if len(req.body) > SIMPLE_MAX:
            return gerror(413, "invalidRequest", "The request is too large for a simple upload; use an upload session",
                          "maxFileSizeExceeded")
        bad = self._precondition(req.headers.get("if-match"), target)
        if bad:
            return bad
        behaviour = req.q("@microsoft.graph.conflictBehavior", "replace")
        if target is not None and behaviour == "fail":
            return gerror(409, "nameAlreadyExists", "The specified item name already exists.")
        if target is not None and behaviour == "rename":
            name = self._free_name(drive, parent, name)
            target = None
        locked = self._locked(drive, parent, name)
        if locked:
            return locked
        if self.simple_put_failures:
            status, applied, then = self.simple_put_failures.pop(0)
            if applied:
                self._uploaded(drive, self._write(drive, parent.id, name, req.body), 200)
            if then is not None:
                then()
            if status == 503:
                return gerror(503, "serviceNotAvailable", "Service unavailable", None, {"Retry-After": "5"})
            return gerror(504, "gatewayTimeout", "The operation timed out", "gatewayTimeoutUncategorized")
        item = self._write(drive, parent.id, name, req.body)
        return self._uploaded(drive, item, 200 if target else 201)

    def _create_session(self, req: Request, drive: Drive, parent: Item, name: str, target: Item | None) -> Response:
        body = req.json() or {}
        item = body.get("item")
        if not isinstance(item, dict):
            return gerror(400, "invalidRequest", "The 'item' property is required")
        if item.get("name", name) != name:
            return gerror(400, "invalidRequest", "The name in the body does not match the path")
        bad = self._precondition(req.headers.get("if-match"), target)
        if bad:
            return bad
        locked = self._locked(drive, parent, name)
        if locked:
            return locked
        token = secrets.token_hex(12)
        self.sessions[token] = UploadSession(token, drive.id, parent.id, name,
                                             item.get("@microsoft.graph.conflictBehavior", "fail"),
                                             req.headers.get("if-match"), body.get("fileSize"),
                                             target.ctag if target is not None else None)
        self.created_sessions += 1
        return Response(200, {"uploadUrl": f"{self.base}/up/{token}?tempauth=fake{token[:6]}",
                              "expirationDateTime": SESSION_EXPIRES})

    def _upload_url(self, req: Request) -> Response:
        token = req.path.split("/")[2]
        sess = self.sessions.get(token)
        if sess is None:
            return gerror(404, "itemNotFound", "The upload session was not found", "uploadSessionNotFound")
        if "authorization" in req.headers:
            return gerror(401, "unauthenticated", "Do not send Authorization to a pre-authenticated upload URL")
        if req.method == "GET":
            return Response(200, self._status(sess))
        if req.method == "DELETE":
            del self.sessions[token]
            self.deleted_sessions += 1
            return Response(204)
        if req.method != "PUT":
            return gerror(400, "invalidRequest", "Unsupported")
        self.chunk_puts += 1
        if self.on_chunk is not None:
            self.on_chunk(self.chunk_puts)
        failure = self.chunk_failures.pop(self.chunk_puts, None)
        if failure is not None:
            return gerror(failure[0], "serviceNotAvailable" if failure[0] == 503 else "activityLimitReached",
                          "Try again later", None, {"Retry-After": failure[1]})
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", req.headers.get("content-range", ""))
        if not m:
            return gerror(400, "invalidRequest", "Content-Range is missing or malformed")
        start, end, total = map(int, m.groups())
        n = len(req.body)
        if end - start + 1 != n:
            return gerror(400, "invalidRequest", "Content-Range does not match the bytes sent", "fragmentLengthMismatch")
        if sess.total is None:
            sess.total = total
        if total != sess.total:
            return gerror(400, "invalidRequest", "The total length differs from earlier fragments",
                          "fragmentLengthMismatch")
        if n > FRAGMENT_MAX:
            return gerror(413, "invalidRequest", "Fragment larger than 60 MiB", "maxFragmentLengthExceeded")
        if end + 1 < total and n % CHUNK_UNIT:
            return gerror(400, "invalidRequest", "Fragments other than the last must be multiples of 320 KiB",
                          "fragmentLengthMismatch")
        if start < len(sess.data):
            return gerror(416, "invalidRange", "The uploaded fragment overlaps with data already received.",
                          "fragmentOverlap")
        if start > len(sess.data):
            return gerror(416, "invalidRange", "Fragment out of order", "fragmentOutOfOrder")
        keep = self.drops.pop(self.chunk_puts, None)
        if keep is not None:
            sess.data += req.body[:keep]
            return Response(drop=True)
        if end + 1 < total:
            sess.data += req.body
            return Response(202, self._status(sess))
        return self._commit(sess, req.body)

    def _status(self, sess: UploadSession) -> dict:
        complete = sess.total is not None and len(sess.data) >= sess.total
        return {"expirationDateTime": SESSION_EXPIRES,
                "nextExpectedRanges": [] if complete else [f"{len(sess.data)}-"]}

    def _commit(self, sess: UploadSession, last: bytes) -> Response:
        drive = self.drives[sess.drive]
        parent = drive.items[sess.parent]
        target = drive.child(parent.id, sess.name)
        if sess.if_match and target is not None and target.ctag != sess.target_ctag and self.commit_edit_status == 409:
            return gerror(409, "resourceModified", "The resource being updated has changed since the caller last "
                          "read it")  # someone saved the file during the upload
        bad = self._precondition(sess.if_match, target)
        if bad:
            return bad
        locked = self._locked(drive, parent, sess.name)
        if locked:
            return locked  # the last fragment is not taken; send it again later
        sess.data += last
        if self.commit_conflict > 0 or (target is not None and sess.conflict == "fail"):
            self.commit_conflict = max(0, self.commit_conflict - 1)
            return gerror(409, "nameAlreadyExists", NAME_EXISTS)
        name = self._free_name(drive, parent, sess.name) if target and sess.conflict == "rename" else sess.name
        item = self._write(drive, parent.id, name, bytes(sess.data))
        del self.sessions[sess.token]
        done = self._uploaded(drive, item, 200 if target and name == sess.name else 201)
        if self.commit_then_fail:
            self.commit_then_fail -= 1
            return gerror(504, "gatewayTimeout", "The operation timed out", "gatewayTimeoutUncategorized")
        return done

    def _commit_from_source(self, req: Request, drive: Drive, parent: Item, name: str) -> Response:
        body = req.json() or {}
        source = body.get("@microsoft.graph.sourceUrl", "")
        token = source.split("/up/", 1)[-1].split("?", 1)[0] if "/up/" in source else ""
        sess = self.sessions.get(token)
        if sess is None or sess.total is None or len(sess.data) != sess.total:
            return gerror(400, "invalidRequest", "sourceUrl is not a complete upload session", "uploadSessionIncomplete")
        target = drive.child(parent.id, name)
        behaviour = body.get("@microsoft.graph.conflictBehavior", "fail")
        if target is not None and behaviour == "fail":
            return gerror(409, "nameAlreadyExists", NAME_EXISTS)
        bad = self._precondition(req.headers.get("if-match"), target)  # this PUT's own header, not the session's
        if bad:
            return bad
        locked = self._locked(drive, parent, name)
        if locked:
            return locked
        if target is not None and behaviour == "rename":
            name, target = self._free_name(drive, parent, name), None
        item = self._write(drive, parent.id, name, bytes(sess.data))
        del self.sessions[token]
        return self._uploaded(drive, item, 200 if target else 201)

    # ------------------------------------------------------------------ storage
    def _write(self, drive: Drive, parent_id: str, name: str, data: bytes) -> Item:
        item = drive.child(parent_id, name)
        if item is None:
            item = Item(_new_id(), name, parent_id, False, data)
            drive.items[item.id] = item
        else:
            item.content, item.version, item.content_version = data, item.version + 1, item.content_version + 1
        return item

    def _uploaded(self, drive: Drive, item: Item, status: int) -> Response:
        """The committing answer; then OneDrive's own processing changes the eTag (not the cTag)."""
        resp = Response(status, self._item_json(drive, item))
        self.uploads += 1
        if self.background_etag_change:
            item.version += 1
        return resp

    def _free_name(self, drive: Drive, parent: Item, name: str) -> str:
        stem, dot, ext = name.rpartition(".")
        i = 1
        while drive.child(parent.id, f"{stem} {i}{dot}{ext}"):
            i += 1
        return f"{stem} {i}{dot}{ext}"

    def _item_json(self, drive: Drive, item: Item) -> dict:
        path = drive.path_of(item)
        body = {"id": item.id, "name": item.name, "eTag": item.etag, "cTag": item.ctag,
                "size": len(item.content), "webUrl": drive.web_root + quote(path),
                "createdDateTime": "2025-05-01T08:00:00Z", "lastModifiedDateTime": "2025-05-01T08:05:00Z",
                "parentReference": {"driveId": drive.id, "driveType": "business", "id": item.parent,
                                    "path": f"/drives/{drive.id}/root:{path.rsplit('/', 1)[0]}"}}
        if item.folder:
            body["folder"] = {"childCount": sum(1 for i in drive.items.values() if i.parent == item.id)}
        else:
            body["file"] = {"mimeType": XLSX_MIME, "hashes": {"quickXorHash": quickxor_hash(item.content)}}
        return body


def _new_id() -> str:
    return "01BYE5RZ" + secrets.token_hex(13).upper()
