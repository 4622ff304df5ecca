"""HubSpot deals source (CRM API v3): pipelines, owners, deals, incremental search, rate limits.

`extract(cfg, ctx)` returns the FULL current set of deals. The first run (or `full_refresh`,
or a changed property set) lists every deal; later runs search only deals modified since the
stored cursor, up to the run's signpost (`ctx.run_started`), and merge them into the stored
state. The new cursor and record changes travel in `Extracted.pending_state`; the flow
commits them only when the whole run succeeds.

Stage text: a deal's `stage` is its HubSpot stage label, or, when the source's `stage_map`
has that key, the qualified "Pipeline label / Stage label" or the stage id (for pipelines
whose labels repeat). `_pipeline` names the deal's pipeline for reject reasons.

Memory: deals are held as columns (connectors/sources/hubspot/rows.py: the deal table, the resolver,
the frames and the lazily built stored payloads); an incremental run reads the stored deals a
chunk at a time. A full pull of 1M deals peaks at ~1.2 GB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import requests
import sqlalchemy as sa

from config.models import HubSpotSourceConfig
from connectors.errors import FatalAPIError
from connectors.extracted import ExtractContext, Extracted, PendingState
from connectors.http.paging import paginate
from connectors.http.session import (
    HttpClient,
    Observer,
    RetryPolicy,
    build_session,
    default_error_message,
)
from connectors.sources.hubspot import history as hubspot_history
from connectors.sources.hubspot.rows import (
    HISTORY_KEY,
    LINE_ITEM_PRODUCT,
    RAW_KEY,
    DealTable,
    Resolver,
    Stage,
    StoredPayloads,
    field_properties,
    frames,
    table_frames,
)
from connectors.state.field_history import entries_frame, load_entries
from connectors.state.source_state import (
    SourceVersion,
    gc_paused,
    get_cursor,
    get_version,
    iter_records,
    load_some,
    new_version,
    payload_text,
    stored_ids,
)

log = logging.getLogger(__name__)

SEARCH_CAP = 10_000  # results one search query can page through (HubSpot answers 400 beyond)
LINE_ITEM_BATCH = 100
OWNER_PAGE = 500
CORE_PROPERTIES = ("dealstage", "pipeline", "hubspot_owner_id", "createdate", "hs_lastmodifieddate")
HINTS = {
    401: " (check the source's `token`: a HubSpot private-app access token, e.g. ${HUBSPOT_TOKEN})",
    403: " (give the private app the scopes crm.objects.deals.read and crm.objects.owners.read, "
         "plus crm.objects.line_items.read for product_from_line_items)",
}
STATE_FORMAT = "v1"  # of the stored payloads; part of the cursor's fingerprint


# ----------------------------------------------------------------------------- pipelines


def stage_text(pipeline_label: str, stage_id: str, label: str, stage_map: dict[str, str]) -> str:
    """The key `stage_map` knows this stage by: 'Pipeline / Label', the id, else the label."""
    keys = {k.strip().lower() for k in stage_map}
    for candidate in (f"{pipeline_label} / {label}", stage_id):
        if candidate.lower() in keys:
            return candidate
    return label


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def parse_pipelines(body: dict, stage_map: dict[str, str]) -> tuple[dict[str, str], dict[str, Stage]]:
    """(pipeline id -> label, stage id -> Stage) from GET /crm/v3/pipelines/deals."""
    pipelines: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    for p in body.get("results") or []:
        pid, plabel = str(p["id"]), str(p.get("label") or p["id"])
        pipelines[pid] = plabel
        for s in p.get("stages") or []:
            meta = s.get("metadata") or {}
            sid, label = str(s["id"]), str(s.get("label") or s["id"])
            stages[sid] = Stage(
                id=sid, label=label, pipeline_id=pid, pipeline_label=plabel,
                order=int(s.get("displayOrder") or 0), probability=_float(meta.get("probability")),
                closed=str(meta.get("isClosed", "false")).lower() == "true",
                text=stage_text(plabel, sid, label, stage_map),
            )
    return pipelines, stages


def select_pipelines(cfg: HubSpotSourceConfig, pipelines: dict[str, str]) -> set[str]:
    """Pipeline ids the `pipelines:` filter (ids or labels, any case) selects; all when unset."""
    if not cfg.pipelines:
        return set(pipelines)
    by_key = {k.lower(): k for k in pipelines} | {v.lower(): k for k, v in pipelines.items()}
    unknown = [p for p in cfg.pipelines if p.strip().lower() not in by_key]
    if unknown:
        have = ", ".join(f"{k} ({v})" for k, v in pipelines.items()) or "none"
        raise FatalAPIError(
            f"source '{cfg.name}': pipelines: {', '.join(repr(u) for u in unknown)} is neither the id nor "
            f"the label of a HubSpot deal pipeline; the account has: {have}"
        )
    return {by_key[p.strip().lower()] for p in cfg.pipelines}


# ----------------------------------------------------------------------------- rate limits


class RateLimiter:
    """Paces requests by the X-HubSpot-RateLimit-* headers and turns the daily limit into a fatal error.

    Installed as a requests response hook, so it sees every answer, retries included.
    """

    def __init__(self, source: str, observer: Observer, sleep: Callable[[float], None],
                 clock: Callable[[], float], reserve: int, search_per_second: float):
        self.source, self.observer, self.sleep, self.clock = source, observer, sleep, clock
        self.reserve = reserve
        self.search_gap = 1.0 / search_per_second
        self.interval = 10.0
        self.remaining: int | None = None
        self.window_start: float | None = None
        self.last_search: float | None = None
        self.pause_due: float | None = None

    def on_response(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if resp.status_code == 429:
            self._check_daily(resp)
        h = resp.headers
        if h.get("X-HubSpot-RateLimit-Interval-Milliseconds"):
            self.interval = (_float(h["X-HubSpot-RateLimit-Interval-Milliseconds"]) or 10_000.0) / 1000.0
        remaining = _float(h.get("X-HubSpot-RateLimit-Remaining"))
        if remaining is None:
            return
        now = self.clock()
        if self.remaining is None or remaining > self.remaining:
            self.window_start = now  # a fresh window began about now
        self.remaining = int(remaining)
        if resp.status_code < 400 and self.remaining <= self.reserve:
            self.pause_due = self.rest_of_window()  # taken before the next call, not mid-response

    def _check_daily(self, resp: requests.Response) -> None:
        try:
            body = resp.json()
        except ValueError:
            return
        if isinstance(body, dict) and str(body.get("policyName", "")).upper() == "DAILY":
            limit = resp.headers.get("X-HubSpot-RateLimit-Daily")
            raise FatalAPIError(
                f"HubSpot: the account's daily API limit{f' of {limit} calls' if limit else ''} is used up "
                "(429, policy DAILY). It resets at midnight in the HubSpot account's time zone; run again "
                "after that, or raise the limit with HubSpot's API add-on. Nothing was saved."
            )

    def rest_of_window(self) -> float:
        if self.window_start is None:
            return self.interval
        return max(0.0, self.interval - (self.clock() - self.window_start))

    def wait_hint(self, resp: requests.Response) -> float | None:
        """For HttpClient: a 429 without Retry-After waits out the rest of the window (at least 1 s)."""
        if resp.status_code != 429:
            return None
        return max(1.0, self.rest_of_window())

    def before_request(self) -> None:
        """Wait out the window when the last answer said few calls remain in it."""
        if self.pause_due is not None:
            wait, left = self.pause_due, self.remaining
            self.pause_due = self.remaining = self.window_start = None
            self._wait(wait, f"{left} calls left in the rate-limit window")

    def before_search(self) -> None:
        """Search has its own limit (about 5 per second) and sends no headers: keep a gap."""
        self.before_request()
        now = self.clock()
        if self.last_search is not None and now - self.last_search < self.search_gap:
            self.sleep(self.search_gap - (now - self.last_search))
        self.last_search = self.clock()

    def _wait(self, seconds: float, reason: str) -> None:
        if seconds <= 0:
            return
        self.observer.waited_seconds += seconds
        self.observer.event("wait", source=self.source, reason=reason, wait=seconds)
        log.info("hubspot %s: pausing %.1fs (%s)", self.source, seconds, reason)
        self.sleep(seconds)


# ----------------------------------------------------------------------------- API calls


@dataclass
class HubSpotApi:
    """The HubSpot calls this source makes, over one HttpClient."""

    client: HttpClient
    limiter: RateLimiter

    def get(self, path: str, **params: Any) -> dict:
        self.limiter.before_request()
        return self.client.get_json(path, params=params or None)

    def post(self, path: str, body: dict) -> dict:
        self.limiter.before_request()
        return self.client.post_json(path, body)

    def pipelines(self) -> dict:
        return self.get("/crm/v3/pipelines/deals")

    def owners(self, archived: bool) -> Iterable[list[dict]]:
        def page(after: Any) -> tuple[list[dict], Any]:
            params = {"limit": OWNER_PAGE, "archived": str(archived).lower()}
            if after:
                params["after"] = after
            body = self.get("/crm/v3/owners", **params)
            return body.get("results") or [], _next_after(body)

        return paginate(page)

    def deals(self, properties: list[str], limit: int, archived: bool = False,
              line_items: bool = False) -> Iterable[list[dict]]:
        def page(after: Any) -> tuple[list[dict], Any]:
            params: dict[str, Any] = {"limit": limit, "archived": str(archived).lower(),
                                      "properties": ",".join(properties)}
            if line_items:
                params["associations"] = "line_items"
            if after:
                params["after"] = after
            body = self.get("/crm/v3/objects/deals", **params)
            return body.get("results") or [], _next_after(body)

        return paginate(page)

    def search(self, body: dict) -> dict:
        self.limiter.before_search()
        return self.client.post_json("/crm/v3/objects/deals/search", body)

    def deal_line_item_ids(self, deal_id: str) -> list[str]:
        ids: list[str] = []

        def page(after: Any) -> tuple[list[dict], Any]:
            params = {"limit": 500, **({"after": after} if after else {})}
            body = self.get(f"/crm/v4/objects/deals/{deal_id}/associations/line_items", **params)
            return body.get("results") or [], _next_after(body)

        for results in paginate(page):
            ids += [str(r["toObjectId"]) for r in results]
        return ids

    def line_items(self, ids: list[str]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(ids), LINE_ITEM_BATCH):
            body = {"properties": ["name", "amount", "hs_product_id"],
                    "inputs": [{"id": x} for x in ids[i:i + LINE_ITEM_BATCH]]}
            out += self.post("/crm/v3/objects/line_items/batch/read", body).get("results") or []
        return out


def _next_after(body: dict) -> str | None:
    return ((body.get("paging") or {}).get("next") or {}).get("after")


def make_api(cfg: HubSpotSourceConfig, observer: Observer, *, session: requests.Session | None = None,
             policy: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> HubSpotApi:
    """One HubSpot client: Bearer token on the session, rate-limit hook, the shared retry policy."""
    policy = policy or RetryPolicy()
    session = session or build_session(cfg.ca_bundle, cfg.verify_tls)
    session.headers["Authorization"] = f"Bearer {cfg.token}"
    limiter = RateLimiter(cfg.name, observer, policy.sleep, clock, cfg.rate_limit_reserve, cfg.search_per_second)
    session.hooks["response"].append(limiter.on_response)
    token = cfg.token

    def message(resp: requests.Response) -> str:
        text = default_error_message(resp).replace(token, "***")
        return text + HINTS.get(resp.status_code, "")

    client = HttpClient(session=session, base_url=cfg.base_url, timeout=cfg.timeout, policy=policy,
                        observer=observer, error_message=message, service="HubSpot",
                        wait_hint=limiter.wait_hint)
    return HubSpotApi(client, limiter)


# ----------------------------------------------------------------------------- properties, cursor


def base_properties(cfg: HubSpotSourceConfig) -> list[str]:
    props = list(CORE_PROPERTIES) + list(field_properties(cfg).values())
    if cfg.product_property:
        props.append(cfg.product_property)
    return list(dict.fromkeys(props))


def fingerprint(cfg: HubSpotSourceConfig) -> str:
    """Changes when the stored deals would lack something this config reads."""
    key = "|".join(base_properties(cfg)) + f"|li={cfg.product_from_line_items}|{cfg.stage_entered_prefix}|{STATE_FORMAT}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def format_cursor(when: datetime, fp: str) -> str:
    return f"{when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z;{fp}"


def parse_cursor(cursor: str | None) -> tuple[datetime | None, str | None]:
    if not cursor:
        return None, None
    when, _, fp = cursor.partition(";")
    try:
        return datetime.fromisoformat(when.replace("Z", "+00:00")), fp or None
    except ValueError:
        return None, None


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _parse_ts(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return _ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return int(value) if value.isdigit() else None


# ----------------------------------------------------------------------------- reading deals


@dataclass
class _Progress:
    observer: Observer
    source: str
    records: int = 0
    pages: int = 0

    def page(self, n: int, total: int | None = None) -> None:
        self.records = total if total is not None else self.records + n
        self.pages += 1
        self.observer.event("page", source=self.source, records=self.records, pages=self.pages)


def _payload(deal: dict) -> dict:
    return {"id": str(deal["id"]), "properties": dict(deal.get("properties") or {})}


def list_all(api: HubSpotApi, cfg: HubSpotSourceConfig, props: list[str], progress: _Progress,
             selected: set[str]) -> tuple[DealTable, int]:
    """Every active deal of the `selected` pipelines (GET list) as a DealTable, and how many deals
    were listed in all. Products come from line items: each kept deal's largest line item."""
    table = DealTable()
    line_items: dict[str, list[str]] = {}
    listed = 0
    with gc_paused():  # page dicts are acyclic garbage; the table holds few containers
        for results in api.deals(props, cfg.page_size, line_items=cfg.product_from_line_items):
            listed += len(results)
            page: list[tuple[str, dict]] = []
            for d in results:
                deal_id, p = str(d["id"]), d.get("properties") or {}
                if (p.get("pipeline") or "") not in selected:
                    table.remove(deal_id)  # a deal listed again after it moved out of the selection
                    continue
                page.append((deal_id, p))
                if cfg.product_from_line_items:
                    assoc = d.get("associations") or {}
                    li = assoc.get("line items") or assoc.get("line_items") or {}
                    line_items[deal_id] = [str(r["id"]) for r in li.get("results") or []]
            table.add(page)
            progress.page(len(results))
    if cfg.product_from_line_items:
        deals = {k: {"_line_item_ids": line_items[k]} for k in table.live_ids()}
        add_line_item_products(api, deals)
        table.set_line_item_products({k: d[LINE_ITEM_PRODUCT] for k, d in deals.items()})
    return table.finish(), listed


