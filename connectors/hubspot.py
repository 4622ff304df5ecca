"""HubSpot deals source (CRM API v3): pipelines, owners, deals, incremental search, rate limits.

`extract(cfg, ctx)` returns the FULL current set of deals. The first run (or `full_refresh`,
or a changed property set) lists every deal; later runs search only deals modified since the
stored cursor, up to the run's signpost (`ctx.run_started`), and merge them into the stored
state. The new cursor and record changes travel in `Extracted.pending_state`; the flow
commits them only when the whole run succeeds.

Stage text: a deal's `stage` is its HubSpot stage label, or, when the source's `stage_map`
has that key, the qualified "Pipeline label / Stage label" or the stage id (for pipelines
whose labels repeat). `_pipeline` names the deal's pipeline for reject reasons.

Memory: deals are held as columns (DealTable), never as a dict per deal; the frames are built
column by column (the raw sheet's str columns serve the table and the records too); the pending
upserts (StoredPayloads) build each deal's payload only when the flow commits it; an incremental
run reads the stored deals a chunk at a time. A full pull of 1M deals peaks at ~1.2 GB.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, overload

import numpy as np
import pandas as pd
import requests
import sqlalchemy as sa

from config.models import HUBSPOT_DEFAULT_FIELDS, HubSpotSourceConfig
from config.schema import HISTORY_FIELDS
from connectors.errors import FatalAPIError
from connectors.extracted import ExtractContext, Extracted, PendingState
from connectors.http import HttpClient, Observer, RetryPolicy, build_session, default_error_message
from connectors.paging import paginate
from connectors.source_state import (
    SourceVersion,
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
ROW_COLUMN = "_row"
PIPELINE_COLUMN = "_pipeline"  # the deal's pipeline label; canonicalize names it in stage rejects
CORE_PROPERTIES = ("dealstage", "pipeline", "hubspot_owner_id", "createdate", "hs_lastmodifieddate")
LINE_ITEM_PRODUCT = "line_item_product"
HINTS = {
    401: " (check the source's `token`: a HubSpot private-app access token, e.g. ${HUBSPOT_TOKEN})",
    403: " (give the private app the scopes crm.objects.deals.read and crm.objects.owners.read, "
         "plus crm.objects.line_items.read for product_from_line_items)",
}
STATE_FORMAT = "v1"  # of the stored payloads; part of the cursor's fingerprint
RAW_KEY = "_hubspot"  # stored payload: the raw deal {id, properties, line_item_product}
HISTORY_KEY = "_history"  # stored payload: [[stage text, entered], ...]


# ----------------------------------------------------------------------------- pipelines


@dataclass(frozen=True)
class Stage:
    """One HubSpot deal stage, with its pipeline. `text` is what the records carry as `stage`."""

    id: str
    label: str
    pipeline_id: str
    pipeline_label: str
    order: int
    probability: float | None
    closed: bool
    text: str

    @property
    def status(self) -> str:
        if not self.closed:
            return "open"
        return "won" if (self.probability or 0.0) >= 1.0 else "lost"


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


def field_properties(cfg: HubSpotSourceConfig) -> dict[str, str]:
    """Canonical field -> deal property for the fields read straight from a property."""
    merged: dict[str, str | None] = {**HUBSPOT_DEFAULT_FIELDS, **cfg.fields}
    return {k: v for k, v in merged.items() if v}


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
    with _gc_paused():  # page dicts are acyclic garbage; the table holds few containers
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


# ----------------------------------------------------------------------------- deal table

INTERN_LIMIT = 1_000  # a property with at most this many distinct values shares one str per value
_TEXT = {str, type(None)}


class DealTable:
    """Deals held as columns (one value list per property) instead of a dict per deal.

    A full pull of a million deals as dicts held ~8 kB per deal; as columns it holds the values
    and 8 bytes per cell. Each deal keeps its property names (one tuple shared by the deals with
    the same names, in HubSpot's order), so `deal(i)` rebuilds the raw deal exactly. Values that
    repeat across deals (stage, pipeline and owner ids, currency, deal type) share one string
    object while their property has at most INTERN_LIMIT distinct values; `hs_object_id` shares
    the id's. Filling: `add` (an id added again is replaced where it stands), `remove`,
    `set_line_item_products`; then `finish` orders the deals by id (positions 0..n-1 from then on).
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.names: list[tuple[str, ...]] = []  # per deal: its property names
        self.columns: dict[str, Any] = {}  # name -> values by position (None where a deal lacks it)
        self.line_item_product: dict[int, Any] = {}  # position -> the deal's LINE_ITEM_PRODUCT, when set
        self._nan_is_none: set[str] = set()  # columns shared with a str frame column: NaN reads as None
        self._dropped: set[int] = set()
        self._at: dict[str, int] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._interned: dict[str, dict[Any, Any] | None] = {}
        self.order: list[int] | None = None  # set by finish

    @classmethod
    def of(cls, deals: Iterable[dict]) -> DealTable:
        """A finished table of raw deals ({id, properties[, LINE_ITEM_PRODUCT]}), e.g. stored ones."""
        table = cls()
        batch: list[dict] = []
        for deal in deals:
            batch.append(deal)
            if len(batch) == 1_000:
                table.add_deals(batch)
                batch = []
        table.add_deals(batch)
        return table.finish()

    def add_deals(self, deals: list[dict]) -> None:
        """Add raw deals ({id, properties[, LINE_ITEM_PRODUCT]})."""
        self.add([(str(d["id"]), d.get("properties") or {}) for d in deals])
        self.set_line_item_products({str(d["id"]): d[LINE_ITEM_PRODUCT] for d in deals if LINE_ITEM_PRODUCT in d})

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, deals: list[tuple[str, dict]]) -> None:
        """Add (id, properties) pairs; a later pair of a stored id replaces it where it stands."""
        page = dict(deals)
        new = [(k, p) for k, p in page.items() if k not in self._at]
        if len(new) < len(page):
            for k, p in page.items():
                if k in self._at:
                    self._replace(self._at[k], p)
        if not new:
            return
        start, ids = len(self.ids), [k for k, _ in new]
        props = [p for _, p in new]
        shapes = list(map(self._shape, props))
        page_values: dict[Any, Any] = {}  # equal values within the page (e.g. createdate and the first
        for name, col in self.columns.items():  # stage's entered date) share one object too
            col.extend(self._intern(name, list(map(dict.get, props, repeat(name))), ids, page_values))
        self.ids += ids
        self.names += shapes
        self._at.update(zip(ids, range(start, start + len(ids)), strict=True))

    def _shape(self, props: dict) -> tuple[str, ...]:
        key = tuple(props)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = key
            for name in key:
                if name not in self.columns:
                    self.columns[name] = [None] * len(self.ids)
                    self._interned[name] = {}
        return shape

    def _intern(self, name: str, values: list[Any], ids: list[str], page_values: dict[Any, Any]) -> list[Any]:
        if name == "hs_object_id":
            return [k if v == k else v for v, k in zip(values, ids, strict=True)]
        if not set(map(type, values)) <= _TEXT:  # only str (1 == True == 1.0 would merge other types)
            return values
        seen = self._interned.get(name)
        if seen is None:
            return list(map(page_values.setdefault, values, values))
        values = list(map(seen.setdefault, values, values))
        if len(seen) > INTERN_LIMIT:
            self._interned[name] = None
        return values

    def _replace(self, i: int, props: dict) -> None:
        self.names[i] = self._shape(props)
        for name, col in self.columns.items():
            col[i] = self._intern(name, [props.get(name)], [self.ids[i]], {})[0]
        self.line_item_product.pop(i, None)

    def remove(self, deal_id: str) -> None:
        i = self._at.pop(deal_id, None)
        if i is not None:
            self._dropped.add(i)

    def live_ids(self) -> list[str]:
        """Ids of the deals held (not removed), in the order they came."""
        return list(self._at)

    def live_positions(self) -> Iterable[tuple[str, int]]:
        """(id, position) of the deals held, while filling."""
        return list(self._at.items())

    def __contains__(self, deal_id: object) -> bool:
        return deal_id in self._at

    def position(self, deal_id: str) -> int | None:
        """Where the deal is, while filling."""
        return self._at.get(deal_id)

    def set_line_item_products(self, products: dict[str, Any]) -> None:
        for deal_id, product in products.items():
            self.line_item_product[self._at[deal_id]] = product

    def finish(self) -> DealTable:
        """Order the deals by id (numbers first, by value; as `frames` orders payloads), drop the
        removed ones and the filling indexes. `order` keeps where each deal was before."""
        ids = self.ids
        keep = range(len(ids)) if not self._dropped else [i for i in range(len(ids)) if i not in self._dropped]
        try:
            keys = np.fromiter((int(k) if k.isdigit() and k.isascii() and len(k) < 19 else None
                                for k in (ids[i] for i in keep)),
                               dtype=np.int64, count=len(keep))
            order = [keep[j] for j in np.argsort(keys, kind="stable").tolist()]
        except (TypeError, ValueError):  # an id that is not a plain number
            order = sorted(keep, key=lambda i: _sort_key(ids[i]))
        self.order = order  # new position -> position before; for callers that keep data by position
        if order != list(range(len(ids))):
            self.ids = [ids[i] for i in order]
            self.names = [self.names[i] for i in order]
            for name, col in self.columns.items():
                self.columns[name] = [col[i] for i in order]
            at = {i: j for j, i in enumerate(order)}
            self.line_item_product = {at[i]: v for i, v in self.line_item_product.items() if i in at}
        self._dropped, self._at, self._shapes, self._interned = set(), {}, {}, {}
        return self

    def values(self, name: str) -> Any:
        """props.get(name) of every deal, by position (a list, or a shared frame column's values)."""
        col = self.columns.get(name)
        if col is None:
            return [None] * len(self.ids)
        if name in self._nan_is_none:
            return [None if v.__class__ is float else v for v in col[1]]
        return col

    def shared(self, name: str) -> pd.Series | None:
        """The frame column that column `name` is read from (see `share`), if any."""
        return self.columns[name][0] if name in self._nan_is_none else None

    def share(self, name: str, series: pd.Series) -> None:
        """Read column `name` from `series`, a str column built from it (NaN where the value was
        None): its list is freed. The frame may change later; copy-on-write keeps `series` as built."""
        self.columns[name] = (series, np.asarray(series))  # the Series keeps pandas' copy-on-write ref
        self._nan_is_none.add(name)

    def deal(self, i: int) -> dict:
        """The raw deal at position i, as HubSpot gave it: {id, properties[, line_item_product]}."""
        cols, shared = self.columns, self._nan_is_none
        props: dict[str, Any] = {}
        for n in self.names[i]:
            if n in shared:
                v = cols[n][1][i]
                props[n] = None if v.__class__ is float else v
            else:
                props[n] = cols[n][i]
        deal = {"id": self.ids[i], "properties": props}
        if i in self.line_item_product:
            deal[LINE_ITEM_PRODUCT] = self.line_item_product[i]
        return deal


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off meanwhile: building and dropping millions of acyclic objects would
    otherwise trigger collections that scan every live container again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ----------------------------------------------------------------------------- frames


