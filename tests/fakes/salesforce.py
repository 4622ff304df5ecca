"""A Salesforce REST fake (api-contracts.md section 3), served over HTTPS by tests.fakes.server.

It implements what the connector uses, the way Salesforce does it:
- POST /services/oauth2/token for client credentials (id/secret in the form or as Basic) and the
  JWT bearer flow (RS256 signature checked with the test's public key, iss/sub/aud/exp checked);
  the success and error bodies are those of api-contracts.md section 3.1 (the recorded
  oauth_*.json samples in ../shared/fixtures/real/salesforce/ have the same keys:
  tests/sources/test_recorded_samples.py).
- GET /services/data/ (versions), /vXX.X/limits (section 3.5, from this fake's counters), /vXX.X/query and
  /queryAll with a small SOQL evaluator (SELECT fields FROM object WHERE ... ORDER BY ...),
  paging through `nextRecordsUrl` (relative, `done`, `totalSize`) at `page_size` rows.
- Error arrays `[{"message", "errorCode"}]`, `Sforce-Limit-Info: api-usage=n/max` on every data
  answer (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm),
  `/limits` with this org's `DailyApiRequests` {Max, Remaining} (every data request counts, /limits
  too; https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_limits.htm).
- 403 REQUEST_LIMIT_EXCEEDED for two different limits, as Salesforce does: "TotalRequests Limit
  exceeded." once the daily allocation is used up (rolling 24 h), and "ConcurrentPerOrgLongTxn
  Limit exceeded." while the org has too many long-running requests (25 of 20 s or more in
  production), which clears by itself
  (https://developer.salesforce.com/docs/atlas.en-us.salesforce_app_limits_cheatsheet.meta/salesforce_app_limits_cheatsheet/salesforce_app_limits_platform_api.htm,
  https://help.salesforce.com/s/articleView?id=000389067&type=1).
- SOQL `LIMIT n`; comparisons and ORDER BY on Id fields are exact (case-sensitive ids), so keyset
  paging `WHERE Id > :last ORDER BY Id LIMIT n` walks every id once.
- A deleted record stays visible to queryAll (IsDeleted = true) while it sits in the Recycle Bin;
  `purge` removes it for good, as the Recycle Bin does after about 15 days
  (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_queryall.htm).
Switches: `faults[n]` acts on the n-th data request: "expire" (every session becomes invalid:
401 INVALID_SESSION_ID), "503", "500", "drop" (connection closed), "truncate" (half a body),
"busy" (403 REQUEST_LIMIT_EXCEEDED, the concurrent long-running limit), "exhaust" (another
integration uses up the daily allocation just before this request).
`recorded_pages = {...}` (bodies a test read from the recorded simple-salesforce pages) answers
every query with them instead.
Currencies: `multi_currency` turns on Opportunity.CurrencyIsoCode and CurrencyType
(`currency_types`; Object Reference "CurrencyType": not available in single-currency orgs);
`advanced_currency` (advanced currency management) turns on DatedConversionRate (`dated_rates`,
with `NextStartDate` filled in as the read-only day the next rate of the same IsoCode starts;
Object Reference "DatedConversionRate"). Without them the objects answer INVALID_TYPE and the
field INVALID_FIELD, as an org without the feature does.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.models import SalesforceSourceConfig
from connectors.extracted import ExtractContext, Extracted
from connectors.http.session import Observer, RetryPolicy
from connectors.sources.salesforce import extract
from tests.fakes.server import FakeServer, Request, Response

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SF_DATETIME = "%Y-%m-%dT%H:%M:%S.%f%z"

# object -> (fields, relationship name -> (related object, its fields))
SCHEMA: dict[str, tuple[set[str], dict[str, tuple[str, set[str]]]]] = {
    "Opportunity": (
        {"Id", "Name", "AccountId", "Amount", "StageName", "Probability", "CloseDate", "CreatedDate",
         "LastModifiedDate", "SystemModstamp", "IsClosed", "IsWon", "OwnerId", "Type", "LeadSource",
         "LastActivityDate", "LastStageChangeDate", "NextStep", "IsDeleted", "Next_Step_Date__c",
         "Product_Line__c", "Region__c", "ForecastCategoryName", "ForecastCategory", "CurrencyIsoCode"},
        {"Account": ("Account", {"Id", "Name", "Industry"}), "Owner": ("User", {"Id", "Name"})},
    ),
    "OpportunityHistory": (
        {"Id", "OpportunityId", "StageName", "Amount", "CloseDate", "Probability", "CreatedDate",
         "SystemModstamp", "IsDeleted"},
        {},
    ),
    "OpportunityLineItem": (
        {"Id", "OpportunityId", "Product2Id", "Quantity", "UnitPrice", "TotalPrice", "SystemModstamp", "IsDeleted"},
        {"Product2": ("Product2", {"Id", "Name", "Family", "ProductCode"})},
    ),
    "CurrencyType": ({"Id", "IsoCode", "ConversionRate", "DecimalPlaces", "IsActive", "IsCorporate"}, {}),
    "DatedConversionRate": ({"Id", "IsoCode", "ConversionRate", "StartDate", "NextStartDate"}, {}),
}
# the standard StageName picklist's default forecast categories (Setup > Opportunity Stages)
STAGE_FORECAST = {"Closed Won": "Closed", "Closed Lost": "Omitted"}
MULTI_CURRENCY_ONLY = {("Opportunity", "CurrencyIsoCode"), ("CurrencyType", None), ("DatedConversionRate", None)}


class SoqlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, [{"message": message, "errorCode": code}], headers=headers or {})


def oauth_error(code: str, description: str) -> Response:
    """A token endpoint refusal: 400 {"error", "error_description"} (api-contracts.md 3.1)."""
    return Response(400, {"error": code, "error_description": description})


@dataclass
class SalesforceFake:
    instance_url: str = ""  # set to the server's URL once it runs
    client_id: str = "3MVG9fake.consumer.key"
    client_secret: str = "fake-client-secret-0123456789"
    username: str = "integration@acme.example"
    public_key_pem: bytes | None = None  # for JWT bearer; the test keeps the private key
    jwt_audience: str = ""  # the login_url the connector is configured with
    versions: tuple[str, ...] = ("64.0", "65.0", "66.0")
    page_size: int = 2
    api_max: int = 15000
    api_used: int = 0
    faults: dict[int, str] = field(default_factory=dict)
    recorded_pages: dict[str, Any] | None = None  # sample name -> body, e.g. "query_page1_nextRecordsUrl.json"
    opportunities: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    line_items: list[dict] = field(default_factory=list)
    multi_currency: bool = False
    advanced_currency: bool = False
    currency_types: list[dict] = field(default_factory=list)  # IsoCode, ConversionRate, IsCorporate, IsActive
    dated_rates: list[dict] = field(default_factory=list)  # IsoCode, ConversionRate, StartDate
    # what happened
    data_requests: int = 0
    token_grants: list[str] = field(default_factory=list)
    queries: list[tuple[str, str]] = field(default_factory=list)  # (query|queryAll, soql)
    served: list[tuple[str, str, int]] = field(default_factory=list)  # (query|queryAll, object, rows) per page
    issued_tokens: list[str] = field(default_factory=list)
    _tokens: set[str] = field(default_factory=set)
    _locators: dict[str, tuple[str, list[dict], int]] = field(default_factory=dict)
    server: FakeServer | None = None

    # ------------------------------------------------------------------ data helpers

    def add(self, rec: dict) -> dict:
        base = {"IsDeleted": False, "IsClosed": False, "IsWon": False, "Account": None, "Owner": None}
        rec = {**base, **rec}
        # Salesforce fills ForecastCategoryName from the stage's default (OpportunityStage) unless set
        rec.setdefault("ForecastCategoryName", STAGE_FORECAST.get(rec.get("StageName"), "Pipeline"))
        self.opportunities[rec["Id"]] = rec
        return rec

    def update(self, opp_id: str, modstamp: str, **values: Any) -> None:
        self.opportunities[opp_id].update(values, SystemModstamp=modstamp, LastModifiedDate=modstamp)

    def delete(self, opp_id: str, modstamp: str) -> None:
        self.update(opp_id, modstamp, IsDeleted=True)

    def purge(self, opp_id: str) -> None:
        """Gone from the Recycle Bin: no query, not even queryAll, sees it any more."""
        del self.opportunities[opp_id]

    def add_history(self, opp_id: str, stage: str, created: str, **values: Any) -> None:
        self.history.append({"Id": f"008{len(self.history):015d}", "OpportunityId": opp_id, "StageName": stage,
                             "CreatedDate": created, "SystemModstamp": created, "IsDeleted": False, **values})

    def rows_served(self, obj: str, kind: str = "query") -> int:
        return sum(n for k, o, n in self.served if o == obj and k == kind)

    # ------------------------------------------------------------------ HTTP

    def __call__(self, req: Request) -> Response:
        if req.path == "/services/oauth2/token" and req.method == "POST":
            return self._token(req)
        if req.path.startswith("/services/data") or req.path.startswith("/query"):
            return self._data(req)
        return error(404, "NOT_FOUND", "The requested resource does not exist")

    def _token(self, req: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        grant = form.get("grant_type", "")
        self.token_grants.append(grant)
        if grant == "client_credentials":
            cid, secret = form.get("client_id"), form.get("client_secret")
            auth = req.headers.get("authorization", "")
            if auth.startswith("Basic "):
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            if cid != self.client_id:
                return oauth_error("invalid_client_id", "client identifier invalid")
            if secret != self.client_secret:
                return oauth_error("invalid_client", "invalid client credentials")
        elif grant == JWT_GRANT:
            try:
                claims = jwt.decode(form.get("assertion", ""), self.public_key_pem, algorithms=["RS256"],
                                    audience=self.jwt_audience, issuer=self.client_id,
                                    options={"require": ["exp", "iss", "sub", "aud"]})
            except (jwt.PyJWTError, ValueError):
                return oauth_error("invalid_grant", "user hasn't approved this consumer")
            if claims["sub"] != self.username:
                return oauth_error("invalid_grant", "user hasn't approved this consumer")
        else:
            return oauth_error("unsupported_grant_type", "grant type not supported")
        token = "00DFAKE!" + secrets.token_urlsafe(24)
        self._tokens.add(token)
        self.issued_tokens.append(token)
        issued = int(datetime.now(UTC).timestamp() * 1000)
        body = {"access_token": token, "scope": "api", "instance_url": self.instance_url,
                "id": f"{self.instance_url}/id/00DFAKE0000000001/005FAKE0000000001", "token_type": "Bearer",
                "issued_at": str(issued), "signature": base64.b64encode(secrets.token_bytes(32)).decode()}
        return Response(200, body)

    def _data(self, req: Request) -> Response:
        self.data_requests += 1
        fault = self.faults.get(self.data_requests)
        if fault == "expire":
            self._tokens.clear()
        elif fault == "drop":
            return Response(drop=True)
        elif fault in ("500", "503"):
            return error(int(fault), "SERVER_UNAVAILABLE", "Server unavailable, try again later")
        elif fault == "exhaust":
            self.api_used = max(self.api_used, self.api_max)
        if req.headers.get("authorization", "").removeprefix("Bearer ") not in self._tokens:
            return error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if fault == "busy":  # refused before it runs: not counted against the daily allocation (unverified)
            return error(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.",
                         {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_max}"})
        self.api_used += 1
        usage = {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_max}"}
        if self.api_used > self.api_max:
            return error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", usage)
        resp = self._route(req)
        resp.headers.update(usage)
        if fault == "truncate":
            resp.truncate_at = len(resp.payload()[0]) // 2
        return resp

    def _route(self, req: Request) -> Response:
        if req.path.rstrip("/") == "/services/data":
            return Response(200, [{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in self.versions])
        if self.recorded_pages is not None and req.path.startswith("/query"):
            return Response(200, self.recorded_pages["query_page2_done.json" if req.path.startswith("/query/")
                                                     else "queryAll_page2_done.json"])
        m = re.fullmatch(r"/services/data/v(\d+\.\d)/(query|queryAll|limits)(?:/([\w-]+))?/?", req.path)
        if not m or m.group(1) not in self.versions:
            return error(404, "NOT_FOUND", "The requested resource does not exist")
        version, kind, locator = m.groups()
        if kind == "limits":
            return Response(200, {"DailyApiRequests": {"Max": self.api_max,
                                                       "Remaining": max(0, self.api_max - self.api_used)}})
        if self.recorded_pages is not None:
            return Response(200, self.recorded_pages["query_page1_nextRecordsUrl.json" if kind == "query"
                                                     else "queryAll_page1_nextRecordsUrl.json"])
        if locator:
            if locator not in self._locators:
                return error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            obj, rows, start = self._locators[locator]  # a locator can be read again (retries)
            return self._page(version, kind, obj, rows, start, req)
        soql = req.q("q") or ""
        self.queries.append((kind, soql))
        try:
            obj, rows = self.run_soql(soql, include_deleted=kind == "queryAll")
        except SoqlError as exc:
            return error(400, exc.code, str(exc))
        return self._page(version, kind, obj, rows, 0, req)

    def _page(self, version: str, kind: str, obj: str, rows: list[dict], start: int, req: Request) -> Response:
        size = self.page_size
        opt = re.search(r"batchSize=(\d+)", req.headers.get("sforce-query-options", ""))
        if opt:
            size = min(size, int(opt.group(1)))
        chunk = rows[start:start + size]
        self.served.append((kind, obj, len(chunk)))
        body: dict[str, Any] = {"totalSize": len(rows), "done": start + size >= len(rows), "records": chunk}
        if not body["done"]:
            loc = f"01g{secrets.token_hex(6).upper()}-{start + size}"
            self._locators[loc] = (obj, rows, start + size)
            body["nextRecordsUrl"] = f"/services/data/v{version}/{kind}/{loc}"
        return Response(200, body)

    # ------------------------------------------------------------------ SOQL

    def run_soql(self, soql: str, include_deleted: bool = False) -> tuple[str, list[dict]]:
        m = re.fullmatch(r"\s*SELECT\s+(.+?)\s+FROM\s+(\w+)(?:\s+WHERE\s+(.+?))?(?:\s+ORDER\s+BY\s+(.+?))?"
                         r"(?:\s+LIMIT\s+(\d+))?\s*", soql, re.I | re.S)
        if not m:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token in: {soql[:60]}")
        fields = [f.strip() for f in m.group(1).split(",")]
        obj = m.group(2)
        if obj not in SCHEMA or (obj == "CurrencyType" and not self.multi_currency) or (
                obj == "DatedConversionRate" and not self.advanced_currency):
            raise SoqlError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
        for f in fields:
            self._check_field(obj, f)
        table = {"Opportunity": list(self.opportunities.values()), "OpportunityHistory": self.history,
                 "OpportunityLineItem": self.line_items, "CurrencyType": self.currency_types,
                 "DatedConversionRate": self._dated_with_next()}[obj]
        pred = Where(m.group(3), lambda f: self._check_field(obj, f)).parse() if m.group(3) else (lambda r: True)
        rows = [r for r in table if (include_deleted or not r.get("IsDeleted")) and pred(r)]
        if m.group(4):
            for part in reversed([p.strip() for p in m.group(4).split(",")]):
                name, _, direction = part.partition(" ")
                self._check_field(obj, name)
                rows.sort(key=lambda r, n=name: (value_at(r, n) is not None, value_at(r, n) or ""),
                          reverse=direction.strip().upper() == "DESC")
        if m.group(5):
            rows = rows[:int(m.group(5))]
        return obj, [self._render(obj, r, fields) for r in rows]

    def _dated_with_next(self) -> list[dict]:
        """The dated rates with NextStartDate: the StartDate of the same IsoCode's next rate (None for the last)."""
        out = []
        for r in self.dated_rates:
            later = sorted(x["StartDate"] for x in self.dated_rates if x["IsoCode"] == r["IsoCode"]
                           and x["StartDate"] > r["StartDate"])
            out.append({"Id": f"04w{len(out):015d}", **r, "NextStartDate": later[0] if later else None})
        return out

    def _check_field(self, obj: str, path: str) -> None:
        if (obj, path) in MULTI_CURRENCY_ONLY and not self.multi_currency:
            raise SoqlError("INVALID_FIELD", f"No such column '{path}' on entity '{obj}'.")
        own, rels = SCHEMA[obj]
        parts = path.split(".")
        ok = (len(parts) == 1 and parts[0] in own) or (
            len(parts) == 2 and parts[0] in rels and parts[1] in rels[parts[0]][1])
        if not ok:
            raise SoqlError("INVALID_FIELD", f"No such column '{path}' on entity '{obj}'.")

    def _render(self, obj: str, row: dict, fields: list[str]) -> dict:
        out: dict[str, Any] = {"attributes": {"type": obj, "url": f"/services/data/v66.0/sobjects/{obj}/{row['Id']}"}}
        rels = SCHEMA[obj][1]
        for f in fields:
            if "." not in f:
                out[f] = row.get(f)
                continue
            rel, sub = f.split(".")
            related = row.get(rel)
            if related is None:
                out[rel] = None
                continue
            target = out.get(rel) or {"attributes": {"type": rels[rel][0], "url": f"/services/data/v66.0/sobjects/{rels[rel][0]}/x"}}
            target[sub] = related.get(sub)
            out[rel] = target
        return out


