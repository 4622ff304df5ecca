"""A fake HubSpot CRM v3 (deals, search, pipelines, owners, line items, account details) for tests/fakes/server.py.

Follows ../shared/docs/api-contracts.md section 2: Bearer auth with the documented 401
envelope, string-typed properties, `paging.next.after` that is absent on the last page,
search capped at `search_cap` results (400 beyond), rate-limit headers on non-search answers
and a 10-second window enforced against an injected clock. `seed_demo` gives it seven deals;
`from_page` seeds it with a recorded deals page instead (tests/sources/test_recorded_samples.py replays
../shared/fixtures/real/hubspot/dlt_deals_data.json through it).

Also as HubSpot does (issue 19): a GET whose URL is longer than `url_limit` (8,192 characters)
answers 414 before anything else; the deal property list (`GET /crm/v3/properties/deals`) names a
stage-entry property per stage, `hs_date_entered_<stage>` or, on portals that have them instead,
`hs_v2_date_entered_<stage>` (`use_stage_property_prefix`), and a list or batch read silently leaves
out properties the portal does not have; associations embedded in list results stop at 100 per
deal; the v4 associations batch read takes at most 1,000 ids and pages each deal's associations;
object batch reads take at most 100 ids and answer 207 with errors for ids they cannot find.

Switches: `max_page` (tiny pages), `faults` {request number: kind} with kinds "429",
"429-no-retry-after", "429-daily", "500", "503", "drop", "truncate", "hang" (answers only after
`hang_seconds`); `fail_from` (every request from that number answers 503); `search_cap`;
`rate_max` / `interval_ms` (the window); `daily` (the daily limit in the headers); `url_limit`;
`association_page` (a deal's associations per page of the v4 batch read).
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from config.models import HubSpotSourceConfig
from connectors.extracted import ExtractContext, Extracted
from connectors.http.session import Observer, RetryPolicy
from connectors.sources.hubspot.extract import extract
from connectors.state.db import make_engine
from connectors.state.field_history import save_entries
from connectors.state.source_state import save_state
from tests.fakes.server import FakeServer, Request, Response

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"

# HubSpot's default deal pipeline (ids are words), plus a custom one (numeric-string ids) whose
# "Closed Won" label repeats the default pipeline's.
DEFAULT_PIPELINES: list[dict] = [
    {"id": "default", "label": "Sales Pipeline", "displayOrder": 0, "archived": False, "stages": [
        {"id": "appointmentscheduled", "label": "Appointment Scheduled", "displayOrder": 0,
         "metadata": {"isClosed": "false", "probability": "0.2"}},
        {"id": "qualifiedtobuy", "label": "Qualified To Buy", "displayOrder": 1,
         "metadata": {"isClosed": "false", "probability": "0.4"}},
        {"id": "presentationscheduled", "label": "Presentation Scheduled", "displayOrder": 2,
         "metadata": {"isClosed": "false", "probability": "0.6"}},
        {"id": "decisionmakerboughtin", "label": "Decision Maker Bought-In", "displayOrder": 3,
         "metadata": {"isClosed": "false", "probability": "0.8"}},
        {"id": "contractsent", "label": "Contract Sent", "displayOrder": 4,
         "metadata": {"isClosed": "false", "probability": "0.9"}},
        {"id": "closedwon", "label": "Closed Won", "displayOrder": 5,
         "metadata": {"isClosed": "true", "probability": "1.0"}},
        {"id": "closedlost", "label": "Closed Lost", "displayOrder": 6,
         "metadata": {"isClosed": "true", "probability": "0.0"}},
    ]},
    {"id": "75e28846", "label": "Renewals", "displayOrder": 1, "archived": False, "stages": [
        {"id": "1001", "label": "Renewal Due", "displayOrder": 0,
         "metadata": {"isClosed": "false", "probability": "0.5"}},
        {"id": "1002", "label": "Closed Won", "displayOrder": 1,
         "metadata": {"isClosed": "true", "probability": "1.0"}},
    ]},
]

DEFAULT_OWNERS: list[dict] = [
    {"id": "69864216", "email": "ann.lee@example.com", "firstName": "Ann", "lastName": "Lee", "userId": 123,
     "type": "PERSON", "archived": False, "teams": [{"id": "1", "name": "West", "primary": True}]},
    {"id": "69864217", "email": "bo.chen@example.com", "firstName": "Bo", "lastName": "Chen", "userId": 124,
     "type": "PERSON", "archived": False, "teams": []},
    {"id": "69864299", "email": "gone@example.com", "firstName": "Old", "lastName": "Timer", "userId": 199,
     "type": "PERSON", "archived": True, "teams": [{"id": "2", "name": "East", "primary": True}]},
]

ALWAYS = ("hs_object_id", "createdate", "hs_lastmodifieddate")
RANGE_OPS = ("GTE", "GT", "LT", "LTE", "EQ")

# HubSpot publishes no URL limit; it answers 414 URI Too Long past roughly 8 KB of URL (issue 19,
# observed). The fake draws the line at 8,192 characters of path and query string.
URL_LIMIT = 8_192
# Associations embedded in list results (`associations=line_items`) are paged at 100 per object;
# the rest is only reachable through the associations API
# (https://developers.hubspot.com/docs/api/crm/associations).
EMBEDDED_ASSOCIATIONS = 100
# POST /crm/v4/associations/{from}/{to}/batch/read takes at most 1,000 ids since 2025-02-10
# (https://developers.hubspot.com/changelog/bug-fix-batch-read-limit-for-hubspot-associations-api);
# each result pages its object's associations: "The 'after' field in a returned paging object can
# be added alongside the 'id' to retrieve the next page" (HubSpot-public-api-spec-collection,
# PublicApiSpecs/CRM/Associations/Rollouts/130902/v4/associations.json). Page size: unverified.
ASSOCIATION_BATCH_MAX = 1_000
ASSOCIATION_PAGE = 500
# Object batch reads (POST /crm/v3/objects/{type}/batch/read) take at most 100 inputs
# (https://developers.hubspot.com/docs/guides/crm/using-object-apis).
OBJECT_BATCH_MAX = 100
HISTORY_BATCH_MAX = 50  # ... and at most 50 with propertiesWithHistory (api-contracts.md 2.2, unverified there)
# Default deal properties every portal has (https://knowledge.hubspot.com/crm-deals/hubspots-default-deal-properties);
# per stage HubSpot adds the stage calculated properties, "Date entered [stage ID]" among them
# (https://knowledge.hubspot.com/properties/stage-calculated-properties).
STANDARD_PROPERTIES = (
    "amount", "amount_in_home_currency", "closedate", "createdate", "deal_currency_code", "dealname",
    "dealstage", "dealtype", "description", "hs_analytics_source", "hs_lastmodifieddate", "hs_object_id",
    "hs_manual_forecast_category", "hs_priority", "hubspot_owner_id", "notes_last_contacted", "notes_last_updated",
    "notes_next_activity_date", "num_associated_contacts", "pipeline",
)
STAGE_PROPERTY_PREFIXES = ("hs_date_entered_", "hs_v2_date_entered_")


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def to_ms(value: Any) -> int | None:
    """Epoch ms from an ISO 8601 string or an epoch-ms string (both accepted by HubSpot)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return _str_to_ms(str(value))


