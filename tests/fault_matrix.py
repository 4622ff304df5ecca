"""The fault matrix: the whole flow (`run_pipeline`) against the fakes of all four services, one fault at a time.

One HTTPS fake server routes by path to fresh fakes of HubSpot, Salesforce, Tableau, Entra and
Graph per scenario. Every scenario starts from the same committed first run (state store,
local workbook, OneDrive workbook), then runs the second run with one fault and compares it
with a clean second run: the same workbook cell by cell (About left out), or the named outcome
(a stale fallback or a failure), with cursors and destination files before/after.

`python -m tests.fault_matrix [--out docs/reliability.md]` (`make faults`) prints the table
and writes it into the document, with the hostile-input table of tests/hostile_inputs.py after
it (`--hostile only|no`); tests/test_fault_matrix.py and tests/sources/test_bad_inputs.py assert every row.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import openpyxl
import yaml

from config.loader import load_config
from connectors.http.session import RetryPolicy
from connectors.state.db import make_engine
from connectors.state.source_state import get_cursor
from flows.pipeline import RunResult, run_pipeline
from tests.fakes import hubspot as hubspot_fake
from tests.fakes.entra import FakeEntra
from tests.fakes.graph import FakeGraph
from tests.fakes.salesforce import STAGE_MAP as SF_STAGE_MAP
from tests.fakes.salesforce import SalesforceFake
from tests.fakes.salesforce import seed as seed_salesforce
from tests.fakes.server import FakeServer, Request, Response
from tests.fakes.tableau import FakeTableau, Fault, opportunities_csv

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 27)
USER = "adele@contoso.com"
DRIVE = "b!ctJlwDRIVE0001"
REMOTE = "/Sales/Reports/Pipeline 2026-Q4.xlsx"
CHUNK = 327_680
OPP_VIEW = "9f1c2d3e-4b5a-4c6d-8e7f-001122334455"
TABLEAU_ROWS = 2400  # the workbook (~0.37 MB) takes two upload pieces
TABLEAU_SECRET = "pat-secret-1"
SOURCES = ("hubspot_main", "salesforce_main", "tableau_main")
CURSORED = ("hubspot_main", "salesforce_main")
ABOUT = "About"
log = logging.getLogger(__name__)

STAGES = [
    {"name": "Lead generation", "status": "open", "probability": 0.1, "max_days": 14},
    {"name": "Qualification", "status": "open", "probability": 0.2, "max_days": 21},
    {"name": "Contact", "status": "open", "probability": 0.4, "max_days": 21},
    {"name": "Proposal", "status": "open", "probability": 0.6, "max_days": 30},
    {"name": "Closing", "status": "open", "probability": 0.8, "max_days": 21},
    {"name": "Won", "status": "won", "probability": 1.0},
    {"name": "Lost", "status": "lost", "probability": 0.0},
]


# ----------------------------------------------------------------------------- faults on the wire


class Injector:
    """Wraps one service's fake: on the n-th matching request, a fault instead of (or around) the answer.

    Kinds: "429" (Retry-After: 3), "429-bare" (no Retry-After), "500", "502", "503", "drop"
    (connection closed, no answer), "truncate" (the real answer cut in half), "hang" (no answer
    for `hang_seconds`, then closed: the client's read timeout fires). `before[n]` runs first.
    """

    def __init__(self, app: Callable[[Request], Response], match: Callable[[Request], bool]):
        self.app, self.match = app, match
        self.faults: dict[int, str] = {}
        self.before: dict[int, Callable[[], None]] = {}
        self.count = 0
        self.injected: list[str] = []
        self.hang_seconds = 1.5
        self._lock = threading.Lock()

    def __call__(self, req: Request) -> Response:
        if not self.match(req):
            return self.app(req)
        with self._lock:
            self.count += 1
            n = self.count
            action, kind = self.before.pop(n, None), self.faults.pop(n, None)
        if action is not None:
            action()
        if kind is None:
            return self.app(req)
        self.injected.append(kind)
        if kind.startswith("429"):
            headers = {} if kind == "429-bare" else {"Retry-After": "3"}
            return Response(429, {"message": "Too many requests", "status": "error"}, headers=headers)
        if kind in ("500", "502", "503"):
            return Response(int(kind), {"message": f"injected {kind}", "status": "error"})
        if kind == "drop":
            return Response(drop=True)
        if kind == "hang":
            time.sleep(self.hang_seconds)
            return Response(drop=True)
        if kind == "truncate":
            resp = self.app(req)
            resp.truncate_at = max(1, len(resp.payload()[0]) // 2)
            return resp
        raise ValueError(f"unknown fault {kind!r}")


@dataclass
class Fakes:
    hub: hubspot_fake.FakeHubSpot
    sf: SalesforceFake
    tab: FakeTableau
    entra: FakeEntra
    graph: FakeGraph
    wire: dict[str, Injector]


class Router:
    """Routes a request to the current fake by path: /crm HubSpot, /services Salesforce, /api Tableau,
    /v1.0 and /up Graph, anything else the Entra authority."""

    def __init__(self) -> None:
        self.fakes: Fakes | None = None

    def __call__(self, req: Request) -> Response:
        w = self.fakes.wire
        if req.path.startswith("/crm/"):
            return w["hubspot"](req)
        if req.path.startswith("/services/"):
            return w["salesforce"](req)
        if req.path.startswith("/api/"):
            return w["tableau"](req)
        if req.path.startswith(("/v1.0/", "/up/")):
            return w["graph"](req)
        return self.fakes.entra(req)


# ----------------------------------------------------------------------------- the world


@dataclass
class Outcome:
    result: RunResult | None
    error: BaseException | None
    sleeps: list[float]
    log_text: str = ""


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def sha(data: bytes | None) -> str:
    return "none" if data is None else hashlib.sha256(data).hexdigest()[:8]


def sheet_values(data: bytes, skip: tuple[str, ...] = (ABOUT,)) -> dict[str, list[tuple]]:
    """Every sheet's cell values (openpyxl), About left out (run id and times differ by design)."""
    import io

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    try:
        return {ws.title: [tuple(r) for r in ws.iter_rows(values_only=True)] for ws in book.worksheets
                if ws.title not in skip}
    finally:
        book.close()


class World:
    """The server, the committed first run (the 'before' of every scenario) and the clean second runs."""

    def __init__(self, root: Path):
        self.root = root
        self.router = Router()
        self.server = FakeServer(self.router, root)
        self.snapshot = root / "first-run"
        self.drive_before: bytes | None = None
        self._baselines: dict[str, dict[str, list[tuple]]] = {}
        self._n = 0
        self.folder = self.snapshot  # the scenario's folder while it runs

    def __enter__(self) -> World:
        self.server.__enter__()
        self.fresh()
        self.snapshot.mkdir()
        self.write_config(self.snapshot)
        out = self.run(self.snapshot)
        if out.error is not None:
            raise RuntimeError(f"the first run failed: {out.error}") from out.error
        self.drive_before = self.drive_bytes()
        if len(self.drive_before or b"") <= CHUNK:
            raise RuntimeError("the workbook must take more than one upload piece for the upload scenarios")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    # -- fakes and config

    def fresh(self) -> Fakes:
        hub = hubspot_fake.FakeHubSpot(clock=lambda: 0.0)
        hubspot_fake.seed_demo(hub)
        sf = SalesforceFake()
        seed_salesforce(sf)
        sf.instance_url = sf.jwt_audience = self.server.url
        tab = FakeTableau()
        tab.add_view(OPP_VIEW, "Sales Pipeline", "Opportunities", opportunities_csv(TABLEAU_ROWS))
        entra = FakeEntra()
        graph = FakeGraph(entra.valid)
        graph.add_drive(DRIVE, user=USER, me=True)
        if self.drive_before is not None:
            graph.put_file(DRIVE, REMOTE, self.drive_before)
        wire = {"hubspot": Injector(hub, lambda r: r.path.endswith("/search") or "/objects/deals" in r.path),
                "salesforce": Injector(sf, lambda r: "/query" in r.path),
                "tableau": Injector(tab, lambda r: r.path.endswith("/data")),
                "graph": Injector(graph, lambda r: r.path.startswith("/up/"))}
        self.router.fakes = Fakes(hub, sf, tab, entra, graph, wire)
        return self.router.fakes

    @property
    def fakes(self) -> Fakes:
        return self.router.fakes

    def env(self) -> dict[str, str]:
        f = self.fakes
        return {"HUBSPOT_TOKEN": hubspot_fake.TOKEN, "SF_CLIENT_ID": f.sf.client_id,
                "SF_CLIENT_SECRET": f.sf.client_secret, "TABLEAU_SECRET": TABLEAU_SECRET,
                "GRAPH_SECRET": f.entra.client_secret}

    def secrets(self) -> list[str]:
        """Every configured secret and every token the fakes handed out (the values no output may hold)."""
        f = self.fakes
        values = [*self.env().values(), *f.sf.issued_tokens, *f.entra.ever_issued,
                  *(s.token for s in f.tab.sessions)]
        return sorted({v for v in values if v and v != self.fakes.sf.client_id})

    def config(self, **over: Any) -> dict:
        srv = self.server
        cfg: dict[str, Any] = {
            "report": "faults",
            "timezone": "UTC",
            "period": "quarter",
            "pipeline": {"stages": STAGES},
            "sources": [
                {"name": "hubspot_main", "type": "hubspot", "token": "${HUBSPOT_TOKEN}", "base_url": srv.url,
                 "ca_bundle": srv.ca_path, "stage_map": hubspot_fake.STAGE_MAP, "search_overlap_seconds": 0,
                 "timeout": 10},
                {"name": "salesforce_main", "type": "salesforce", "auth": "client_credentials", "domain": srv.url,
                 "client_id": "${SF_CLIENT_ID}", "client_secret": "${SF_CLIENT_SECRET}", "ca_bundle": srv.ca_path,
                 "stage_map": SF_STAGE_MAP, "product_field": "Family", "next_step_field": "Next_Step_Date__c",
                 "timeout": 10},
                {"name": "tableau_main", "type": "tableau", "server_url": srv.url, "site": "Samples",
                 "token_name": "etl-bot", "token_secret": "${TABLEAU_SECRET}", "view": "Sales Pipeline/Opportunities",
                 "ca_bundle": srv.ca_path, "timeout": 10,
                 "columns": {"Opportunity ID": "opportunity_id", "Opportunity Name": "name", "Stage": "stage",
                             "Amount": "amount", "Created Date": "created_date", "Close Date": "close_date",
                             "Region": "team"}},
            ],
            "destinations": [
                {"type": "onedrive", "tenant_id": FakeEntra.tenant, "client_id": FakeEntra.client_id,
                 "client_secret": "${GRAPH_SECRET}", "authority": srv.url, "graph_url": srv.url + "/v1.0",
                 "ca_bundle": srv.ca_path, "user": USER, "path": "/Sales/Reports/Pipeline {period}.xlsx",
                 "chunk_size": CHUNK, "timeout": 10},
                {"type": "file", "path": "out/pipeline-{as_of}.xlsx"},
            ],
        }
        for key, value in over.items():  # "sources.0.timeout": 0.5 style overrides
            parts = key.split(".")
            node = cfg
            for p in parts[:-1]:
                node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
            node[parts[-1]] = value
        return cfg

    def write_config(self, folder: Path, **over: Any) -> Path:
        path = folder / "pipeline.yaml"
        path.write_text(yaml.safe_dump(self.config(**over), sort_keys=False))
        return path

    # -- runs

    def policy(self, sleeps: list[float]) -> RetryPolicy:
        return RetryPolicy(sleep=lambda s: sleeps.append(round(s, 3)), jitter=False, backoff_base=0.01, max_attempts=4)

    def run(self, folder: Path, *, capture: bool = False) -> Outcome:
        path = folder / "pipeline.yaml"
        sleeps: list[float] = []
        rec = Recorder()
        root = logging.getLogger()
        old_level = root.level
        if capture:
            root.addHandler(rec)
            root.setLevel(logging.DEBUG)
        try:
            loaded = load_config(path, env=self.env())
            result = run_pipeline(path, AS_OF, loaded=loaded, retry_policy=self.policy(sleeps))
            return Outcome(result, None, sleeps, "\n".join(rec.lines))
        except Exception as exc:  # the matrix reports it
            return Outcome(None, exc, sleeps, "\n".join(rec.lines))
        finally:
            if capture:
                root.removeHandler(rec)
                root.setLevel(old_level)

    def restore(self, name: str) -> Path:
        """A copy of the committed first run (state store, local workbook) in a new folder; fresh fakes."""
        self._n += 1
        folder = self.root / f"{self._n:02d}-{name}"
        shutil.copytree(self.snapshot, folder, ignore=shutil.ignore_patterns("msal-token-cache.json"))
        self.fresh()
        return folder

    def baseline(self, key: str = "default", setup: Callable[[World], None] | None = None,
                 **over: Any) -> dict[str, list[tuple]]:
        """The workbook of a clean second run (cached per key)."""
        if key not in self._baselines:
            folder = self.restore(f"clean-{key}")
            self.write_config(folder, **over)
            if setup is not None:
                setup(self)
            out = self.run(folder)
            if out.error is not None:
                raise RuntimeError(f"clean run {key} failed: {out.error}") from out.error
            self._baselines[key] = sheet_values(self.local_bytes(folder))
        return self._baselines[key]

    # -- observations

    def local_bytes(self, folder: Path) -> bytes | None:
        p = folder / "out" / f"pipeline-{AS_OF.isoformat()}.xlsx"
        return p.read_bytes() if p.is_file() else None

    def drive_bytes(self) -> bytes | None:
        item = self.fakes.graph.file(DRIVE, REMOTE)
        return None if item is None else item.content

    @staticmethod
    def cursors(folder: Path) -> dict[str, str | None]:
        engine = make_engine("sqlite:///" + str(folder / ".state" / "pipeline-sync.db"))
        try:
            return {s: get_cursor(engine, s) for s in CURSORED}
        finally:
            engine.dispose()


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Expect:
    """`same`: the clean run's workbook; `stale`: published with `source` stale and its cursor kept;
    `fail`: `error` raised, every cursor kept, the destinations in `intact` untouched."""

    kind: str
    error: str = ""  # class name (and a message fragment after ':')
    source: str = ""
    intact: tuple[str, ...] = ("drive", "local")

    def text(self) -> str:
        if self.kind == "same":
            return "same workbook as a clean run"
        if self.kind == "stale":
            return f"published, {self.source} STALE from stored state ({self.error}), its cursor kept"
        return f"fails: {self.error}; cursors kept; {' + '.join(self.intact)} file intact"


@dataclass
class Scenario:
    id: str
    title: str
    expect: Expect
    inject: Callable[[World], None] = lambda w: None
    over: dict[str, Any] = field(default_factory=dict)
    baseline: str = "default"
    setup: Callable[[World], None] | None = None  # data changes also made before the baseline run
    special: str | None = None  # kill | disk-full | db-locked
    check: Callable[[World], str | None] | None = None  # a scenario's own extra check: a problem or None


@dataclass
class Row:
    scenario: Scenario
    observed: str
    cursor: str
    local: str
    drive: str
    ok: bool
    problems: list[str]
    log_text: str = ""
    error_text: str = ""
    workbook_text: str = ""
    sleeps: list[float] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)  # the wire faults really sent
    secrets: list[str] = field(default_factory=list)  # configured secrets and tokens handed out in this run
    error: BaseException | None = None