def _search_body(props: list[str], limit: int, filters: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "filterGroups": [{"filters": [{"propertyName": "hs_lastmodifieddate", "operator": op, "value": str(v)}
                                      for op, v in filters]}],
        "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
        "properties": props,
        "limit": limit,
    }


def search_changed(api: HubSpotApi, cfg: HubSpotSourceConfig, props: list[str], since: datetime,
                   signpost: datetime, progress: _Progress) -> dict[str, dict]:
    """Deals with since <= hs_lastmodifieddate < signpost, deduplicated by id (last version wins).

    Keyset paging, sliced by time: every page is a fresh query from the last modification time
    seen (GTE; records sharing that time come again and are deduplicated). No query pages
    deep, so the 10,000-result cap is never reached, and a deal modified while we page (it
    leaves the window) cannot shift later deals past us as offset paging would. A full page
    that all shares one millisecond is read by offset within that millisecond.
    """
    found: dict[str, dict] = {}
    lo, hi = _ms(since), _ms(signpost)
    limit = cfg.search_page_size

    def take(results: list[dict]) -> None:
        for d in results:
            found[str(d["id"])] = _payload(d)
        progress.page(len(results), total=len(found))

    while lo < hi:
        resp = api.search(_search_body(props, limit, [("GTE", lo), ("LT", hi)]))
        results = resp.get("results") or []
        take(results)
        if not results or not _next_after(resp):
            break
        last = _parse_ts((results[-1].get("properties") or {}).get("hs_lastmodifieddate"))
        if last is None:
            raise FatalAPIError("HubSpot search returned a deal without hs_lastmodifieddate; run with --full-refresh")
        if last > lo:
            lo = last
            continue
        same = _search_body(props, limit, [("EQ", lo)])
        fetched = 0

        def page(after: Any, body: dict = same) -> tuple[list[dict], Any]:
            r = api.search({**body, **({"after": after} if after else {})})
            return r.get("results") or [], _next_after(r)

        for results in paginate(page):
            take(results)
            fetched += len(results)
            if fetched + limit > SEARCH_CAP:
                raise FatalAPIError(
                    f"HubSpot search: more than {SEARCH_CAP} deals share hs_lastmodifieddate "
                    f"{datetime.fromtimestamp(lo / 1000, UTC).isoformat()}; run with --full-refresh"
                )
        lo += 1
    return found