def _sort_key(deal_id: str) -> tuple[int, int, str]:
    return (0, int(deal_id), "") if deal_id.isdigit() else (1, 0, deal_id)


@dataclass
class Resolver:
    """Turns one deal's raw properties into a canonical row and its stage history entries."""

    cfg: HubSpotSourceConfig
    pipelines: dict[str, str]
    stages: dict[str, Stage]
    owners: dict[str, tuple[str, str | None]]
    unknown_owners: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.fields = list(field_properties(self.cfg).items())
        self.entered = [(f"{self.cfg.stage_entered_prefix}{s.id}", s.text) for s in self.stages.values()]

    def row(self, deal: dict) -> tuple[dict[str, Any], list[list[str]]]:
        cfg, props = self.cfg, deal["properties"]
        prefix = cfg.stage_entered_prefix
        sid = props.get("dealstage") or ""
        stage = self.stages.get(sid)
        pid = props.get("pipeline") or ""
        owner_id = props.get("hubspot_owner_id") or ""
        owner, team = self.owners.get(owner_id, (owner_id or None, None))
        if owner_id and owner_id not in self.owners:
            self.unknown_owners.add(owner_id)
        product = props.get(cfg.product_property) if cfg.product_property else None
        if not product and cfg.product_from_line_items:
            product = deal.get(LINE_ITEM_PRODUCT)
        row: dict[str, Any] = {f: props.get(p) for f, p in self.fields}
        row.update({
            "opportunity_id": deal["id"],
            "stage": stage.text if stage else (sid or None),
            "status": stage.status if stage else None,
            "owner": owner,
            "team": team,
            "product": product,
            "stage_entered_date": props.get(f"{prefix}{sid}") if sid else None,
            PIPELINE_COLUMN: stage.pipeline_label if stage else self.pipelines.get(pid, pid or None),
        })
        hist = [[text, props[name]] for name, text in self.entered if props.get(name)]
        return row, hist

    def columns(self, table: DealTable) -> dict[str, Any]:
        """`row()`'s values for every deal of a finished table, column by column (same keys, same
        order). A property column the table shares with a frame is that frame's column."""
        cfg, stages, ids = self.cfg, self.stages, table.ids
        sids = [v or "" for v in table.values("dealstage")]
        pids = [v or "" for v in table.values("pipeline")]
        owner_ids = [v or "" for v in table.values("hubspot_owner_id")]
        by_stage = {s: stages.get(s) for s in set(sids)}
        owners = {o: self.owners.get(o, (o or None, None)) for o in set(owner_ids)}
        self.unknown_owners |= {o for o in owners if o and o not in self.owners}
        product: Any = None
        if cfg.product_property:
            product = table.shared(cfg.product_property) if not cfg.product_from_line_items else None
            if product is None:
                product = table.values(cfg.product_property)
        else:
            product = [None] * len(ids)
        if cfg.product_from_line_items:
            lip = table.line_item_product
            product = [v if v else lip.get(i) for i, v in enumerate(product)]
        entered = {s: table.values(f"{cfg.stage_entered_prefix}{s}") for s in by_stage
                   if s and f"{cfg.stage_entered_prefix}{s}" in table.columns}
        out: dict[str, Any] = {}
        for f, p in self.fields:
            shared = table.shared(p)
            out[f] = shared if shared is not None else table.values(p)
        out.update({
            "opportunity_id": ids,
            "stage": [st.text if (st := by_stage[s]) else (s or None) for s in sids],
            "status": [st.status if (st := by_stage[s]) else None for s in sids],
            "owner": [owners[o][0] for o in owner_ids],
            "team": [owners[o][1] for o in owner_ids],
            "product": product,
            "stage_entered_date": [col[i] if (col := entered.get(s)) is not None else None
                                   for i, s in enumerate(sids)],
            PIPELINE_COLUMN: [st.pipeline_label if (st := by_stage[s]) else self.pipelines.get(p, p or None)
                              for s, p in zip(sids, pids, strict=True)],
        })
        return out

    def notes(self) -> list[str]:
        if not self.unknown_owners:
            return []
        return [f"{len(self.unknown_owners)} owner id(s) not found in HubSpot owners, kept as ids: "
                + ", ".join(sorted(self.unknown_owners)[:10])]