def _faults(service: str, faults: dict[int, str], hang: float | None = None) -> Callable[[World], None]:
    def inject(w: World) -> None:
        wire = w.fakes.wire[service]
        wire.faults.update(faults)
        if hang is not None:
            wire.hang_seconds = hang
    return inject


SERVICE_AT = {"hubspot": 1, "salesforce": 2, "tableau": 1, "graph": 2}  # which matching request gets the fault
TIMEOUT_KEY = {"hubspot": "sources.0.timeout", "salesforce": "sources.1.timeout", "tableau": "sources.2.timeout",
               "graph": "destinations.0.timeout"}
TRANSIENT = {
    "429-burst": ("429 burst with Retry-After: 3 (3 in a row)", {0: "429", 1: "429", 2: "429"}),
    "429-bare": ("429 without Retry-After", {0: "429-bare"}),
    "500": ("HTTP 500", {0: "500"}),
    "502": ("HTTP 502", {0: "502"}),
    "503": ("HTTP 503", {0: "503"}),
    "drop": ("connection dropped before any answer", {0: "drop"}),
    "truncate": ("connection dropped mid-body (half the body sent)", {0: "truncate"}),
    "timeout": ("read timeout (no answer for 1.5 s; timeout: 0.5)", {0: "hang"}),
}
# Every service's client meets each kind; the HTTP retry layer is shared, so the 5xx codes are spread.
PER_SERVICE = {
    "hubspot": ["429-burst", "429-bare", "500", "502", "503", "drop", "truncate", "timeout"],
    "salesforce": ["429-burst", "502", "drop", "truncate", "timeout"],
    "tableau": ["429-bare", "503", "drop", "truncate", "timeout"],
    "graph": ["429-burst", "500", "drop", "truncate", "timeout"],
}
WHAT = {"hubspot": "deals search (JSON)", "salesforce": "SOQL query page (JSON)", "tableau": "view data (CSV)",
        "graph": "upload piece 2"}