def value_at(row: dict, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:\\.|[^'\\])*')
  | (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|<>|=|<|>|\(|\)|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
)""", re.X)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\", "_": "\\_", "%": "\\%"}


def unescape(literal: str) -> str:
    """The value of a quoted SOQL string literal."""
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _UNESCAPE:
                raise SoqlError("MALFORMED_QUERY", "invalid escape sequence in a string literal")
            out.append(_UNESCAPE[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token at: {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


Pred = Callable[[dict], bool]


class Where:
    """Recursive-descent evaluator for the WHERE clauses the connector and tests write."""

    def __init__(self, text: str, check_field: Callable[[str], None]):
        self.tokens = tokenize(text)
        self.i = 0
        self.check_field = check_field

    def parse(self) -> Pred:
        pred = self._or()
        if self.i != len(self.tokens):
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: {self.tokens[self.i][1]}")
        return pred

    def _peek(self) -> str:
        return self.tokens[self.i][1].upper() if self.i < len(self.tokens) else ""

    def _take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise SoqlError("MALFORMED_QUERY", "unexpected end of WHERE clause")
        self.i += 1
        return self.tokens[self.i - 1]

    def _or(self) -> Pred:
        parts = [self._and()]
        while self._peek() == "OR":
            self.i += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda r: any(p(r) for p in parts))

    def _and(self) -> Pred:
        parts = [self._not()]
        while self._peek() == "AND":
            self.i += 1
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else (lambda r: all(p(r) for p in parts))

    def _not(self) -> Pred:
        if self._peek() == "NOT":
            self.i += 1
            inner = self._not()
            return lambda r: not inner(r)
        if self._peek() == "(":
            self.i += 1
            inner = self._or()
            if self._take()[1] != ")":
                raise SoqlError("MALFORMED_QUERY", "expected )")
            return inner
        return self._comparison()

    def _comparison(self) -> Pred:
        kind, name = self._take()
        if kind != "word":
            raise SoqlError("MALFORMED_QUERY", f"expected a field, got {name}")
        self.check_field(name)
        op = self._take()[1].upper()
        exact = name == "Id" or name.endswith("Id")  # an id is compared as it is (case-sensitive)
        if op == "NOT" and self._peek() == "IN":
            self.i += 1
            values = self._list()
            return lambda r: not any(_equal(value_at(r, name), v, exact) for v in values)
        if op == "IN":
            values = self._list()
            return lambda r: any(_equal(value_at(r, name), v, exact) for v in values)
        if op == "LIKE":
            pattern = _like(self._value())
            return lambda r: isinstance(value_at(r, name), str) and bool(pattern.fullmatch(value_at(r, name)))
        if op not in ("=", "!=", "<>", "<", "<=", ">", ">="):
            raise SoqlError("MALFORMED_QUERY", f"unexpected operator {op}")
        value = self._value()
        return lambda r: _compare(value_at(r, name), op, value, exact)

    def _list(self) -> list[Any]:
        if self._take()[1] != "(":
            raise SoqlError("MALFORMED_QUERY", "expected ( after IN")
        values = [self._value()]
        while self._peek() == ",":
            self.i += 1
            values.append(self._value())
        if self._take()[1] != ")":
            raise SoqlError("MALFORMED_QUERY", "expected ) after the IN list")
        return values

    def _value(self) -> Any:
        kind, text = self._take()
        if kind == "str":
            return unescape(text)
        if kind == "dt":
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        if kind == "date":
            return text
        if kind == "num":
            return float(text)
        if kind == "word" and text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text.lower()]
        raise SoqlError("MALFORMED_QUERY", f"unexpected value {text}")


def _norm(field_value: Any, literal: Any, exact: bool = False) -> tuple[Any, Any]:
    if isinstance(literal, datetime) and isinstance(field_value, str):
        return datetime.strptime(field_value, SF_DATETIME), literal
    if isinstance(literal, str) and isinstance(field_value, str) and not exact:
        return field_value.lower(), literal.lower()  # SOQL text comparison ignores case
    return field_value, literal


def _equal(field_value: Any, literal: Any, exact: bool = False) -> bool:
    a, b = _norm(field_value, literal, exact)
    return a == b


def _compare(field_value: Any, op: str, literal: Any, exact: bool = False) -> bool:
    if op in ("=", "!=", "<>"):
        return _equal(field_value, literal, exact) == (op == "=")
    if field_value is None or literal is None:
        return False
    a, b = _norm(field_value, literal, exact)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _like(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.I | re.S)


# ----------------------------------------------------------------------------- test harness
# Sample data and helpers shared by the tests/test_salesforce*.py modules.

STAGE_MAP = {
    "Prospecting": "Lead generation",
    "Needs Analysis": "Contact",
    "Proposal/Price Quote": "Proposal",
    "Negotiation/Review": "Closing",
    "Closed Won": "Won",
    "Closed Lost": "Lost",
}
RUN_1 = datetime(2025, 5, 2, 0, 0, 0, 400000, tzinfo=UTC)


def oid(n: int) -> str:
    return f"006{n:015d}"


def seed(fake: SalesforceFake) -> None:
    """Five opportunities, their stage history and line items (Salesforce's standard picklists)."""
    def opp(n: int, name: str, stage: str, **kw: object) -> None:
        fake.add({"Id": oid(n), "Name": name, "StageName": stage, "AccountId": f"001{n:015d}",
                  "Account": {"Name": kw.pop("account", f"Account {n}")}, "Owner": {"Name": kw.pop("owner", "Dana Lee")},
                  "CreatedDate": f"2025-03-0{n}T09:00:00.000+0000", "SystemModstamp": f"2025-04-0{n}T08:00:00.000+0000",
                  "Probability": 10.0, "LeadSource": "Web", **kw})

    opp(1, "Acme renewal", "Proposal/Price Quote", account="Acme", Amount=12500.0, Probability=75.0,
        CloseDate="2025-06-30", Type="Renewal", LastActivityDate="2025-04-28",
        LastStageChangeDate="2025-04-15T10:00:00.000+0000", Next_Step_Date__c="2025-05-10")
    opp(2, "Globex new logo", "Prospecting", Amount=8000.0, CloseDate="2025-07-15", Type="New Customer")
    opp(3, "Initech upgrade", "Closed Won", Amount=4000.0, CloseDate="2025-04-20", IsClosed=True, IsWon=True,
        Type="Existing Customer - Upgrade", owner="Sam Roe")
    opp(4, "Umbrella pilot", "Closed Lost", Amount=None, CloseDate="2025-04-25", IsClosed=True, Type=None)
    fake.opportunities[oid(4)]["Account"] = None
    fake.opportunities[oid(4)]["AccountId"] = None
    opp(5, "Hooli expansion", "Needs Analysis", Amount=20000.0, CloseDate="2025-08-01", Type="New Business")
    fake.add_history(oid(1), "Prospecting", "2025-03-01T09:00:00.000+0000", Amount=10000.0)
    fake.add_history(oid(1), "Prospecting", "2025-03-10T09:00:00.000+0000", Amount=12500.0)  # amount only
    fake.add_history(oid(1), "Needs Analysis", "2025-03-20T09:00:00.000+0000")
    fake.add_history(oid(1), "Proposal/Price Quote", "2025-04-15T10:00:00.000+0000")
    fake.add_history(oid(3), "Closed Won", "2025-04-20T12:00:00.000+0000")
    fake.line_items += [
        {"Id": "00k1", "OpportunityId": oid(1), "TotalPrice": 2500.0, "Product2": {"Family": "Services"}},
        {"Id": "00k2", "OpportunityId": oid(1), "TotalPrice": 10000.0, "Product2": {"Family": "Software"}},
        {"Id": "00k3", "OpportunityId": oid(2), "TotalPrice": 8000.0, "Product2": {"Family": "Services"}},
        {"Id": "00k4", "OpportunityId": oid(3), "TotalPrice": 4000.0, "Product2": {"Family": None}},
    ]


def rsa_key_pair() -> tuple[bytes, bytes]:
    """(private PKCS8 PEM, public PEM) for the JWT bearer flow."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@contextmanager
def running_fake(tmp_path: Path, public_key_pem: bytes | None = None) -> Iterator[SalesforceFake]:
    """The seeded fake served over HTTPS; `fake.server` is its FakeServer."""
    sf = SalesforceFake(public_key_pem=public_key_pem)
    seed(sf)
    with FakeServer(sf, tmp_path) as srv:
        sf.instance_url = srv.url
        sf.jwt_audience = srv.url
        sf.server = srv
        yield sf


def make_cfg(fake: SalesforceFake, **over: object) -> SalesforceSourceConfig:
    """Client-credentials config against the running fake, trusting its CA."""
    srv = fake.server
    data = {"type": "salesforce", "name": "sfdc", "domain": srv.url, "client_id": fake.client_id,
            "client_secret": fake.client_secret, "ca_bundle": srv.ca_path, "stage_map": STAGE_MAP,
            "product_field": "Family", "next_step_field": "Next_Step_Date__c", "raw_sheet": "Salesforce raw", **over}
    return SalesforceSourceConfig.model_validate(data)


def make_ctx(engine: Any = None, run_started: datetime = RUN_1, full_refresh: bool = False,
             events: list | None = None) -> ExtractContext:
    """A run's context; `events` collects the observer's progress events."""
    obs = Observer(on_event=(lambda kind, data: events.append((kind, dict(data)))) if events is not None else None)
    return ExtractContext(engine=engine, observer=obs, as_of=run_started.date(), run_started=run_started,
                          tz=ZoneInfo("UTC"), full_refresh=full_refresh)


FAST = RetryPolicy(sleep=lambda s: None, jitter=False, backoff_base=0.01, max_attempts=4)


def run(fake: SalesforceFake, ctx: ExtractContext | None = None, **over: object) -> Extracted:
    """Extract with the test config (`over` replaces keys) and a retry policy that never sleeps."""
    return extract(make_cfg(fake, **over), ctx or make_ctx(), policy=FAST)
