"""Salesforce source: OAuth (client credentials or JWT bearer), SOQL paging, stage history, incremental.

Client: plain `requests` through the shared HttpClient (one retry policy, TLS options that win
over REQUESTS_CA_BUNDLE, request counters) rather than simple-salesforce, which hard-codes
`https://{instance}` and its own error handling. Every call goes to the token response's
`instance_url`.

Incremental (same rules as HubSpot): the first run (or `full_refresh`) reads every opportunity
and replaces the stored state; later runs read only rows with `cursor - overlap_seconds <=
SystemModstamp < signpost` (the signpost is the run's start; the overlap catches transactions
that commit late), merge them into the stored records by Id and drop the ids `queryAll`
reports deleted (and, with `where:`, rows that changed and no longer match it). The new cursor is the signpost; it travels in
`Extracted.pending_state` and the flow commits it only when the whole run succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pandas as pd
import requests

from config.models import SalesforceSourceConfig
from config.soql import soql_literal, where_clause
from connectors.errors import FatalAPIError
from connectors.extracted import ExtractContext, Extracted, PendingState
from connectors.http.paging import paginate
from connectors.http.session import HttpClient, RetryPolicy, build_session
from connectors.sources import salesforce_history
from connectors.state import source_state

log = logging.getLogger(__name__)

DEFAULT_TYPE_MAP: dict[str, str] = {
    "New Customer": "new",
    "New Business": "new",
    "Existing Customer - Upgrade": "existing",
    "Existing Customer - Replacement": "existing",
    "Existing Business": "existing",
    "Renewal": "existing",
}
BASE_FIELDS: tuple[str, ...] = (
    "Id", "Name", "AccountId", "Account.Name", "Amount", "StageName", "Probability", "CloseDate",
    "CreatedDate", "SystemModstamp", "IsClosed", "IsWon", "Owner.Name", "Type", "LeadSource",
    "LastActivityDate", "LastStageChangeDate",
)
# Salesforce field -> canonical field (raw values; canonicalize() types them).
CANONICAL: dict[str, str] = {
    "Id": "opportunity_id",
    "Name": "name",
    "AccountId": "account_id",
    "Account.Name": "account_name",
    "Owner.Name": "owner",
    "StageName": "stage",
    "Amount": "amount",
    "CreatedDate": "created_date",
    "CloseDate": "close_date",
    "LastStageChangeDate": "stage_entered_date",
    "LastActivityDate": "last_activity_date",
    "LeadSource": "lead_source",
}
ID_BATCH = 200  # ids per `IN (...)` query: keeps the GET URL well under Salesforce's 16 KB limit
JWT_LIFETIME = timedelta(minutes=3)
HISTORY_KEY, PRODUCT_KEY = "_history", "_product"  # extra keys of a stored record


class SalesforceAPI:
    """Authenticated REST calls to one org. Re-authenticates once when a session expires (401)."""

    def __init__(self, cfg: SalesforceSourceConfig, http: HttpClient):
        self.cfg = cfg
        self.http = http
        self.instance_url = ""
        self._token = ""  # never logged
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"SalesforceAPI(source={self.cfg.name!r}, instance_url={self.instance_url!r})"

    @property
    def data_path(self) -> str:
        return f"/services/data/v{self.cfg.api_version}"

    def authenticate(self) -> None:
        """Get an access token (client credentials or JWT bearer) and the instance URL to call."""
        cfg = self.cfg
        if cfg.auth == "client_credentials":
            token_url = cfg.domain.rstrip("/") + "/services/oauth2/token"
            form = {"grant_type": "client_credentials", "client_id": cfg.client_id, "client_secret": cfg.client_secret}
            hint = "check client_id / client_secret and that the connected app enables the client credentials flow"
        else:
            token_url = cfg.login_url.rstrip("/") + "/services/oauth2/token"
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self._assertion()}
            hint = ("check client_id (consumer key), username, that the user is pre-authorized for the "
                    "connected app and that its certificate matches private_key_path")
        self.token_requests += 1
        try:
            body = self.http.request("POST", token_url, data=form, expect_json=True,
                                     headers={"Accept": "application/json"}).json()
        except FatalAPIError as exc:
            raise FatalAPIError(f"Salesforce sign-in failed for source '{cfg.name}' (auth: {cfg.auth}): {exc}; {hint}") from None
        token, instance = body.get("access_token"), body.get("instance_url")
        if not token or not isinstance(instance, str) or not instance.startswith(("https://", "http://")):
            raise FatalAPIError(f"Salesforce token response for source '{cfg.name}' has no access_token/instance_url")
        self._token, self.instance_url = token, instance.rstrip("/")
        self.http.base_url = self.instance_url
        log.info("Salesforce source '%s': signed in (%s), instance %s", cfg.name, cfg.auth, self.instance_url)

    def _assertion(self) -> str:
        cfg = self.cfg
        try:
            key = Path(cfg.private_key_path).read_bytes()
        except OSError as exc:
            raise FatalAPIError(
                f"Salesforce source '{cfg.name}': private_key_path '{cfg.private_key_path}' cannot be read "
                f"({exc.strerror}); point it at the PEM private key of the connected app's certificate"
            ) from None
        claims = {"iss": cfg.client_id, "sub": cfg.username, "aud": jwt_audience(cfg.login_url),
                  "exp": int((datetime.now(UTC) + JWT_LIFETIME).timestamp())}
        try:
            return jwt.encode(claims, key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise FatalAPIError(
                f"Salesforce source '{cfg.name}': private_key_path '{cfg.private_key_path}' is not a usable "
                f"RSA private key in PEM format ({type(exc).__name__})"
            ) from None

    def get(self, path_or_url: str, params: dict[str, str] | None = None) -> Any:
        """GET a data resource as JSON; a 401 INVALID_SESSION_ID signs in again once."""
        for attempt in (1, 2):
            resp = self.http.request(
                "GET", path_or_url, params=params, expect_json=True,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                         "Sforce-Query-Options": f"batchSize={self.cfg.page_size}"},
                ok=lambda r: r.status_code < 400 or (r.status_code in (401, 403) and bool(_error_list(r))),
            )
            usage = resp.headers.get("Sforce-Limit-Info")
            if usage:
                log.debug("Salesforce source '%s': %s", self.cfg.name, usage)
            if resp.status_code < 400:
                return resp.json()
            codes = _error_codes(resp)
            if resp.status_code == 401 and "INVALID_SESSION_ID" in codes and attempt == 1:
                log.info("Salesforce source '%s': session expired; signing in again", self.cfg.name)
                self.authenticate()
                continue
            message = _error_text(resp)
            if resp.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
                raise FatalAPIError(
                    f"Salesforce source '{self.cfg.name}': the org's API request limit is used up "
                    f"({message}; {usage or 'no usage header'}). Retrying will not help until the "
                    "24-hour window frees requests; see Setup > Company Information > API Requests"
                )
            what = "a new session was rejected too" if resp.status_code == 401 else "the request was refused"
            raise FatalAPIError(
                f"Salesforce source '{self.cfg.name}': {what} (HTTP {resp.status_code} on "
                f"{urlsplit(resp.url).path}): {message}; check that the integration user has API access "
                "and may read Opportunity"
            )
        raise AssertionError("unreachable")

    def query(self, soql: str, *, include_deleted: bool = False) -> Iterator[list[dict]]:
        """Yield the record pages of a SOQL query, following nextRecordsUrl until done."""
        endpoint = f"{self.data_path}/{'queryAll' if include_deleted else 'query'}"

        def fetch(cursor: str | int | None) -> tuple[list[dict], str | None]:
            body = self.get(endpoint, params={"q": soql}) if cursor is None else self.get(self._same_host(str(cursor)))
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise FatalAPIError(f"Salesforce source '{self.cfg.name}': a query answer has no 'records' list")
            nxt = None if body.get("done", True) else body.get("nextRecordsUrl")
            if not body.get("done", True) and not nxt:
                raise FatalAPIError(f"Salesforce source '{self.cfg.name}': a query page says done=false without nextRecordsUrl")
            return body["records"], nxt

        yield from paginate(fetch)

    def _same_host(self, next_url: str) -> str:
        """nextRecordsUrl is a path on the instance; an absolute one is reduced to its path so the
        token never goes to another host."""
        parts = urlsplit(next_url)
        return self.instance_url + parts.path + (f"?{parts.query}" if parts.query else "")


def jwt_audience(login_url: str) -> str:
    """The JWT `aud`: login.salesforce.com (test.salesforce.com for a sandbox) when the token
    endpoint is a My Domain host, otherwise `login_url` itself (login, test, a community URL)."""
    host = urlsplit(login_url).hostname or ""
    if host.endswith(".sandbox.my.salesforce.com"):
        return "https://test.salesforce.com"
    if host.endswith(".my.salesforce.com"):
        return "https://login.salesforce.com"
    return login_url.rstrip("/")


# ----------------------------------------------------------------------------- query building


def select_fields(cfg: SalesforceSourceConfig) -> list[str]:
    fields = list(BASE_FIELDS)
    if cfg.next_step_field and cfg.next_step_field not in fields:
        fields.append(cfg.next_step_field)
    opp_product = _opportunity_product_field(cfg)
    if opp_product and opp_product not in fields:
        fields.append(opp_product)
    return fields


def _opportunity_product_field(cfg: SalesforceSourceConfig) -> str | None:
    """`Opportunity.X` reads the product from the opportunity itself; anything else is a Product2 field."""
    pf = cfg.product_field
    return pf.split(".", 1)[1] if pf and pf.startswith("Opportunity.") else None


def _line_item_product_field(cfg: SalesforceSourceConfig) -> str | None:
    pf = cfg.product_field
    if not pf or pf.startswith("Opportunity."):
        return None
    return pf if pf.startswith("Product2.") else f"Product2.{pf}"


def opportunity_soql(fields: Iterable[str], *conditions: str | None) -> str:
    conds = [c for c in conditions if c]
    where = " WHERE " + " AND ".join(conds) if conds else ""
    return f"SELECT {', '.join(fields)} FROM Opportunity{where}"


def window(since: datetime, signpost: datetime) -> str:
    return f"SystemModstamp >= {soql_literal(since)} AND SystemModstamp < {soql_literal(signpost)}"


def query_fingerprint(cfg: SalesforceSourceConfig) -> str:
    """Changes when the stored records would no longer match the query (fields, where, product)."""
    shape = json.dumps([select_fields(cfg), where_clause(cfg.where), cfg.product_field], sort_keys=True)
    return hashlib.sha256(shape.encode()).hexdigest()[:12]


def make_cursor(signpost: datetime, fingerprint: str) -> str:
    return f"{soql_literal(signpost)};q={fingerprint}"


def parse_cursor(cursor: str | None) -> tuple[datetime | None, str | None]:
    if not cursor:
        return None, None
    stamp, _, rest = cursor.partition(";q=")
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None, None
    return when, rest or None


# ----------------------------------------------------------------------------- records


def flatten(record: dict, fields: Iterable[str]) -> dict[str, Any]:
    """The requested field paths of one SOQL record (`Account.Name` walks the nested object)."""
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = record
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[path] = value
    return out


def stage_entries(rows: Iterable[dict]) -> dict[str, list[list[str]]]:
    """OpportunityHistory rows -> per opportunity [[stage, entered], ...]: a row counts when StageName changed."""
    by_opp: dict[str, list[dict]] = {}
    for r in rows:
        by_opp.setdefault(r.get("OpportunityId"), []).append(r)
    out: dict[str, list[list[str]]] = {}
    for opp, items in by_opp.items():
        items.sort(key=lambda r: (r.get("CreatedDate") or "", r.get("Id") or ""))
        entries: list[list[str]] = []
        for r in items:
            stage = r.get("StageName")
            if stage and (not entries or entries[-1][0] != stage):
                entries.append([stage, r.get("CreatedDate")])
        out[opp] = entries
    return out


def main_product(rows: Iterable[dict], field: str) -> dict[str, Any]:
    """Per opportunity, the product of its line item with the largest TotalPrice (first on ties)."""
    best: dict[str, tuple[float, Any]] = {}
    for r in rows:
        value = flatten(r, [field])[field]
        if value in (None, ""):
            continue
        price = float(r.get("TotalPrice") or 0)
        opp = r.get("OpportunityId")
        if opp not in best or price > best[opp][0]:
            best[opp] = (price, value)
    return {k: v for k, (_, v) in best.items()}


def status_of(rec: dict) -> str | None:
    if rec.get("IsWon") is True:
        return "won"
    if rec.get("IsClosed") is True:
        return "lost"
    return "open" if rec.get("IsClosed") is False else None


def to_frames(
    payloads: list[dict], cfg: SalesforceSourceConfig, fields: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Stored payloads -> (records, history, raw, notes)."""
    type_map = {k.strip().lower(): v for k, v in {**DEFAULT_TYPE_MAP, **(cfg.type_map or {})}.items()}
    opp_product = _opportunity_product_field(cfg)
    product_col = cfg.product_field if _line_item_product_field(cfg) else None
    rows, hist, raw, unknown_types = [], [], [], {}
    for i, p in enumerate(payloads, start=1):
        rec = {canon: p.get(sf) for sf, canon in CANONICAL.items()}
        rec["_row"] = i
        rec["status"] = status_of(p)
        sf_type = p.get("Type")
        mapped = type_map.get(str(sf_type).strip().lower()) if sf_type not in (None, "") else None
        if sf_type not in (None, "") and mapped is None:
            unknown_types[sf_type] = unknown_types.get(sf_type, 0) + 1
        rec["deal_type"] = mapped or sf_type
        rec["product"] = p.get(opp_product) if opp_product else p.get(PRODUCT_KEY)
        rec["next_step_date"] = p.get(cfg.next_step_field) if cfg.next_step_field else None
        rows.append(rec)
        hist += [{"opportunity_id": p.get("Id"), "stage": s, "entered_date": d} for s, d in p.get(HISTORY_KEY) or []]
        r = {f: p.get(f) for f in fields}
        if product_col:
            r[product_col] = p.get(PRODUCT_KEY)
        raw.append(r)
    notes = [
        f"Type '{t}' ({n} opportunit{'y' if n == 1 else 'ies'}) is not in type_map: add it as new or existing"
        for t, n in sorted(unknown_types.items())
    ]
    canon_cols = [*CANONICAL.values(), "status", "deal_type", "product", "next_step_date", "_row"]
    records = pd.DataFrame(rows, columns=canon_cols, dtype=object)
    records["_row"] = records["_row"].astype("int64")
    history = pd.DataFrame(hist, columns=["opportunity_id", "stage", "entered_date"], dtype=object)
    raw_cols = fields + ([product_col] if product_col else [])
    return records, history, pd.DataFrame(raw, columns=raw_cols, dtype=object), notes