def _transient() -> list[Scenario]:
    out = []
    for service, kinds in PER_SERVICE.items():
        at = SERVICE_AT[service]
        for key in kinds:
            title, faults = TRANSIENT[key]
            over = {TIMEOUT_KEY[service]: 0.5} if key == "timeout" else {}
            out.append(Scenario(f"{service}-{key}", f"{service} {WHAT[service]}: {title}", Expect("same"),
                                _faults(service, {at + i: k for i, k in faults.items()}, 1.5), over))
    return out


def _hub_token_revoked(w: World) -> None:
    w.fakes.wire["hubspot"].before[2] = lambda: setattr(w.fakes.hub, "token", "pat-na1-rotated")


def _sf_expire(w: World) -> None:
    w.fakes.sf.faults[2] = "expire"


def _tableau_expire(w: World) -> None:
    w.fakes.tab.faults.append(Fault("data", "expire"))


def _graph_expire(w: World) -> None:
    w.fakes.wire["graph"].before[2] = w.fakes.entra.revoke


def _hub_daily(w: World) -> None:
    w.fakes.hub.faults = {2: "429-daily"}  # HubSpot's own 429 envelope, policy DAILY


def _tableau_long_wait(w: World) -> None:
    w.fakes.tab.faults.append(Fault("views", "429", "Too many requests. Please retry after 29 minutes."))


