"""HubSpot HTTP client (CRM API v3): the calls this source makes, the Bearer token, rate-limit pacing.

Every call goes through the shared HttpClient (one retry policy, TLS options, request counters);
`RateLimiter` is a response hook that paces requests by the X-HubSpot-RateLimit-* headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import requests

from config.models import HubSpotSourceConfig
from connectors.errors import FatalAPIError
from connectors.http.paging import paginate
from connectors.http.session import (
    HttpClient,
    Observer,
    RetryPolicy,
    build_session,
    default_error_message,
)

log = logging.getLogger(__name__)

LINE_ITEM_BATCH = 100  # inputs per object batch read (https://developers.hubspot.com/docs/guides/crm/using-object-apis)
DEAL_BATCH = 100  # the same rule for POST /crm/v3/objects/deals/batch/read
HISTORY_BATCH = 50  # ... which takes fewer objects with propertiesWithHistory (api-contracts.md 2.2)
ASSOCIATION_BATCH = 1_000  # ids per v4 associations batch read, since 2025-02-10
# (https://developers.hubspot.com/changelog/bug-fix-batch-read-limit-for-hubspot-associations-api)
OWNER_PAGE = 500
# HubSpot publishes no URL limit but answers 414 past roughly 8 KB of URL: every GET we send keeps
# its path and query string within MAX_URL characters (with room for the `after` token).
MAX_URL = 6_000
AFTER_ROOM = 200
HINTS = {
    401: " (check the source's `token`: a HubSpot private-app access token, e.g. ${HUBSPOT_TOKEN})",
    403: " (give the private app the scopes crm.objects.deals.read and crm.objects.owners.read, "
         "plus crm.objects.line_items.read for product_from_line_items)",
}


def as_float(value: Any) -> float | None:
    """A HubSpot number (sent as text) as a float; None when empty or not a number."""
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


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
            self.interval = (as_float(h["X-HubSpot-RateLimit-Interval-Milliseconds"]) or 10_000.0) / 1000.0
        remaining = as_float(h.get("X-HubSpot-RateLimit-Remaining"))
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
            return body.get("results") or [], next_after(body)

        return paginate(page)

    def deal_property_names(self) -> set[str]:
        """The names of the portal's deal properties (GET /crm/v3/properties/deals, not paged)."""
        return {str(p["name"]) for p in self.get("/crm/v3/properties/deals").get("results") or [] if p.get("name")}

    def list_params(self, limit: int, archived: bool) -> dict[str, Any]:
        return {"limit": limit, "archived": str(archived).lower()}

    def fit_in_url(self, properties: list[str], limit: int, archived: bool = False) -> int:
        """How many of `properties` (from the first) a deals list GET can carry within MAX_URL."""
        used = (len(urlsplit(self.client.url("/crm/v3/objects/deals")).path) + 1
                + len(urlencode(self.list_params(limit, archived))) + len("&properties=") + AFTER_ROOM)
        for n, name in enumerate(properties):
            used += len(quote_plus(name)) + (len(quote_plus(",")) if n else 0)
            if used > MAX_URL:
                return n
        return len(properties)

    def deals(self, properties: list[str], limit: int, archived: bool = False) -> Iterable[list[dict]]:
        """Pages of the deals list. `properties` must fit in the URL (`fit_in_url`)."""
        def page(after: Any) -> tuple[list[dict], Any]:
            params: dict[str, Any] = {**self.list_params(limit, archived), "properties": ",".join(properties)}
            if after:
                params["after"] = after
            body = self.get("/crm/v3/objects/deals", **params)
            return body.get("results") or [], next_after(body)

        return paginate(page)

    def deal_properties(self, ids: list[str], properties: list[str]) -> dict[str, dict]:
        """Deal id -> the `properties` asked for, by batch read (the names travel in the body, so any
        number fit). Ids HubSpot cannot find (e.g. archived since they were listed) are left out."""
        out: dict[str, dict] = {}
        for i in range(0, len(ids), DEAL_BATCH):
            body = {"properties": properties, "inputs": [{"id": x} for x in ids[i:i + DEAL_BATCH]]}
            for d in self.post("/crm/v3/objects/deals/batch/read", body).get("results") or []:
                out[str(d["id"])] = d.get("properties") or {}
        return out

    def deal_histories(self, ids: list[str], properties: list[str]) -> dict[str, dict[str, list[dict]]]:
        """Deal id -> property -> its recorded versions (`propertiesWithHistory`), by batch read of
        HISTORY_BATCH deals. Ids HubSpot cannot find are left out."""
        out: dict[str, dict[str, list[dict]]] = {}
        for i in range(0, len(ids), HISTORY_BATCH):
            body = {"inputs": [{"id": x} for x in ids[i:i + HISTORY_BATCH]], "properties": ["hs_object_id"],
                    "propertiesWithHistory": properties}
            for d in self.post("/crm/v3/objects/deals/batch/read", body).get("results") or []:
                out[str(d["id"])] = d.get("propertiesWithHistory") or {}
        return out

    def search(self, body: dict) -> dict:
        self.limiter.before_search()
        return self.client.post_json("/crm/v3/objects/deals/search", body)

    def line_item_ids(self, deal_ids: list[str]) -> dict[str, list[str]]:
        """Deal id -> its line item ids, by v4 associations batch read: 1,000 deals a request, each
        deal's later pages asked for again with its `after` token. Deals without any are left out."""
        out: dict[str, list[str]] = {}
        sent: dict[str, str | None] = {}  # per deal, the `after` asked with last (a repeated token ends it)
        todo: list[dict[str, str]] = [{"id": x} for x in deal_ids]
        while todo:
            more: list[dict[str, str]] = []
            for i in range(0, len(todo), ASSOCIATION_BATCH):
                chunk = todo[i:i + ASSOCIATION_BATCH]
                sent.update((x["id"], x.get("after")) for x in chunk)
                body = self.post("/crm/v4/associations/deals/line_items/batch/read", {"inputs": chunk})
                for r in body.get("results") or []:
                    deal_id = str((r.get("from") or {}).get("id"))
                    out.setdefault(deal_id, []).extend(str(t["toObjectId"]) for t in r.get("to") or [])
                    after = next_after(r)
                    if after and deal_id in sent and after != sent[deal_id]:
                        more.append({"id": deal_id, "after": after})
            todo = more
        return out

    def line_items(self, ids: list[str]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(ids), LINE_ITEM_BATCH):
            body = {"properties": ["name", "amount", "hs_product_id"],
                    "inputs": [{"id": x} for x in ids[i:i + LINE_ITEM_BATCH]]}
            out += self.post("/crm/v3/objects/line_items/batch/read", body).get("results") or []
        return out


def next_after(body: dict) -> str | None:
    """The `after` token of the next page; None on the last page."""
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