@functools.lru_cache(maxsize=65536)
def _str_to_ms(s: str) -> int | None:
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class FakeClock:
    """Time for a test: `sleep` records the wait and moves `now` on; nothing really sleeps."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.t += seconds


def _error(status: int, message: str, category: str, **extra: Any) -> Response:
    return Response(status, {"status": "error", "message": message, "correlationId": str(uuid.uuid4()),
                             "category": category, **extra})


@dataclass
class FakeHubSpot:
    clock: Callable[[], float]
    token: str = TOKEN
    max_page: int = 200  # lists also refuse limit > 100, search > 200
    search_cap: int = 10_000
    faults: dict[int, str] = field(default_factory=dict)
    fail_from: int | None = None
    rate_max: int = 190
    interval_ms: int = 10_000
    daily: int = 1_000_000
    retry_after: str = "7"
    hang_seconds: float = 1.0
    on_request: Callable[[Request], None] | None = None  # runs first, e.g. to change data mid-run
    forbidden: set[str] = field(default_factory=set)  # paths the token's app has no scope for
    deals: dict[str, dict] = field(default_factory=dict)
    pipelines: list[dict] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_PIPELINES)))
    owners: list[dict] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_OWNERS)))
    line_items: dict[str, dict] = field(default_factory=dict)
    url_limit: int = URL_LIMIT
    association_page: int = ASSOCIATION_PAGE
    stage_property_prefix: str = "hs_date_entered_"  # the portal's stage-entry property names
    # Settings API | Currencies (v3): the company currency and every exchange rate, historical ones
    # included ({fromCurrencyCode, conversionRate, effectiveAt}: company units per 1 unit from then on)
    company_currency: str = "USD"
    exchange_rates: list[dict] = field(default_factory=list)
    # Account information API: GET /account-info/v3/details, the portal's id and the domain of its
    # app (app.hubspot.com; EU portals app-eu1.hubspot.com), for links to the deal records
    portal_id: int = 2519445
    ui_domain: str = "app.hubspot.com"
    data_hosting_location: str = "na1"
    # deal id -> property -> recorded versions [{"value", "timestamp", "sourceType"}] (propertiesWithHistory)
    history: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    count: int = 0
    window_start: float | None = None
    window_used: int = 0
    daily_used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _version: int = 0  # bumped by every change through the helpers below
    _cache: dict[str, list[str]] = field(default_factory=dict)
    _index: list[tuple[Any, int, str]] = field(default_factory=list)
    _index_state: tuple[int, int] | None = None
    _index_ms: list[float] = field(default_factory=list)
    _order: dict[bool, tuple[tuple[int, int], list[str]]] = field(default_factory=dict)
    _names: set[str] = field(default_factory=set)
    _names_state: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ data

    @classmethod
    def from_page(cls, page: dict[str, Any], clock: Callable[[], float], **kw: Any) -> FakeHubSpot:
        """Seeded with the deals of one list/search answer ({"results": [{"id", "properties", ...}]})."""
        fake = cls(clock=clock, **kw)
        for d in page["results"]:
            fake.deals[d["id"]] = {"properties": dict(d["properties"]), "archived": False, "line_items": [],
                                   "createdAt": d["createdAt"], "updatedAt": d["updatedAt"]}
        return fake

    def add_deal(self, deal_id: str, modified: datetime, line_items: list[str] | None = None, **props: Any) -> None:
        created = props.pop("createdate", "2026-01-05T09:30:00.000Z")
        p = {"hs_object_id": deal_id, "createdate": created, "hs_lastmodifieddate": iso(modified),
             "pipeline": "default", "dealstage": "appointmentscheduled"}
        p.update({k: (None if v is None else str(v)) for k, v in props.items()})
        self.deals[deal_id] = {"properties": p, "archived": False, "line_items": list(line_items or []),
                               "createdAt": created, "updatedAt": p["hs_lastmodifieddate"]}
        self._version += 1

    def add_deals(self, rows: list[tuple[str, str, dict[str, str | None]]]) -> None:
        """Bulk seeding (benchmarks): (id, ISO modified time, string properties) per deal.

        The same stored shape as `add_deal`, without per-call defaults or conversions.
        """
        for deal_id, modified, props in rows:
            created = props.get("createdate") or "2026-01-05T09:30:00.000Z"
            p = {"pipeline": "default", "dealstage": "appointmentscheduled", **props,
                 "hs_object_id": deal_id, "createdate": created, "hs_lastmodifieddate": modified}
            self.deals[deal_id] = {"properties": p, "archived": False, "line_items": [],
                                   "createdAt": created, "updatedAt": modified}
        self._version += 1

    def update(self, deal_id: str, modified: datetime, **props: Any) -> None:
        d = self.deals[deal_id]
        d["properties"].update({k: (None if v is None else str(v)) for k, v in props.items()})
        d["properties"]["hs_lastmodifieddate"] = d["updatedAt"] = iso(modified)
        self._version += 1

    def archive(self, deal_id: str, when: datetime) -> None:
        d = self.deals[deal_id]
        d["archived"], d["archivedAt"] = True, iso(when)
        self._version += 1

    def add_history(self, deal_id: str, prop: str, value: str | None, when: datetime) -> None:
        """Record a version of a deal property (its value from `when` on)."""
        self.history.setdefault(deal_id, {}).setdefault(prop, []).append(
            {"value": value, "timestamp": iso(when), "sourceType": "CRM_UI", "sourceId": "userId:1"})

    def _versions(self, deal_id: str, prop: str) -> list[dict]:
        """A property's versions, most recent first (as HubSpot lists them; api-contracts.md 2.2). A
        property without recorded versions has one: its current value since the deal's last change."""
        recorded = self.history.get(deal_id, {}).get(prop)
        if recorded:
            return sorted(recorded, key=lambda v: v["timestamp"], reverse=True)
        d = self.deals[deal_id]
        return [{"value": d["properties"].get(prop), "timestamp": d["updatedAt"], "sourceType": "CRM_UI"}]

    def add_line_item(self, item_id: str, name: str, amount: str, product_id: str | None = None) -> None:
        self.line_items[item_id] = {"name": name, "amount": amount, "hs_product_id": product_id, "quantity": "1"}

    def use_stage_property_prefix(self, prefix: str) -> None:
        """Make this a portal whose stage-entry properties are `<prefix><stage id>` (e.g.
        hs_v2_date_entered_): the deals' values move to those names, the others no longer exist."""
        self.stage_property_prefix = prefix
        for d in self.deals.values():
            props = d["properties"]
            for name in [k for k in props if k.startswith(STAGE_PROPERTY_PREFIXES)]:
                value = props.pop(name)
                props[prefix + name.split("date_entered_", 1)[1]] = value
        self._version += 1

    def property_names(self) -> set[str]:
        """The portal's deal properties: the default ones, one stage-entry property per stage,
        and every other property a deal has a value for (cached until the data changes)."""
        stage_ids = tuple(str(s["id"]) for p in self.pipelines for s in p.get("stages") or [])
        state = (len(self.deals), self._version, self.stage_property_prefix, stage_ids)
        if self._names_state != state:
            seen: set[str] = set()
            for d in self.deals.values():
                seen.update(d["properties"])
            self._names = ({n for n in seen if not n.startswith(STAGE_PROPERTY_PREFIXES)} | set(STANDARD_PROPERTIES)
                           | {f"{self.stage_property_prefix}{sid}" for sid in stage_ids})
            self._names_state = state
        return self._names

    def _known(self, wanted: list[str]) -> list[str]:
        """The requested properties the portal has; the others are left out of every answer."""
        names = self.property_names()
        return [p for p in wanted if p in names]

    # ------------------------------------------------------------------ serving

    def __call__(self, req: Request) -> Response:
        with self._lock:
            if self.on_request is not None:
                self.on_request(req)
            self.count += 1
            n = self.count
            fault = self.faults.get(n) or ("503" if self.fail_from is not None and n >= self.fail_from else None)
            if fault and fault != "hang":
                return self._fault(fault)
        if fault == "hang":  # answer late (outside the lock): the client's timeout fires first
            time.sleep(self.hang_seconds)
            return Response(drop=True)  # the client has gone by now
        with self._lock:
            target = len(req.path) + (1 + len(urlencode(req.query, doseq=True)) if req.query else 0)
            if target > self.url_limit:  # refused in front of the API: no JSON envelope, no rate headers
                return Response(414, "<html><head><title>414 Request-URI Too Large</title></head><body>"
                                "<center><h1>414 Request-URI Too Large</h1></center></body></html>",
                                headers={"Content-Type": "text/html"})
            if req.headers.get("authorization") != f"Bearer {self.token}":
                return _error(401, "Authentication credentials not found. This API supports OAuth 2.0 "
                              "authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                              "INVALID_AUTHENTICATION")
            if req.path.rstrip("/") in self.forbidden:
                return _error(403, "This app hasn't been granted all required scopes to make this call.",
                              "MISSING_SCOPES", errors=[{"message": "One or more of the following scopes are required."}])
            is_search = req.path.endswith("/search")
            if not is_search:
                limited = self._count_window()
                if limited is not None:
                    return limited
            resp = self._route(req)
            if not is_search:
                resp.headers.update(self._rate_headers())
            return resp

    def _count_window(self) -> Response | None:
        now = self.clock()
        if self.window_start is None or now - self.window_start >= self.interval_ms / 1000:
            self.window_start, self.window_used = now, 0
        self.window_used += 1
        self.daily_used += 1
        if self.window_used > self.rate_max:
            return _error(429, "You have reached your secondly limit.", "RATE_LIMITS", errorType="RATE_LIMIT",
                          policyName="SECONDLY", requestId=str(uuid.uuid4()))
        return None

    def _rate_headers(self) -> dict[str, str]:
        return {"X-HubSpot-RateLimit-Daily": str(self.daily),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily - self.daily_used)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.interval_ms),
                "X-HubSpot-RateLimit-Max": str(self.rate_max),
                "X-HubSpot-RateLimit-Remaining": str(max(0, self.rate_max - self.window_used))}

    def _fault(self, kind: str) -> Response:
        if kind.startswith("429"):
            daily = kind == "429-daily"
            resp = _error(429, "You have reached your daily limit." if daily else "You have reached your secondly limit.",
                          "RATE_LIMITS", errorType="RATE_LIMIT", policyName="DAILY" if daily else "SECONDLY",
                          requestId=str(uuid.uuid4()))
            if kind == "429":
                resp.headers["Retry-After"] = self.retry_after
            resp.headers.update(self._rate_headers())
            return resp
        if kind in ("500", "503"):
            return _error(int(kind), "internal error" if kind == "500" else "Service Unavailable", "INTERNAL_ERROR")
        if kind == "drop":
            return Response(drop=True)
        if kind == "truncate":
            body = {"results": [{"id": "1", "properties": {"dealname": "cut"}}] * 20}
            return Response(200, body, truncate_at=60)
        raise ValueError(f"unknown fault {kind!r}")

    def _route(self, req: Request) -> Response:
        path = req.path.rstrip("/")
        if req.method == "GET" and path == "/crm/v3/objects/deals":
            return self._list(req)
        if req.method == "POST" and path == "/crm/v3/objects/deals/search":
            return self._search(req.json())
        if req.method == "GET" and path == "/crm/v3/pipelines/deals":
            return Response(200, {"results": self.pipelines})
        if req.method == "GET" and path == "/crm/v3/owners":
            return self._owners(req)
        if req.method == "GET" and path == "/crm/v3/properties/deals":
            # CollectionResponsePropertyNoPaging (PublicApiSpecs/CRM/Properties/Rollouts/145899/v3/properties.json);
            # the recorded ../shared/fixtures/real/hubspot/dlt_contacts_properties.json has the same shape
            return Response(200, {"results": [
                {"name": n, "label": n, "type": "datetime" if "date" in n else "string", "fieldType": "text",
                 "groupName": "dealinformation", "hidden": False, "hubspotDefined": n in STANDARD_PROPERTIES
                 or n.startswith(STAGE_PROPERTY_PREFIXES), "calculated": n.startswith(STAGE_PROPERTY_PREFIXES)}
                for n in sorted(self.property_names())]})
        if req.method == "POST" and path == "/crm/v3/objects/deals/batch/read":
            return self._batch_read(req)
        if req.method == "POST" and path == "/crm/v4/associations/deals/line_items/batch/read":
            return self._association_batch(req.json())
        if req.method == "GET" and path == "/settings/v3/currencies/company-currency":
            return Response(200, {"currencyCode": self.company_currency, "createdAt": "2024-01-02T10:00:00Z",
                                  "updatedAt": "2024-01-02T10:00:00Z"})
        if req.method == "GET" and path == "/settings/v3/currencies/exchange-rates":
            return self._exchange_rates(req)
        if req.method == "GET" and path == "/account-info/v3/details":
            return Response(200, self._account_details())
        if req.method == "GET" and path.startswith("/crm/v4/objects/deals/") and path.endswith("/associations/line_items"):
            deal = self.deals.get(path.split("/")[5])
            if deal is None:
                return _error(404, "Object not found", "OBJECT_NOT_FOUND")
            return Response(200, {"results": [
                {"toObjectId": int(i), "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 19, "label": None}]}
                for i in deal["line_items"]]})
        if req.method == "POST" and path == "/crm/v3/objects/line_items/batch/read":
            body = req.json()
            if len(body.get("inputs", [])) > 100:
                return _error(400, "Too many inputs (max 100)", "VALIDATION_ERROR")
            props = body.get("properties") or []
            results = [{"id": x["id"], "properties": {p: self.line_items[x["id"]].get(p) for p in props},
                        "archived": False} for x in body["inputs"] if x["id"] in self.line_items]
            return Response(200, {"status": "COMPLETE", "results": results})
        return _error(404, f"Unable to route {req.method} request for {req.path}", "OBJECT_NOT_FOUND")

    def _account_details(self) -> dict[str, Any]:
        """GET /account-info/v3/details ("Retrieve account details", scope `oauth`:
        https://developers.hubspot.com/docs/api-reference/legacy/account/account-information/get-account-details;
        fields as the current version documents them,
        https://developers.hubspot.com/docs/api-reference/latest/account/account-information/get-account-details).
        A token without the scope gets the 403 MISSING_SCOPES answer (`forbidden`)."""
        return {"portalId": self.portal_id, "accountType": "STANDARD", "timeZone": "US/Eastern",
                "companyCurrency": self.company_currency, "additionalCurrencies": sorted(
                    {r["fromCurrencyCode"] for r in self.exchange_rates if r.get("fromCurrencyCode")}),
                "utcOffset": "-05:00", "utcOffsetMilliseconds": -18_000_000, "uiDomain": self.ui_domain,
                "dataHostingLocation": self.data_hosting_location}

    def _exchange_rates(self, req: Request) -> Response:
        """GET /settings/v3/currencies/exchange-rates: paged by limit / after (paging.next.after)."""
        limit = int(req.q("limit", "10") or 10)
        start = int(base64.b64decode(req.q("after")).decode()) if req.q("after") else 0
        rows = [{"id": str(1000 + i), "fromCurrencyCode": r["fromCurrencyCode"], "toCurrencyCode": self.company_currency,
                 "conversionRate": float(r["conversionRate"]), "effectiveAt": r["effectiveAt"],
                 "createdAt": r["effectiveAt"], "updatedAt": r["effectiveAt"], "visibleInUI": True}
                for i, r in enumerate(self.exchange_rates)]
        body: dict[str, Any] = {"results": rows[start:start + limit]}
        if start + limit < len(rows):
            after = base64.b64encode(str(start + limit).encode()).decode()
            body["paging"] = {"next": {"after": after, "link": f"{req.path}?after={after}"}}
        return Response(200, body)

    def _props(self, deal_id: str, wanted: list[str]) -> dict[str, Any]:
        """`wanted` (already cut to the properties the portal has: "If any of the specified
        properties are not present on the requested object(s), they will be ignored", deals.json)."""
        have = self.deals[deal_id]["properties"]
        return {p: have.get(p) for p in dict.fromkeys([*wanted, *ALWAYS])}

    def _batch_read(self, req: Request) -> Response:
        """POST /crm/v3/objects/deals/batch/read: at most 100 inputs (50 with `propertiesWithHistory`:
        fewer objects per request with property history, api-contracts.md 2.2); ids not found (or
        archived, unless archived=true) come back as errors in a 207 (BatchResponseSimplePublicObjectWithErrors)."""
        body = req.json()
        inputs = body.get("inputs") or []
        with_history = body.get("propertiesWithHistory") or []
        cap = HISTORY_BATCH_MAX if with_history else OBJECT_BATCH_MAX
        if len(inputs) > cap:
            return _error(400, f"Too many inputs: {len(inputs)} (max {cap})", "VALIDATION_ERROR")
        archived = req.q("archived", "false") == "true"
        wanted = self._known(body.get("properties") or [])
        found, missing = [], []
        for x in inputs:
            d = self.deals.get(str(x["id"]))
            if d is None or d["archived"] != archived:
                missing.append(str(x["id"]))
            else:
                obj = self._obj(str(x["id"]), wanted)
                if with_history:
                    obj["propertiesWithHistory"] = {p: self._versions(str(x["id"]), p) for p in with_history}
                found.append(obj)
        out: dict[str, Any] = {"status": "COMPLETE", "results": found, "startedAt": iso(T0), "completedAt": iso(T0)}
        if not missing:
            return Response(200, out)
        out.update(numErrors=1, errors=[{
            "status": "error", "category": "OBJECT_NOT_FOUND", "context": {"ids": missing},
            "message": "Could not get some DEAL objects, they may be deleted or not exist."}])
        return Response(207, out)

    def _association_batch(self, body: dict) -> Response:
        """POST /crm/v4/associations/deals/line_items/batch/read: at most 1,000 inputs {id, after};
        each deal's line items a page at a time (`association_page`) with `paging.next.after`."""
        inputs = body.get("inputs") or []
        if len(inputs) > ASSOCIATION_BATCH_MAX:
            return _error(400, f"Too many inputs: {len(inputs)} (max {ASSOCIATION_BATCH_MAX})", "VALIDATION_ERROR")
        results, none = [], []
        for x in inputs:
            deal = self.deals.get(str(x["id"]))
            items = deal["line_items"] if deal is not None else []
            start = int(base64.b64decode(x["after"]).decode()) if x.get("after") else 0
            if not items:
                none.append(str(x["id"]))
                continue
            end = start + self.association_page
            result: dict[str, Any] = {"from": {"id": str(x["id"])}, "to": [
                {"toObjectId": str(i), "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 19, "label": None}]}
                for i in items[start:end]]}
            if end < len(items):
                after = base64.b64encode(str(end).encode()).decode()
                result["paging"] = {"next": {"after": after, "link": None}}
            results.append(result)
        out: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": iso(T0), "completedAt": iso(T0)}
        if not none:
            return Response(200, out)
        out.update(numErrors=len(none), errors=[{
            "status": "error", "category": "OBJECT_NOT_FOUND", "context": {"fromObjectId": [k]},
            "message": f"No line_items is associated with deal {k}."} for k in none])
        return Response(207, out)

    def _obj(self, deal_id: str, wanted: list[str]) -> dict[str, Any]:
        d = self.deals[deal_id]
        out = {"id": deal_id, "properties": self._props(deal_id, wanted), "createdAt": d["createdAt"],
               "updatedAt": d["updatedAt"], "archived": d["archived"]}
        if d["archived"]:
            out["archivedAt"] = d["archivedAt"]
        return out

    def _ordered(self, archived: bool) -> list[str]:
        """Ids by number, cached until the data changes through the helpers (every list page asks)."""
        state = (len(self.deals), self._version)
        cached = self._order.get(archived)
        if cached is None or cached[0] != state:
            cached = self._order[archived] = (state, sorted(
                (k for k, d in self.deals.items() if d["archived"] == archived), key=int))
        return cached[1]

    def _list(self, req: Request) -> Response:
        limit = int(req.q("limit", "10") or 10)
        if limit > 100:
            return _error(400, "limit must be at most 100", "VALIDATION_ERROR")
        limit = min(limit, self.max_page)
        wanted = self._known([p for v in req.query.get("properties", []) for p in v.split(",") if p])
        ids = self._ordered(req.q("archived", "false") == "true")
        start = int(base64.b64decode(req.q("after")).decode()) if req.q("after") else 0
        chunk = ids[start:start + limit]
        results = []
        for i in chunk:
            obj = self._obj(i, wanted)
            items = self.deals[i]["line_items"]
            if req.q("associations") == "line_items" and items:
                embedded: dict[str, Any] = {"results": [
                    {"id": li, "type": "deal_to_line_item"} for li in items[:EMBEDDED_ASSOCIATIONS]]}
                if len(items) > EMBEDDED_ASSOCIATIONS:
                    embedded["paging"] = {"next": {"after": str(EMBEDDED_ASSOCIATIONS), "link": (
                        f"/crm/v4/objects/deals/{i}/associations/line_items?after={EMBEDDED_ASSOCIATIONS}")}}
                obj["associations"] = {"line items": embedded}
            results.append(obj)
        body: dict[str, Any] = {"results": results}
        if start + limit < len(ids):
            after = base64.b64encode(str(start + limit).encode()).decode()
            body["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return Response(200, body)

    def _search(self, body: dict) -> Response:
        limit = int(body.get("limit", 10))
        if limit > 200:
            return _error(400, "limit must be at most 200", "VALIDATION_ERROR")
        limit = min(limit, self.max_page)
        after = int(body.get("after") or 0)
        if after >= self.search_cap:
            return _error(400, f"There was a problem with the request: the search result limit of {self.search_cap} "
                          "was exceeded", "VALIDATION_ERROR")
        ids = self._query(body.get("filterGroups") or [], body.get("sorts") or [])
        page = ids[after:min(after + limit, self.search_cap)]
        wanted = self._known(body.get("properties") or [])
        out: dict[str, Any] = {"total": len(ids),
                               "results": [self._obj(i, wanted) for i in page]}
        if after + limit < len(ids):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return Response(200, out)

    def _query(self, groups: list[dict], sorts: list[dict]) -> list[str]:
        """Matching ids in sort order, cached per query until the data changes (like an index)."""
        state = (len(self.deals), self._version)
        if sorts == [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}]:
            # the incremental query: filter an index sorted by modification time (fast for 10k+ deals)
            if self._index_state != state:
                self._index = sorted((self._sort_value(i, "hs_lastmodifieddate"), int(i), i)
                                     for i in self._ordered(False))
                self._index_ms = [k[1] if k[0] == 0 else math.inf for k, _, _ in self._index]
                self._index_state = state
            lo, hi = 0, len(self._index)
            filters = groups[0].get("filters") or [] if len(groups) == 1 else []
            if filters and all(f["propertyName"] == "hs_lastmodifieddate" and f["operator"] in RANGE_OPS
                               for f in filters):
                for f in filters:
                    v, op = to_ms(f["value"]), f["operator"]
                    if op in ("GTE", "EQ", "GT"):
                        cut = (bisect.bisect_left if op != "GT" else bisect.bisect_right)(self._index_ms, v)
                        lo = max(lo, cut)
                    if op in ("LT", "EQ", "LTE"):
                        cut = (bisect.bisect_left if op == "LT" else bisect.bisect_right)(self._index_ms, v)
                        hi = min(hi, cut)
                return [i for _, _, i in self._index[lo:hi]]
            return [i for _, _, i in self._index if self._matches(i, groups)]
        key = json.dumps([groups, sorts, *state], sort_keys=True)
        if key not in self._cache:
            ids = [i for i in self._ordered(False) if self._matches(i, groups)]
            for s in reversed(sorts):
                ids.sort(key=lambda i, p=s["propertyName"]: self._sort_value(i, p),
                         reverse=s.get("direction") == "DESCENDING")
            self._cache = {key: ids}
        return self._cache[key]

    def _sort_value(self, deal_id: str, prop: str) -> Any:
        v = self.deals[deal_id]["properties"].get(prop)
        ms = to_ms(v) if prop in ("hs_lastmodifieddate", "createdate", "closedate") else None
        return (0, ms, "") if ms is not None else (1, 0, str(v))

    def _matches(self, deal_id: str, groups: list[dict]) -> bool:
        if not groups:
            return True
        props = self.deals[deal_id]["properties"]
        return any(all(self._test(props.get(f["propertyName"]), f) for f in g.get("filters") or []) for g in groups)

    @staticmethod
    def _test(value: Any, f: dict) -> bool:
        op = f["operator"]
        if op == "HAS_PROPERTY":
            return value not in (None, "")
        if op == "NOT_HAS_PROPERTY":
            return value in (None, "")
        if op in ("IN", "NOT_IN"):
            inside = str(value) in {str(v) for v in f.get("values") or []}
            return inside if op == "IN" else not inside
        if value is None:
            return False
        a, b = to_ms(value), to_ms(f.get("value"))
        if a is None or b is None:
            a, b = str(value), str(f.get("value"))  # type: ignore[assignment]
        return {"EQ": a == b, "NEQ": a != b, "GT": a > b, "GTE": a >= b, "LT": a < b, "LTE": a <= b}[op]

    def _owners(self, req: Request) -> Response:
        limit = min(int(req.q("limit", "100") or 100), self.max_page, 500)
        archived = req.q("archived", "false") == "true"
        owners = [o for o in self.owners if o["archived"] == archived]
        start = int(req.q("after") or 0)
        body: dict[str, Any] = {"results": owners[start:start + limit]}
        if start + limit < len(owners):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return Response(200, body)


# ----------------------------------------------------------------------------- test harness

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

STAGE_MAP = {
    "Appointment Scheduled": "Lead generation",
    "Qualified To Buy": "Qualification",
    "Presentation Scheduled": "Contact",
    "Decision Maker Bought-In": "Proposal",
    "Contract Sent": "Closing",
    "Closed Won": "Won",
    "Closed Lost": "Lost",
}


def seed_demo(fake: FakeHubSpot) -> None:
    """Seven deals: two plain ones as HubSpot's own samples look (201, 202: 'qualifiedtobuy' in 'default',
    no close date, no owner, last changed in 2023), then owners (one archived), both pipelines, an unmapped stage."""
    for deal_id, created, modified, name, amount in (
            ("201", "2023-03-14T10:02:03.120Z", "2023-03-14T10:02:03.870Z", "Wayne pilot", "640"),
            ("202", "2023-03-14T11:40:12.004Z", "2023-03-14T11:40:15.532Z", "Tyrell (2022-09-01)", "3093")):
        fake.add_deal(deal_id, datetime.fromisoformat(modified), createdate=created, dealname=name, amount=amount,
                      dealstage="qualifiedtobuy", closedate=None)
    fake.add_deal("101", T0, dealname="Acme renewal", amount="12500", dealstage="contractsent",
                  closedate="2026-06-30T00:00:00Z", hubspot_owner_id="69864216", dealtype="existingbusiness",
                  deal_currency_code="USD", notes_last_updated="2026-11-18T16:05:00.000Z",
                  notes_next_activity_date="2026-12-02T09:00:00.000Z", product_line="Widgets",
                  hs_date_entered_appointmentscheduled="2026-01-05T09:30:00.000Z",
                  hs_date_entered_contractsent="2026-03-02T11:00:00.000Z")
    fake.add_deal("102", T0, dealname="Globex new logo", amount="8000.50", dealstage="closedwon",
                  closedate="2026-10-15T00:00:00Z", hubspot_owner_id="69864217", dealtype="newbusiness",
                  product_line="Gadgets", hs_date_entered_closedwon="2026-10-15T08:00:00.000Z")
    fake.add_deal("103", T0, dealname="Initech renewal", amount="4000", pipeline="75e28846", dealstage="1002",
                  closedate="2026-09-01T00:00:00Z", hubspot_owner_id="69864299", dealtype="existingbusiness")
    fake.add_deal("104", T0, dealname="Umbrella", amount="950", dealstage="closedlost",
                  closedate="2026-08-01T00:00:00Z", hubspot_owner_id="69864216", dealtype="newbusiness")
    fake.add_deal("105", T0, dealname="Hooli renewal", amount="7000", pipeline="75e28846", dealstage="1001",
                  hubspot_owner_id="69864216", dealtype="existingbusiness")


class Harness:
    """A seeded fake HubSpot on HTTPS, a fake clock and the calls a flow makes (extract, commit)."""

    def __init__(self, hub: FakeHubSpot, server: FakeServer, clock: FakeClock, tmp_path: Path):
        self.hub, self.server, self.clock = hub, server, clock
        self.engine = make_engine("sqlite:///" + str(tmp_path / "state.db"))
        self.events: list[tuple[str, dict]] = []

    def cfg(self, **kw: Any) -> HubSpotSourceConfig:
        base = {"type": "hubspot", "name": "hubspot_main", "token": TOKEN, "base_url": self.server.url,
                "ca_bundle": self.server.ca_path, "stage_map": STAGE_MAP, "search_overlap_seconds": 0}
        return HubSpotSourceConfig(**{**base, **kw})

    def run(self, cfg: HubSpotSourceConfig | None = None, *, started: datetime, full_refresh: bool = False,
            state: bool = True) -> Extracted:
        obs = Observer(on_event=lambda kind, data: self.events.append((kind, dict(data))))
        ctx = ExtractContext(engine=self.engine if state else None, observer=obs, as_of=date(2026, 11, 27),
                             run_started=started, tz=UTC, full_refresh=full_refresh)
        policy = RetryPolicy(sleep=self.clock.sleep, jitter=False, backoff_base=0.01, max_attempts=4)
        return extract(cfg or self.cfg(), ctx, policy=policy, clock=self.clock.now)

    def commit(self, ex: Extracted, *, version: bool = True) -> None:
        """As flows.pipeline.commit_state: cursor, records, the rows' version (`version` False: none,
        as a state written before versions were kept) and the field history."""
        ps = ex.pending_state
        with self.engine.begin() as conn:
            save_state(conn, ex.source, ps.cursor, ps.upserts, ps.deletes, ps.replace_all,
                       version=ps.version if version else None)
            if ps.field_history is not None:  # as flows.pipeline.commit_state
                save_entries(conn, ex.source, ps.field_history, ps.deletes, ps.replace_all)

    def requests(self, method: str, path: str) -> list[Request]:
        return [r for r in self.server.requests if r.method == method and r.path.rstrip("/") == path]


@contextmanager
def demo_harness(tmp_path: Path, **fake_options: Any) -> Iterator[Harness]:
    """`seed_demo` on HTTPS, with a fake clock, as a Harness."""
    clock = FakeClock()
    hub = FakeHubSpot(clock=clock.now, **fake_options)
    seed_demo(hub)
    with FakeServer(hub, tmp_path) as srv:
        yield Harness(hub, srv, clock, tmp_path)


@contextmanager
def demo_server(tmp_path: Path) -> Iterator[tuple[FakeHubSpot, FakeServer]]:
    """The same seeded fake for whole-flow tests; its rate window never rolls (190 calls)."""
    hub = FakeHubSpot(clock=lambda: 0.0)
    seed_demo(hub)
    with FakeServer(hub, tmp_path) as srv:
        yield hub, srv