def _sf_limit(w: World) -> None:
    w.fakes.sf.api_used = w.fakes.sf.api_max


def _hub_changes(w: World) -> None:
    """Six deals changed since the first run, in separate milliseconds (the search must page them)."""
    from datetime import UTC, datetime, timedelta

    base = datetime.now(UTC) - timedelta(seconds=3)
    for i, deal in enumerate(("101", "102", "103", "104", "105")):
        w.fakes.hub.update(deal, base + timedelta(milliseconds=10 * i), amount=str(1000 * (i + 1)))
    w.fakes.hub.add_deal("106", base + timedelta(milliseconds=60), dealname="New one", amount="100")


def _search_cap(w: World) -> None:
    _hub_changes(w)
    w.fakes.hub.search_cap = 2
    w.fakes.hub.max_page = 1


def _lock(times: int) -> Callable[[World], None]:
    return lambda w: w.fakes.graph.lock(REMOTE, times)


def _commit_conflict(w: World) -> None:
    w.fakes.graph.commit_conflict = 1


def _edit_mid_upload(w: World) -> None:
    """The tool's record of its last write matches the drive (as after its own publish); then another
    user saves the file while piece 2 of the upload arrives."""
    import sqlalchemy as sa

    from connectors.destinations.onedrive.upload import published

    item = w.fakes.graph.file(DRIVE, REMOTE)
    engine = make_engine("sqlite:///" + str(w.folder / ".state" / "pipeline-sync.db"))
    with engine.begin() as conn:
        assert conn.execute(sa.update(published).values(item_id=item.id, etag=item.etag, ctag=item.ctag)).rowcount == 1
    engine.dispose()

    def on_chunk(n: int) -> None:
        if n == 2:
            w.fakes.graph.edit(DRIVE, REMOTE, THEIR_EDITS)
    w.fakes.graph.on_chunk = on_chunk