# ----------------------------------------------------------------------------- extract


def extract(
    cfg: SalesforceSourceConfig,
    ctx: ExtractContext,
    *,
    session: requests.Session | None = None,
    policy: RetryPolicy | None = None,
) -> Extracted:
    """Extract one Salesforce org's opportunities (and stage history) for this run."""
    started = time.monotonic()
    obs = ctx.observer
    before = (obs.requests, obs.retries, obs.waited_seconds)
    http = HttpClient(session or build_session(cfg.ca_bundle, cfg.verify_tls), timeout=cfg.timeout,
                      policy=policy or ctx.retry_policy or RetryPolicy(), observer=obs, service="Salesforce")
    api = SalesforceAPI(cfg, http)
    api.authenticate()

    fields = select_fields(cfg)
    user_where = where_clause(cfg.where)
    started_at = ctx.run_started if ctx.run_started.tzinfo else ctx.run_started.replace(tzinfo=UTC)
    signpost = started_at.astimezone(UTC).replace(microsecond=0)  # SOQL datetimes have whole seconds
    fingerprint = query_fingerprint(cfg)
    use_state = ctx.engine is not None and cfg.incremental
    notes: list[str] = []

    cursor_at: datetime | None = None
    stored_ids: set[str] = set()
    stored_version = source_state.get_version(ctx.engine, cfg.name) if use_state else None
    if use_state and not ctx.full_refresh:
        cursor_at, stored_fp = parse_cursor(source_state.get_cursor(ctx.engine, cfg.name))
        if cursor_at is not None and stored_fp != fingerprint:
            notes.append("the query changed (fields, where or product_field): state rebuilt from a full read")
            cursor_at = None
        if cursor_at is not None:
            stored_ids = source_state.stored_ids(ctx.engine, cfg.name)
            if not stored_ids:
                cursor_at = None
    incremental = cursor_at is not None
    since = min(cursor_at, signpost) - timedelta(seconds=cfg.overlap_seconds) if cursor_at else None

    soql = opportunity_soql(fields, window(since, signpost) if since else None,
                            f"({user_where})" if user_where else None)
    changed: dict[str, dict] = {}
    for pages, page in enumerate(api.query(soql), start=1):
        for rec in page:
            flat = flatten(rec, fields)
            changed[flat["Id"]] = flat
        obs.event("page", source=cfg.name, records=len(changed), pages=pages)
    _enrich(api, cfg, changed)

    deletes: list[str] = []
    if since:
        deletes = sorted((_gone_ids(api, since, signpost, user_where) - set(changed)) & stored_ids)
        kept = source_state.load_some(ctx.engine, cfg.name, changed)
        same = not deletes and all(kept.get(k) == v for k, v in changed.items())  # e.g. re-read in the overlap
        if same and stored_version is not None and stored_version.version == ctx.cached_version:
            return Extracted(
                source=cfg.name, records=pd.DataFrame(), notes=[*notes, "nothing changed since the last run"],
                seconds=time.monotonic() - started, requests=obs.requests - before[0],
                retries=obs.retries - before[1], waited_seconds=obs.waited_seconds - before[2],
                pending_state=PendingState(cursor=make_cursor(signpost, fingerprint)),
                version=stored_version.version, reused=True)
        merged = {p["Id"]: p for p in source_state.load_records(ctx.engine, cfg.name)}
        for rid in deletes:
            merged.pop(rid, None)
        merged.update(changed)
    else:
        merged, same = changed, False
    payloads = [merged[k] for k in sorted(merged)]
    records, history, raw, type_notes = to_frames(payloads, cfg, fields)
    notes += type_notes

    pending = None
    if use_state:
        previous = stored_version.version if stored_version else None
        keep = incremental and same and previous is not None
        version = source_state.SourceVersion(previous if keep and previous else source_state.new_version(
            previous, cfg.name, make_cursor(signpost, fingerprint), len(changed), len(deletes)), {})
        pending = PendingState(cursor=make_cursor(signpost, fingerprint), upserts=list(changed.items()),
                               deletes=deletes, replace_all=not incremental, version=version)
    log.info("Salesforce source '%s': %s read, %d changed, %d deleted, %d current",
             cfg.name, "incremental" if incremental else "full", len(changed), len(deletes), len(payloads))
    return Extracted(
        source=cfg.name, records=records, history=history, raw=raw if cfg.raw_sheet else None, notes=notes,
        field_history=salesforce_history.field_history_frame(payloads),
        seconds=time.monotonic() - started, requests=obs.requests - before[0],
        retries=obs.retries - before[1], waited_seconds=obs.waited_seconds - before[2],
        pending_state=pending,
        version=pending.version.version if pending is not None and pending.version else None,
        delta_base=stored_version.version if incremental and stored_version is not None else None,
        delta_ids=frozenset([*changed, *deletes]) if incremental else None,
    )