def archived_ids(api: HubSpotApi, cfg: HubSpotSourceConfig) -> set[str]:
    out: set[str] = set()
    for results in api.deals(["hs_object_id"], cfg.page_size, archived=True):
        out |= {str(d["id"]) for d in results}
    return out


def add_line_item_products(api: HubSpotApi, deals: dict[str, dict]) -> None:
    """Set LINE_ITEM_PRODUCT on each deal: the name of its largest line item (by amount)."""
    if not deals:
        return
    for deal_id, p in deals.items():
        if "_line_item_ids" not in p:
            p["_line_item_ids"] = api.deal_line_item_ids(deal_id)
    wanted = sorted({i for p in deals.values() for i in p["_line_item_ids"]})
    items = {str(li["id"]): li.get("properties") or {} for li in api.line_items(wanted)} if wanted else {}
    for p in deals.values():
        best: tuple[float, str] | None = None
        for i in p.pop("_line_item_ids"):
            props = items.get(i)
            if props and props.get("name"):
                amount = _float(props.get("amount")) or 0.0
                if best is None or amount > best[0]:
                    best = (amount, str(props["name"]))
        p[LINE_ITEM_PRODUCT] = best[1] if best else None


def load_owners(api: HubSpotApi, wanted: set[str]) -> dict[str, tuple[str, str | None]]:
    """Owner id -> (name, primary team); archived owners are looked up only when needed."""
    out: dict[str, tuple[str, str | None]] = {}
    for archived in (False, True):
        if archived and not (wanted - set(out)):
            break
        for results in api.owners(archived):
            for o in results:
                name = " ".join(x for x in (o.get("firstName"), o.get("lastName")) if x).strip()
                teams = o.get("teams") or []
                team = next((t.get("name") for t in teams if t.get("primary")), None) or (
                    teams[0].get("name") if teams else None)
                out.setdefault(str(o["id"]), (name or o.get("email") or str(o["id"]), team))
    return out


def from_state(cfg: HubSpotSourceConfig, payloads: list[dict]) -> Extracted:
    """The stored current deals (source_state.load_records) as this source's frames, marked stale:
    what the flow hands on when HubSpot cannot be reached. Needs no API call."""
    usable = [p for p in payloads if RAW_KEY in p]
    records, history, raw = frames(cfg, usable)
    return Extracted(source=cfg.name, records=records, history=history, raw=raw if cfg.raw_sheet else None,
                     stale=True, notes=[f"source '{cfg.name}' failed; data from an earlier run"])


# ----------------------------------------------------------------------------- versions


def resolution_digest(pipelines: dict[str, str], stages: dict[str, Stage], selected: set[str],
                      owners: dict[str, tuple[str, str | None]] | None = None) -> str:
    """Names everything besides the stored deals that shapes the rows: pipelines, stages, owners."""
    key = json.dumps([pipelines, [list(vars(st).values()) for st in stages.values()], sorted(selected),
                      owners], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def _unchanged(api: HubSpotApi, cfg: HubSpotSourceConfig, ctx: ExtractContext, stored: SourceVersion | None,
               changed: dict[str, dict], gone: set[str], pipelines: dict[str, str], stages: dict[str, Stage],
               selected: set[str]) -> bool:
    """True when the rows at `stored` are still the source's rows and the flow holds them: no deal
    archived, every deal the search found (e.g. re-read in the overlap window) is stored exactly
    as it is now, and pipelines, stages and the stored deals' owners resolve as before."""
    if ctx.engine is None or stored is None or ctx.cached_version != stored.version:
        return False
    if changed:
        if cfg.product_from_line_items:  # their products are only known after reading line items
            return False
        kept = load_some(ctx.engine, cfg.name, changed)
        if any(kept.get(k, {}).get(RAW_KEY) != deal for k, deal in changed.items()):
            return False
    if gone & stored_ids(ctx.engine, cfg.name):
        return False
    wanted = set(stored.detail.get("owners") or [])
    owners = load_owners(api, wanted) if wanted else {}
    return stored.detail.get("resolution") == resolution_digest(pipelines, stages, selected, owners)


_RAW_CUT = ', "_hubspot": '  # in a stored payload's text: where its row part (canonical row, history) ends


class _StoredRows:
    """Per table position, what the stored payload's row part hashes to: the JSON text before the
    raw deal (canonical row and stage history). A stored deal that this run did not re-read has
    the stored raw deal, so its payload is unchanged when the row part's text is (without the
    text, or when it differs, the whole payload is compared). NEW: nothing stored."""

    NEW, DIGEST, COMPARE = 0, 1, 2

    def __init__(self) -> None:
        self.digests = array("q")
        self.kind = bytearray()

    def add(self, text: str) -> None:
        cut = text.find(_RAW_CUT)
        self.digests.append(hash(text[:cut]) if cut > 0 else 0)
        self.kind.append(self.DIGEST if cut > 0 else self.COMPARE)

    def recheck(self, positions: Iterable[int | None]) -> None:
        for i in positions:
            if i is not None:
                self.kind[i] = self.COMPARE

    def reorder(self, order: list[int] | None, n: int) -> None:
        """Follow DealTable.finish's new positions; positions past the stored ones are NEW."""
        m = len(self.kind)
        order = order if order is not None else list(range(n))
        self.digests = array("q", (self.digests[i] if i < m else 0 for i in order))
        self.kind = bytearray(self.kind[i] if i < m else self.NEW for i in order)


def _read_stored(engine: sa.Engine, source: str) -> tuple[DealTable, _StoredRows]:
    """The stored deals as a table (a chunk of payloads at a time) and their row parts' digests."""
    table, rows = DealTable(), _StoredRows()
    with gc_paused():  # a chunk of decoded payloads is many acyclic containers, freed by refcount
        _read_chunks(engine, source, table, rows)
    return table, rows


def _read_chunks(engine: sa.Engine, source: str, table: DealTable, rows: _StoredRows) -> None:
    for chunk in iter_records(engine, source, decode=False):
        payloads = json.loads("[" + ",".join(text for _, text in chunk) + "]")
        deals = []
        for (_, text), payload in zip(chunk, payloads, strict=True):
            if RAW_KEY in payload:
                deals.append(payload[RAW_KEY])
                rows.add(text)
        table.add_deals(deals)
        if len(table) != len(rows.kind):  # a raw deal id stored twice: compare every payload whole
            rows.kind = bytearray([_StoredRows.COMPARE]) * len(table)
            rows.digests = array("q", bytes(8 * len(table)))


def _moved(engine: sa.Engine, source: str, table: DealTable, payloads: StoredPayloads,
           stored: _StoredRows) -> list[int]:
    """Positions of the deals whose payload differs from the stored one, or that none is stored for."""
    moved: list[int] = []
    compare: list[int] = []
    resolver = payloads.resolver
    with gc_paused():
        for i, kind in enumerate(stored.kind):
            if kind == _StoredRows.NEW:
                moved.append(i)
            elif kind == _StoredRows.DIGEST:
                row, hist = resolver.row(table.deal(i))
                if hash(payload_text({**row, HISTORY_KEY: hist})[:-1]) != stored.digests[i]:
                    compare.append(i)
            else:
                compare.append(i)
        for at in range(0, len(compare), _COMPARE_CHUNK):
            some = compare[at:at + _COMPARE_CHUNK]
            kept = load_some(engine, source, [table.ids[i] for i in some])
            for i in some:
                before = kept.get(table.ids[i])
                if before is None or RAW_KEY not in before or before != payloads.payload(i):
                    moved.append(i)
    return sorted(moved)


_COMPARE_CHUNK = 5_000


# ----------------------------------------------------------------------------- extract


def extract(cfg: HubSpotSourceConfig, ctx: ExtractContext, *, session: requests.Session | None = None,
            policy: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> Extracted:
    """Read the source's full current set of deals (incrementally when state allows).

    `session`, `policy` and `clock` are for tests (a fake server's session, no real sleeping).
    """
    api = make_api(cfg, ctx.observer, session=session, policy=policy or ctx.retry_policy, clock=clock)
    try:
        return _extract(cfg, ctx, api)
    finally:
        if session is None:
            api.client.session.close()


def _extract(cfg: HubSpotSourceConfig, ctx: ExtractContext, api: HubSpotApi) -> Extracted:
    started = time.monotonic()
    obs = ctx.observer
    before = (obs.requests, obs.retries, obs.waited_seconds)
    pipelines, stages = parse_pipelines(api.pipelines(), cfg.stage_map)
    selected = select_pipelines(cfg, pipelines)
    # stage timing of the selected pipelines' stages (keeps the list URL short)
    props = base_properties(cfg) + [f"{cfg.stage_entered_prefix}{s.id}" for s in stages.values()
                                    if s.pipeline_id in selected]
    props = list(dict.fromkeys(props))
    fp = fingerprint(cfg)
    signpost = ctx.run_started if ctx.run_started.tzinfo else ctx.run_started.replace(tzinfo=UTC)
    progress = _Progress(obs, cfg.name)
    notes: list[str] = []

    since = None
    if ctx.engine is not None and cfg.incremental and not ctx.full_refresh:
        since, stored_fp = parse_cursor(get_cursor(ctx.engine, cfg.name))
        if since is not None and stored_fp != fp:
            notes.append("the deal properties read changed since the last run: full refresh")
            since = None

    deletes: set[str] = set()
    stored_version = get_version(ctx.engine, cfg.name) if ctx.engine is not None else None
    if since is None:
        table, listed = list_all(api, cfg, props, progress, selected)
        notes.append(f"full refresh: {listed} deal(s)")
    else:
        lo = min(since, signpost) - timedelta(seconds=cfg.search_overlap_seconds)
        changed = search_changed(api, cfg, props, lo, signpost, progress)
        gone = archived_ids(api, cfg) - set(changed)
        if _unchanged(api, cfg, ctx, stored_version, changed, gone, pipelines, stages, selected):
            return Extracted(
                source=cfg.name, records=pd.DataFrame(), seconds=time.monotonic() - started,
                notes=[*notes, f"incremental since {since.isoformat()}: nothing changed"],
                requests=obs.requests - before[0], retries=obs.retries - before[1],
                waited_seconds=obs.waited_seconds - before[2],
                pending_state=PendingState(cursor=format_cursor(signpost, fp)),
                version=stored_version.version, reused=True)
        table, stored_rows = _read_stored(ctx.engine, cfg.name)
        deletes |= {k for k in gone if k in table}
        notes.append(f"incremental since {since.isoformat()}: {len(changed)} changed, "
                     f"{len(deletes)} archived deal(s)")
        was_stored = {k for k in changed if k in table}
        stored_rows.recheck(table.position(k) for k in was_stored)  # their raw deal may differ
        table.add([(k, d["properties"]) for k, d in changed.items()])
        for deal_id in deletes:
            table.remove(deal_id)
        pipeline_of = table.columns.get("pipeline")
        outside = {k for k, i in table.live_positions()
                   if ((pipeline_of[i] if pipeline_of is not None else None) or "") not in selected}
        for deal_id in outside:
            table.remove(deal_id)
        deletes |= {k for k in outside if k not in changed or k in was_stored}
        if cfg.product_from_line_items:  # only for deals read in this run; stored ones keep theirs
            kept = {k: d for k, d in changed.items() if k in table}
            add_line_item_products(api, kept)
            table.set_line_item_products({k: d[LINE_ITEM_PRODUCT] for k, d in kept.items()})
        table.finish()
        stored_rows.reorder(table.order, len(table))
        del changed

    owner_ids = set(table.values("hubspot_owner_id")) - {None, ""}
    owners = load_owners(api, owner_ids) if owner_ids else {}
    resolver = Resolver(cfg, pipelines, stages, owners)
    # every deal, or (incremental) the changed ones and any whose resolved row moved (a renamed
    # owner, stage or pipeline); their payloads are built when the flow commits them
    upserts = StoredPayloads(table, resolver, range(len(table)))
    if since is not None:
        upserts = StoredPayloads(table, resolver, _moved(ctx.engine, cfg.name, table, upserts, stored_rows))
    records, history, raw = table_frames(cfg, table, resolver)
    fetched, field_history = _field_history(api, cfg, ctx, table, upserts.positions, deletes, incremental=since is not None)

    pending = None
    if ctx.engine is not None:
        resolution = resolution_digest(pipelines, stages, selected, owners)
        same = (since is not None and not upserts and not deletes and stored_version is not None
                and stored_version.detail.get("resolution") == resolution)
        previous_version = stored_version.version if stored_version else None
        version = SourceVersion(
            previous_version if same and previous_version else new_version(
                previous_version, cfg.name, format_cursor(signpost, fp), resolution, len(upserts), len(deletes)),
            {"resolution": resolution, "owners": sorted(owner_ids)})
        pending = PendingState(cursor=format_cursor(signpost, fp), upserts=upserts,
                               deletes=sorted(deletes), replace_all=since is None, version=version,
                               field_history=fetched)
    return Extracted(
        source=cfg.name,
        records=records,
        history=history,
        raw=raw,
        field_history=field_history,
        seconds=time.monotonic() - started,
        notes=notes + resolver.notes(),
        requests=obs.requests - before[0],
        retries=obs.retries - before[1],
        waited_seconds=obs.waited_seconds - before[2],
        pending_state=pending,
        version=pending.version.version if pending is not None and pending.version else None,
        delta_base=stored_version.version if since is not None and stored_version is not None else None,
        delta_ids=frozenset([*(table.ids[i] for i in upserts.positions), *deletes]) if since is not None else None,
    )


def _field_history(api: HubSpotApi, cfg: HubSpotSourceConfig, ctx: ExtractContext, table: DealTable,
                   positions: Iterable[int], deletes: set[str], *, incremental: bool
                   ) -> tuple[dict[str, list] | None, pd.DataFrame | None]:
    """issue 22 (`field_history: true`): the close date / amount history of the deals read this run
    (to store) and of every current deal (this run's, else the stored one)."""
    if not cfg.field_history:
        return None, None
    fetched = hubspot_history.fetch(api, cfg, [table.ids[i] for i in positions])
    stored = load_entries(ctx.engine, cfg.name) if incremental and ctx.engine is not None else {}
    live = set(table.ids)  # the finished table holds exactly the current deals
    merged = {k: v for k, v in {**stored, **fetched}.items() if k in live and k not in deletes}
    return fetched, entries_frame(merged)