def stored(deal: dict, row: dict[str, Any], hist: list[list[str]]) -> dict:
    """The state-store payload of a deal: its canonical row (so a stale fallback needs no API),
    its stage entries, and the raw HubSpot deal the next incremental run rebuilds from."""
    return {**row, HISTORY_KEY: hist, RAW_KEY: deal}


def frames(cfg: HubSpotSourceConfig, payloads: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(records with `_row` from 1, history, raw properties) from stored payloads, ordered by deal id."""
    ordered = sorted(payloads, key=lambda p: _sort_key(str(p["opportunity_id"])))
    rows, hist, raw = [], [], []
    for i, p in enumerate(ordered, start=1):
        rows.append({k: v for k, v in p.items() if k not in (HISTORY_KEY, RAW_KEY)} | {ROW_COLUMN: i})
        hist += [{"opportunity_id": p["opportunity_id"], "stage": st, "entered_date": when}
                 for st, when in p.get(HISTORY_KEY) or []]
        deal = p[RAW_KEY]
        raw.append({"id": deal["id"], **deal["properties"],
                    **({LINE_ITEM_PRODUCT: deal.get(LINE_ITEM_PRODUCT)} if cfg.product_from_line_items else {})})
    history = pd.DataFrame(hist, columns=list(HISTORY_FIELDS))
    if not rows:
        return _empty_frames(cfg)
    return pd.DataFrame(rows), history, pd.DataFrame(raw)


def _empty_frames(cfg: HubSpotSourceConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """No deals: frames that keep the columns, so an empty source still has the shape of one."""
    columns = ["opportunity_id", *field_properties(cfg), "stage", "status", "owner", "team", "product",
               "stage_entered_date", PIPELINE_COLUMN, ROW_COLUMN]
    return (pd.DataFrame(columns=columns), pd.DataFrame([], columns=list(HISTORY_FIELDS)),
            pd.DataFrame(columns=["id"]))


def table_frames(cfg: HubSpotSourceConfig, table: DealTable,
                 resolver: Resolver) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(records with `_row` from 1, history, raw properties or None without `raw_sheet`) of a
    finished table, built column by column: the frames `frames()` builds from the deals' payloads,
    without a dict per deal. With a raw sheet the raw frame's str columns also serve the table
    and the records' property columns (one array per property, not three)."""
    if not len(table):
        records, history, raw = _empty_frames(cfg)
        return records, history, raw if cfg.raw_sheet else None
    with _gc_paused():
        raw = _raw_frame(cfg, table) if cfg.raw_sheet else None
        columns: dict[str, Any] = resolver.columns(table)
        columns[ROW_COLUMN] = np.arange(1, len(table) + 1, dtype=np.int64)
        records = pd.DataFrame(columns, copy=False)
        del columns
        history = _history_frame(table, resolver)
    return records, history, raw


def _history_frame(table: DealTable, resolver: Resolver) -> pd.DataFrame:
    entered = []
    for name, text in resolver.entered:
        if name in table.columns:
            shared = table.shared(name) is not None
            entered.append((table.columns[name][1] if shared else table.columns[name], text, shared))
    ids, stages, when = [], [], []
    for i, deal_id in enumerate(table.ids):
        for col, text, shared in entered:
            value = col[i]
            if value and not (shared and value.__class__ is float):  # NaN: a shared column's None
                ids.append(deal_id)
                stages.append(text)
                when.append(value)
    if not ids:
        return pd.DataFrame([], columns=list(HISTORY_FIELDS))
    columns: dict[str, pd.Series] = {}
    for name, values in zip(HISTORY_FIELDS, (ids, stages, when), strict=True):
        columns[name] = pd.Series(values, copy=False)
        values.clear()  # one list's worth of pointers at a time
    return pd.DataFrame(columns, copy=False)


def _raw_frame(cfg: HubSpotSourceConfig, table: DealTable) -> pd.DataFrame:
    """Per deal {"id", **properties[, LINE_ITEM_PRODUCT]}, columns in first-seen order, NaN where
    a deal lacks a property (as pd.DataFrame of those dicts has it). Its str columns then serve
    as the table's columns (their lists are freed one by one while the frame is built)."""
    li = cfg.product_from_line_items
    names: dict[str, None] = {"id": None}
    shapes: dict[tuple[str, ...], None] = {}
    for shape in table.names:
        if shape not in shapes:
            shapes[shape] = None
            names.update(dict.fromkeys((*shape, LINE_ITEM_PRODUCT) if li else shape))
    nan = float("nan")
    out: dict[str, pd.Series] = {}
    for name in names:
        has = {shape: name in shape for shape in shapes}
        if li and name == LINE_ITEM_PRODUCT:
            values: list[Any] = [table.line_item_product.get(i) for i in range(len(table))]
        elif all(has.values()):
            values = table.values(name)
        elif name == "id" and not any(has.values()):
            values = table.ids
        else:
            col, fallback = table.values(name), table.ids if name == "id" else None
            values = [col[i] if has[shape] else (fallback[i] if fallback else nan)
                      for i, shape in enumerate(table.names)]
        out[name] = series = pd.Series(values, copy=False)
        del values
        if name in table.columns and name != "id" and not (li and name == LINE_ITEM_PRODUCT) \
                and isinstance(series.dtype, pd.StringDtype):
            table.share(name, series)
    return pd.DataFrame(out, copy=False)


class StoredPayloads(Sequence[tuple[str, dict]]):
    """(deal id, state-store payload) of the deals at `positions` of a finished DealTable, each
    built when read: a run's pending upserts, without a payload dict per deal held until the commit."""

    def __init__(self, table: DealTable, resolver: Resolver, positions: Sequence[int]):
        self.table, self.resolver, self.positions = table, resolver, positions

    def payload(self, i: int) -> dict:
        deal = self.table.deal(i)
        return stored(deal, *self.resolver.row(deal))

    def __len__(self) -> int:
        return len(self.positions)

    @overload
    def __getitem__(self, k: int) -> tuple[str, dict]: ...

    @overload
    def __getitem__(self, k: slice) -> list[tuple[str, dict]]: ...

    def __getitem__(self, k: int | slice) -> tuple[str, dict] | list[tuple[str, dict]]:
        if isinstance(k, slice):
            return [(self.table.ids[i], self.payload(i)) for i in self.positions[k]]
        i = self.positions[k]
        return self.table.ids[i], self.payload(i)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        for i in self.positions:
            yield self.table.ids[i], self.payload(i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredPayloads({len(self)} deal(s))"


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
    with _gc_paused():  # a chunk of decoded payloads is many acyclic containers, freed by refcount
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
    with _gc_paused():
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
                               deletes=sorted(deletes), replace_all=since is None, version=version)
    return Extracted(
        source=cfg.name,
        records=records,
        history=history,
        raw=raw,
        seconds=time.monotonic() - started,
        notes=notes + resolver.notes(),
        requests=obs.requests - before[0],
        retries=obs.retries - before[1],
        waited_seconds=obs.waited_seconds - before[2],
        pending_state=pending,
        version=pending.version.version if pending is not None and pending.version else None,
    )