def from_state(cfg: SalesforceSourceConfig, payloads: list[dict]) -> Extracted:
    """The stored current records (source_state.load_records) as this source's frames, marked
    stale: what the flow should hand on when the org cannot be reached."""
    ordered = sorted(payloads, key=lambda p: str(p.get("Id") or ""))
    records, history, raw, notes = to_frames(ordered, cfg, select_fields(cfg))
    return Extracted(source=cfg.name, records=records, history=history, raw=raw if cfg.raw_sheet else None,
                     field_history=salesforce_history.field_history_frame(ordered),
                     stale=True, notes=[f"source '{cfg.name}' failed; data from an earlier run", *notes])


def _enrich(api: SalesforceAPI, cfg: SalesforceSourceConfig, recs: dict[str, dict]) -> None:
    """Add stage history and (from line items) the product to each record, in place."""
    ids = sorted(recs)
    history_rows = list(_by_ids(api, f"SELECT {salesforce_history.HISTORY_FIELDS} FROM OpportunityHistory"
                                     " WHERE OpportunityId IN ({ids}) ORDER BY OpportunityId, CreatedDate", ids))
    entries = stage_entries(history_rows)
    changes = salesforce_history.field_entries(history_rows)  # issue 22: close date / amount history
    for rid, rec in recs.items():
        rec[HISTORY_KEY] = entries.get(rid, [])
        rec[salesforce_history.FIELD_HISTORY_KEY] = changes.get(rid, [])
    product_field = _line_item_product_field(cfg)
    if product_field:
        items = _by_ids(api, f"SELECT OpportunityId, TotalPrice, {product_field} FROM OpportunityLineItem"
                             " WHERE OpportunityId IN ({ids})", ids)
        products = main_product(items, product_field)
        for rid, rec in recs.items():
            rec[PRODUCT_KEY] = products.get(rid)