THEIR_EDITS = b"their edits"


def _their_edits_kept(w: World) -> str | None:
    uploaded = w.fakes.graph.chunk_puts
    if w.drive_bytes() != THEIR_EDITS:
        return "the other user's file was not kept"
    return None if uploaded >= 2 else f"the upload never reached piece 2 ({uploaded} pieces)"


def _chunk_lost(w: World) -> None:
    w.fakes.graph.drop_chunk(2, keep=100_000)


def _chunk_503(w: World) -> None:
    w.fakes.graph.chunk_failures[2] = (503, "5")


def scenarios() -> list[Scenario]:
    return [
        *_transient(),
        Scenario("hubspot-401", "hubspot: token revoked mid-run (401: private-app tokens cannot be renewed)",
                 Expect("stale", "FatalAPIError: 401", "hubspot_main"), _hub_token_revoked),
        Scenario("salesforce-session", "salesforce: session expires mid-run (401 INVALID_SESSION_ID -> new token)",
                 Expect("same"), _sf_expire),
        Scenario("tableau-401002", "tableau: session expires mid-run (401002 -> sign in again)",
                 Expect("same"), _tableau_expire),
        Scenario("graph-401", "graph: access token revoked mid-upload (401 -> new token from Entra)",
                 Expect("same"), _graph_expire),
        Scenario("hubspot-search-cap", "hubspot: search result cap (2) below the changed deals (6)",
                 Expect("same"), _search_cap, baseline="hub-changes", setup=_hub_changes),
        Scenario("salesforce-limit", "salesforce: REQUEST_LIMIT_EXCEEDED (daily API limit used up)",
                 Expect("stale", "FatalAPIError: REQUEST_LIMIT_EXCEEDED", "salesforce_main"), _sf_limit),
        Scenario("hubspot-daily", "hubspot: daily API limit used up (429, policy DAILY: not retried)",
                 Expect("stale", "FatalAPIError: daily API limit", "hubspot_main"), _hub_daily),
        Scenario("tableau-long-wait", "tableau: rate limited for 29 minutes (429000: no source state to fall back on)",
                 Expect("fail", "RetriableAPIError: run again after 29 minutes"), _tableau_long_wait),
        Scenario("graph-423-wait", "graph: file locked (423) twice, on_locked: wait", Expect("same"), _lock(2)),
        Scenario("graph-423-fail", "graph: file locked (423), on_locked: fail",
                 Expect("fail", "DestinationError: is locked", intact=("drive", "local")), _lock(-1),
                 {"destinations.0.on_locked": "fail"}),
        Scenario("graph-409", "graph: 409 nameAlreadyExists at the commit of the upload session",
                 Expect("same"), _commit_conflict),
        Scenario("graph-412", "graph: someone saves the file mid-upload, conflict: fail_if_changed (412); their version stays",
                 Expect("fail", "DestinationError: changed by someone else", intact=("local",)), _edit_mid_upload,
                 {"destinations.0.conflict": "fail_if_changed"}, check=_their_edits_kept),
        Scenario("graph-chunk-lost", "graph: an upload piece lost (connection dropped after 100 kB of it)",
                 Expect("same"), _chunk_lost),
        Scenario("graph-chunk-503", "graph: an upload piece answered 503 + Retry-After", Expect("same"), _chunk_503),
        Scenario("graph-killed", "process killed (SIGKILL) after upload piece 1 of 2, then run again",
                 Expect("same"), special="kill"),
        Scenario("local-disk-full", "disk full while writing the local workbook (tmpfs)",
                 Expect("fail", "DestinationError: No space left", intact=("local",)), special="disk-full"),
        Scenario("state-db-busy", "state database locked by another process for 1 s (then released)",
                 Expect("same"), special="db-busy"),
        Scenario("state-db-locked", "state database locked by another process for the whole run",
                 Expect("fail", "OperationalError: database is locked"), special="db-locked"),
    ]


# ----------------------------------------------------------------------------- running a scenario


def _short(cursor: str | None) -> str:
    return "none" if cursor is None else cursor.split("|")[0][:19]


def _error_name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_scenario(world: World, sc: Scenario) -> Row:
    over = dict(sc.over)
    expected_values = world.baseline(sc.baseline, sc.setup, **{k: v for k, v in over.items()
                                                                if k.startswith("sources.")
                                                                and not k.endswith("timeout")})
    folder = world.restore(sc.id)
    if sc.special == "db-locked":
        over["state.url"] = "sqlite:///" + str(folder / ".state" / "pipeline-sync.db") + "?timeout=1"
    world.write_config(folder, **over)
    world.folder = folder
    if sc.setup is not None:
        sc.setup(world)
    before = World.cursors(folder)
    local_before, drive_before = world.local_bytes(folder), world.drive_bytes()
    notes: list[str] = []
    prefix = ""
    if sc.special == "kill":
        out, notes = _killed_then_rerun(world, folder, drive_before)
        prefix = ("killed run: OneDrive and local file unchanged, cursors kept" if not notes else "killed run: " +
                  "; ".join(notes)) + "; rerun: "
    elif sc.special == "disk-full":
        out = _disk_full(world, folder)
    elif sc.special in ("db-busy", "db-locked"):
        out = _db_locked(world, folder, 1.0 if sc.special == "db-busy" else None)
    else:
        sc.inject(world)
        out = world.run(folder, capture=True)
    after = World.cursors(folder)
    local_after, drive_after = world.local_bytes(folder), world.drive_bytes()
    if sc.special == "disk-full":
        local_after = world.local_bytes(folder)
        _unmount(folder / "out")
    problems = list(notes)
    if sc.check is not None and (problem := sc.check(world)) is not None:
        problems.append(problem)
    workbook_text = ""
    if out.error is not None:
        observed = f"failed: {_error_name(out.error)[:160]}"
    else:
        observed = ""
        stale = [s.name for s in out.result.sources if s.stale]
        every = sheet_values(local_after or b"", skip=())
        values = {k: v for k, v in every.items() if k != ABOUT}
        workbook_text = "\n".join(str(v) for rows in every.values() for r in rows for v in r if v is not None)
        same = values == expected_values
        observed += "published; " + ("same workbook as a clean run" if same else
                                    "workbook DIFFERS in " + ", ".join(
                                        k for k in sorted(set(values) | set(expected_values))
                                        if values.get(k) != expected_values.get(k)))
        if stale:
            errors = "; ".join(f"{s.name}: {(s.error or '')[:90]}" for s in out.result.sources if s.stale)
            observed += f"; STALE {errors}"
        if drive_after != world.drive_bytes():
            problems.append("drive changed after the run?")
    observed = prefix + observed
    retries = len(out.sleeps)
    if retries:
        observed += f" [{retries} waits, {sum(out.sleeps):.2f}s not slept]"
    e = sc.expect
    if e.kind == "same":
        if out.error is not None:
            problems.append(f"expected success, got {_error_name(out.error)}")
        else:
            if "published; same workbook as a clean run" not in observed:
                problems.append("workbook differs from the clean run")
            if any(s.stale for s in out.result.sources):
                problems.append("a source is stale")
            if any(after[s] == before[s] for s in CURSORED):
                problems.append("a cursor did not advance")
            if local_after == local_before or drive_after == drive_before:
                problems.append("a destination was not rewritten")
            if drive_after != local_after and sheet_values(drive_after or b"") != expected_values:
                problems.append("the OneDrive workbook differs from the clean run")
    elif e.kind == "stale":
        if out.error is not None:
            problems.append(f"expected a stale fallback, got {_error_name(out.error)}")
        else:
            report = next(s for s in out.result.sources if s.name == e.source)
            cls, _, frag = e.error.partition(": ")
            if not report.stale or frag not in (report.error or ""):
                problems.append(f"{e.source} not stale with {frag!r}: {report.error!r}")
            if after[e.source] != before[e.source]:
                problems.append(f"{e.source} cursor moved")
            if any(after[s] == before[s] for s in CURSORED if s != e.source):
                problems.append("another source's cursor did not advance")
    else:
        cls, _, frag = e.error.partition(": ")
        if out.error is None or type(out.error).__name__ != cls or frag not in str(out.error):
            problems.append(f"expected {e.error}, got {observed}")
        if after != before:
            problems.append("a cursor moved")
        if "local" in e.intact and local_after != local_before:
            problems.append("local file changed")
        if "drive" in e.intact and drive_after != drive_before:
            problems.append("OneDrive file changed")
    cursor = "; ".join(f"{s.split('_')[0]} {_short(before[s])} -> "
                       f"{'kept' if after[s] == before[s] else _short(after[s])}" for s in CURSORED)
    return Row(sc, observed, cursor, f"{sha(local_before)} -> {sha(local_after)}",
               f"{sha(drive_before)} -> {sha(drive_after)}", not problems, problems, out.log_text,
               "" if out.error is None else str(out.error), workbook_text, out.sleeps,
               [k for wire in world.fakes.wire.values() for k in wire.injected], world.secrets(), out.error)


def _killed_then_rerun(world: World, folder: Path, drive_before: bytes | None) -> tuple[Outcome, list[str]]:
    """A child process runs the flow and is SIGKILLed when the 2nd upload piece arrives; then a rerun here."""
    pid: list[int] = []
    killed = threading.Event()

    def on_chunk(n: int) -> None:
        if n == 1 and pid:  # piece 1 is taken, piece 2 never comes
            os.kill(pid[0], signal.SIGKILL)
            killed.set()
    world.fakes.graph.on_chunk = on_chunk
    env = {**os.environ, **world.env(), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "tests.fault_matrix", "--child", str(folder)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid.append(child.pid)
    _, err = child.communicate(timeout=120)
    notes = []
    if child.returncode != -signal.SIGKILL or not killed.is_set():
        notes.append(f"child was not killed mid-upload (rc {child.returncode}): {err.decode()[-300:]}")
    if world.drive_bytes() != drive_before:
        notes.append("the OneDrive file changed although the upload never committed")
    if world.local_bytes(folder) != world.local_bytes(world.snapshot):
        notes.append("the local file changed although the run died before it")
    if World.cursors(folder) != World.cursors(world.snapshot):
        notes.append("a cursor moved in the killed run")
    world.fakes.graph.on_chunk = None
    return world.run(folder, capture=True), notes


def _child(folder: Path) -> None:
    """The killed run's process: the same flow, secrets from the environment."""
    path = folder / "pipeline.yaml"
    loaded = load_config(path)
    run_pipeline(path, AS_OF, loaded=loaded, retry_policy=RetryPolicy(sleep=lambda s: None, backoff_base=0.01))


def _unmount(mount: Path) -> None:
    subprocess.run(["umount", str(mount)], check=False, capture_output=True)


def _disk_full(world: World, folder: Path) -> Outcome:
    """The local folder on a tmpfs that holds the old workbook but not a second copy."""
    out_dir = folder / "out"
    old = world.local_bytes(folder)
    size = len(old) + 64 * 1024
    saved = folder / "previous.xlsx"
    shutil.move(out_dir / f"pipeline-{AS_OF.isoformat()}.xlsx", saved)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        shutil.move(saved, out_dir / f"pipeline-{AS_OF.isoformat()}.xlsx")
        raise PermissionError(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    shutil.copyfile(saved, out_dir / f"pipeline-{AS_OF.isoformat()}.xlsx")
    out = world.run(folder, capture=True)
    leftovers = [p.name for p in out_dir.iterdir() if p.name.endswith(".tmp")]
    if leftovers:
        out.log_text += f"\nLEFTOVER TEMP FILES {leftovers}"
    return out


HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


def _db_locked(world: World, folder: Path, hold: float | None) -> Outcome:
    """Another process holds an exclusive SQLite lock on the state store (for `hold` s, or the whole run)."""
    db = folder / ".state" / "pipeline-sync.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(hold or 600)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        return world.run(folder, capture=True)
    finally:
        holder.kill() if hold is None else holder.wait(timeout=30)
        holder.wait(timeout=30)
        with sqlite3.connect(db) as con:  # the store is whole afterwards
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ----------------------------------------------------------------------------- the table


def markdown(rows: list[Row], seconds: float) -> str:
    head = ("| # | scenario | expected | observed | cursors before -> after | local file before -> after "
            "| OneDrive file before -> after | pass |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), r.scenario.title, r.scenario.expect.text(), r.observed, r.cursor, r.local, r.drive,
                 "PASS" if r.ok else "FAIL: " + "; ".join(r.problems)]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    passed = sum(r.ok for r in rows)
    return (f"{passed}/{len(rows)} scenarios pass ({seconds:.0f} s). Hashes are the first 8 hex digits of "
            "the file's SHA-256; cursors are the HubSpot and Salesforce ones (Tableau keeps none).\n\n"
            + head + "\n".join(lines) + "\n")


BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"


HOSTILE_BEGIN, HOSTILE_END = "<!-- hostile-inputs:begin -->", "<!-- hostile-inputs:end -->"


def write_doc(doc: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    text = doc.read_text() if doc.is_file() else ""
    block = f"{begin}\n{table}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    doc.write_text(text)


def skipped_row(sc: Scenario, why: str) -> Row:
    return Row(sc, f"SKIPPED: {why}", "", "", "", False, [f"skipped: {why}"])


def run_matrix(root: Path, only: list[str] | None = None) -> list[Row]:
    rows = []
    with World(root) as world:
        for sc in scenarios():
            if only and sc.id not in only:
                continue
            try:
                rows.append(run_scenario(world, sc))
            except PermissionError as exc:  # no tmpfs without root
                rows.append(skipped_row(sc, str(exc)))
    return rows


_shared: dict[str, Any] = {}


def shared_row(scenario_id: str) -> Row:
    """One scenario's row, run once per process on one shared world (the test modules share the runs)."""
    rows = _shared.setdefault("rows", {})
    if scenario_id not in rows:
        if "world" not in _shared:
            tmp = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
            _shared["world"] = World(tmp).__enter__()
            atexit.register(_close_shared, tmp)
        sc = next(s for s in scenarios() if s.id == scenario_id)
        rows[scenario_id] = run_scenario(_shared["world"], sc)
    return rows[scenario_id]


def _close_shared(tmp: Path) -> None:
    _shared["world"].__exit__(None, None, None)
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the table into this markdown file (between markers)")
    p.add_argument("--only", action="append", help="run only this scenario id (repeatable)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--hostile", choices=["also", "only", "no"], default="also",
                   help="the hostile-input scenarios of tests/hostile_inputs.py too (default), only them, or not")
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    ok = True
    if args.hostile != "no":
        from tests import hostile_inputs

        started = time.perf_counter()
        hostile_rows = hostile_inputs.run_all(args.only)
        hostile_table = hostile_inputs.markdown(hostile_rows, time.perf_counter() - started)
        print(hostile_table)
        if args.out and not args.only:
            write_doc(args.out, hostile_table, HOSTILE_BEGIN, HOSTILE_END)
        ok = all(r.ok for r in hostile_rows)
        if args.hostile == "only":
            return 0 if ok else 1
    logging.basicConfig(level=logging.CRITICAL)
    for handler in logging.getLogger().handlers:  # the matrix captures DEBUG itself; keep the terminal quiet
        handler.setLevel(logging.CRITICAL)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as tmp:
        rows = run_matrix(Path(tmp), args.only)
        table = markdown(rows, time.perf_counter() - started).replace(tmp, "<tmp>")
    print(table)
    if args.out:
        write_doc(args.out, table)
    return 0 if ok and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