def _by_ids(api: SalesforceAPI, template: str, ids: list[str]) -> Iterator[dict]:
    for i in range(0, len(ids), ID_BATCH):
        literal = ", ".join(soql_literal(x) for x in ids[i:i + ID_BATCH])
        for page in api.query(template.replace("{ids}", literal)):
            yield from page


def _gone_ids(api: SalesforceAPI, since: datetime, signpost: datetime, user_where: str | None) -> set[str]:
    """Ids deleted in the window (queryAll sees IsDeleted rows). With a `where`, every id changed
    in the window: the caller drops those that no longer match it."""
    win = window(since, signpost)
    if user_where:
        soql = f"SELECT Id FROM Opportunity WHERE {win}"
    else:
        soql = f"SELECT Id FROM Opportunity WHERE IsDeleted = true AND {win}"
    return {r["Id"] for page in api.query(soql, include_deleted=True) for r in page}


def _error_codes(resp: requests.Response) -> set[str]:
    return {str(e.get("errorCode")) for e in _error_list(resp)}


def _error_text(resp: requests.Response) -> str:
    return "; ".join(f"{e.get('errorCode')}: {e.get('message')}" for e in _error_list(resp)) or f"HTTP {resp.status_code}"


def _error_list(resp: requests.Response) -> list[dict]:
    try:
        body = resp.json()
    except ValueError:
        return []
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []
