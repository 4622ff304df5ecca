"""A Tableau Server fake (REST API + VizQL Data Service); the requests it answers: docs/api-contracts.md.

Serve it with tests.fakes.server.FakeServer. Its bodies follow the REST API reference
(https://help.tableau.com/current/api/rest_api/en-us/REST/rest_api_ref_authentication.htm: the
sign-in answer `<credentials token><site id contentUrl/><user id/></credentials>`, errors as
`<error code><summary/><detail/></error>`); tests/sources/test_recorded_samples.py checks them against the
recorded samples in ../shared/fixtures/real/tableau/ when that folder is there, and
`add_recorded_views` serves the recorded view pages' <view> elements verbatim.
Rules, each from Tableau's own pages (cited where they are applied):
- one session per personal access token: a new sign-in ends the older session, on any site
  (https://help.tableau.com/current/server/en-us/security_personal_access_tokens.htm);
  `ended_by_sign_in` counts sessions killed that way;
- 401002 for an expired or ended session; API versions newer than the server's -> 404;
- pages of 1 to 1000 items (rest_api_concepts_paging.htm);
- the `filter=` grammar of rest_api_concepts_filtering_and_sorting.htm: expressions separated by
  `,` (and `&`, which "can't" appear "even if encoded"), each `field:operator:value`, `in` values
  in `[...]`; TSC 0.42's Filter docs: `:` `[` `]` have no escape, so a value holding them is a
  malformed expression (400);
- `vf_` view filters: comma = OR, `\\,` = a literal comma, `\\\\` = a backslash (same page,
  "View query filters"; the backslash rule from TSC 0.42's `vf()` docs);
- VizQL Data Service (VizQLDataServiceOpenAPISchema.json, vds_limitations.html,
  vds_error_codes.html): filter shapes checked against the schema, no set filter on a DATE or
  DATETIME field, one filter per field, set/match filters without functions, error codes as
  listed (400803 validation, 400804 response too large, 403800 no API Access, 404934 unknown
  field, 429000 over the hourly query cap).
`faults` injects one-shot failures (expire, 429, 500) on a named route.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from tests.fakes.server import Request, Response

NS = "http://tableau.com/api"
SAMPLES_SITE_ID = "6b7179ba-b82b-4f0f-91ed-812074ac5da6"  # the site "Samples"
DEFAULT_SITE_ID = "0c6a8b51-1f3e-4d0a-9a43-5e2d7c1b9f00"
USER_ID = "1a96d216-e9b8-497b-a82a-0b899a965e01"
_VIEW_ELEMENT = re.compile(r"<view .*?</view>", re.DOTALL)
_API_PATH = re.compile(r"^/api/(\d+\.\d+)/(.*)$")
VDS_PREFIX = "/api/v1/vizql-data-service/"


def _attr(xml: str, name: str) -> str | None:
    m = re.search(rf'\s{name}="([^"]*)"', xml.split(">", 1)[0])
    return html.unescape(m.group(1)) if m else None


@dataclass
class FakeView:
    xml: str  # the <view> element as served (recorded ones verbatim)

    @property
    def content_url(self) -> str:
        return _attr(self.xml, "contentUrl") or ""

    @property
    def id(self) -> str:
        return _attr(self.xml, "id") or ""

    @property
    def name(self) -> str:
        return _attr(self.xml, "name") or ""

    @property
    def workbook_id(self) -> str:
        m = re.search(r'<workbook id="([^"]+)"', self.xml)
        return m.group(1) if m else ""


def view_xml(view_id: str, name: str, workbook_id: str, content_url: str, sheet_type: str = "worksheet") -> str:
    return (f'<view id="{view_id}" name="{_esc(name)}" contentUrl="{_esc(content_url)}" sheetType="{sheet_type}" '
            f'createdAt="2025-01-02T09:00:00Z" updatedAt="2025-06-05T08:00:59Z">'
            f'<workbook id="{workbook_id}" /><owner id="5de011f8-5aa9-4d5b-b991-f462c8dd6bb7" /></view>')


@dataclass
class Fault:
    route: str  # signin | views | view | workbooks | workbook | data | signout | vds
    kind: str  # expire | 429 | 500
    detail: str = "Too many requests for 'api.rest.views'. Please retry after 1 minutes."


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass
class FakeDatasource:
    """A published data source: rows as VDS returns them (dates as ISO text) and each field's dataType
    (read-metadata's DataType enum), inferred from the first value unless given in `types`."""

    rows: list[dict[str, Any]]
    api_access: bool = True
    types: dict[str, str] = field(default_factory=dict)

    def data_type(self, caption: str) -> str:
        if caption in self.types:
            return self.types[caption]
        value = next((r[caption] for r in self.rows if r.get(caption) is not None), None)
        if isinstance(value, bool):
            return "BOOLEAN"
        if isinstance(value, int):
            return "INTEGER"
        if isinstance(value, float):
            return "REAL"
        if isinstance(value, str) and _ISO_DATE.match(value):
            return "DATE"
        if isinstance(value, str) and _ISO_DATETIME.match(value):
            return "DATETIME"
        return "STRING"


@dataclass
class Session:
    token: str
    pat: str
    site_id: str
    alive: bool = True
    used: int = 0


@dataclass
class FakeTableau:
    """The app: call it with a Request. Inspect `sessions`, `sign_ins`, `sign_outs`, `data_queries`."""

    tokens: dict[str, str] = field(default_factory=lambda: {"etl-bot": "pat-secret-1"})
    sites: dict[str, str] = field(default_factory=lambda: {"Samples": SAMPLES_SITE_ID, "": DEFAULT_SITE_ID})
    max_api: str = "3.27"
    vds_enabled: bool = True
    vds_queries_per_hour: int | None = None  # the site's cap: 100 per Creator license (vds_limitations.html)
    vds_max_response_bytes: int = 1 << 30  # "VDS has a response size limit of 1 GB"
    session_ttl_requests: int | None = None  # a session expires after this many authenticated calls
    faults: list[Fault] = field(default_factory=list)
    views: list[FakeView] = field(default_factory=list)
    workbooks: dict[str, str] = field(default_factory=dict)  # id -> name
    view_data: dict[str, bytes] = field(default_factory=dict)
    datasources: dict[str, FakeDatasource] = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    sign_ins: int = 0
    sign_outs: int = 0
    ended_by_sign_in: int = 0  # live sessions another sign-in with the same token ended
    data_queries: list[dict[str, str]] = field(default_factory=list)
    vds_queries: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers for tests

    def add_recorded_views(self, pages: list[str]) -> list[FakeView]:
        """The <view> elements of recorded "Query Views for Site" pages, served verbatim (each once).

        Their workbooks are named after the first part of the view's contentUrl ("Superstore/sheets/Overview").
        """
        added: list[FakeView] = []
        seen = {v.id for v in self.views}
        for page in pages:
            for el in _VIEW_ELEMENT.findall(page):
                v = FakeView(el)
                if v.id not in seen:
                    seen.add(v.id)
                    self.views.append(v)
                    self.workbooks.setdefault(v.workbook_id, v.content_url.split("/", 1)[0])
                    added.append(v)
        return added

    def add_view(self, view_id: str, workbook: str, name: str, csv_body: bytes | None = None,
                 sheet_type: str = "worksheet", workbook_id: str | None = None) -> FakeView:
        wid = workbook_id or next((k for k, v in self.workbooks.items() if v == workbook), None) \
            or f"{len(self.workbooks):08x}-0000-4000-8000-{len(self.workbooks):012x}"
        self.workbooks[wid] = workbook
        url = f"{workbook.replace(' ', '')}/sheets/{name.replace(' ', '')}"
        v = FakeView(view_xml(view_id, name, wid, url, sheet_type))
        self.views.append(v)
        if csv_body is not None:
            self.view_data[view_id] = csv_body
        return v

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions if s.alive]

    def expire_all(self) -> None:
        for s in self.sessions:
            s.alive = False

    # ------------------------------------------------------------------ the app

    def __call__(self, req: Request) -> Response:
        if req.path.startswith(VDS_PREFIX):
            return self._vds(req, req.path[len(VDS_PREFIX):])
        m = _API_PATH.match(req.path)
        if not m:
            return self._error(req, 404, "404000", "Resource Not Found", f"Unknown resource '{req.path}'")
        version, rest = m.groups()
        if tuple(map(int, version.split("."))) > tuple(map(int, self.max_api.split("."))):
            return self._error(None, 404, "404003", "Resource Not Found",
                               f"Unknown resource '/{version}/{rest}' specified in URI.")
        if rest == "serverinfo" and req.method == "GET":
            return self._xml(f'<serverInfo><productVersion build="20253.0">2025.3.0</productVersion>'
                             f'<restApiVersion>{self.max_api}</restApiVersion></serverInfo>')
        if rest == "auth/signin" and req.method == "POST":
            return self._sign_in(req)
        session = self._session(req)
        if isinstance(session, Response):
            return session
        if rest == "auth/signout" and req.method == "POST":
            if (f := self._fault("signout")) is not None:
                return f
            session.alive = False
            self.sign_outs += 1
            return Response(204, b"")
        site = re.match(r"^sites/([^/]+)/(.*)$", rest)
        if not site:
            return self._error(req, 404, "404000", "Resource Not Found", f"Unknown resource '{rest}'")
        site_id, sub = site.groups()
        if site_id != session.site_id:
            return self._error(req, 403, "403069", "Forbidden", "The session is not signed in to this site")
        if sub == "views" and req.method == "GET":
            return self._fault("views", session) or self._list_views(req)
        if (mv := re.match(r"^views/([^/]+)$", sub)) and req.method == "GET":
            return self._fault("view", session) or self._get_view(req, mv.group(1))
        if (md := re.match(r"^views/([^/]+)/data$", sub)) and req.method == "GET":
            return self._fault("data", session) or self._view_data(req, md.group(1))
        if sub == "workbooks" and req.method == "GET":
            return self._fault("workbooks", session) or self._list_workbooks(req)
        if (mw := re.match(r"^workbooks/([^/]+)$", sub)) and req.method == "GET":
            return self._fault("workbook", session) or self._get_workbook(req, mw.group(1))
        return self._error(req, 404, "404000", "Resource Not Found", f"Unknown resource '{sub}'")

    # ------------------------------------------------------------------ auth

    def _sign_in(self, req: Request) -> Response:
        if (f := self._fault("signin")) is not None:
            return f
        is_json = "json" in req.headers.get("content-type", "")
        try:
            if is_json:
                cred = req.json()["credentials"]
                name, secret = cred.get("personalAccessTokenName"), cred.get("personalAccessTokenSecret")
                site_url = (cred.get("site") or {}).get("contentUrl", "")
            else:
                root = ET.fromstring(req.body)
                c = root.find("credentials")
                s = c.find("site") if c is not None else None
                name = c.get("personalAccessTokenName") if c is not None else None
                secret = c.get("personalAccessTokenSecret") if c is not None else None
                site_url = s.get("contentUrl", "") if s is not None else ""
        except (ValueError, KeyError, TypeError, ET.ParseError):
            return self._error(req, 400, "400000", "Bad Request", "The sign-in body could not be read")
        if not name or self.tokens.get(name) != secret or site_url not in self.sites:
            if self._wants_json(req):
                return Response(401, {"error": {"summary": "Signin Error",
                                                "detail": "Error signing in to Tableau Server", "code": "401001"}})
            return self._error(None, 401, "401001", "Signin Error", "Error signing in to Tableau Server")
        for old in self.sessions:  # one session per PAT, on any site: this sign-in ends the earlier one
            if old.pat == name and old.alive:
                old.alive = False
                self.ended_by_sign_in += 1
        token = secrets.token_urlsafe(24)
        site_id = self.sites[site_url]
        self.sessions.append(Session(token, name, site_id))
        self.sign_ins += 1
        if self._wants_json(req):
            return Response(200, {"credentials": {
                "site": {"id": site_id, "contentUrl": site_url}, "user": {"id": USER_ID},
                "token": token, "estimatedTimeToExpiration": "239:59:59"}})
        return self._xml(f'<credentials token="{token}" estimatedTimeToExpiration="239:59:59">'
                         f'<site id="{site_id}" contentUrl="{_esc(site_url)}" /><user id="{USER_ID}" /></credentials>')

    def _session(self, req: Request) -> Session | Response:
        token = req.headers.get("x-tableau-auth")
        if not token:
            return self._error(req, 401, "401000", "Unauthorized Access", "No authentication credentials were provided.")
        s = next((s for s in self.sessions if s.token == token), None)
        if s is not None and s.alive and self.session_ttl_requests is not None and s.used >= self.session_ttl_requests:
            s.alive = False
        if s is None or not s.alive:
            return self._error(req, 401, "401002", "Unauthorized Access", "Invalid authentication credentials were provided.")
        s.used += 1
        return s

    def _fault(self, route: str, session: Session | None = None) -> Response | None:
        f = next((f for f in self.faults if f.route == route), None)
        if f is None:
            return None
        self.faults.remove(f)
        if f.kind == "expire":
            if session is not None:
                session.alive = False
            return self._error(None, 401, "401002", "Unauthorized Access", "Invalid authentication credentials were provided.")
        if f.kind == "429":
            return self._error(None, 429, "429000", "Too Many Requests", f.detail)
        return Response(500, b"<html><body>Internal Server Error</body></html>", {"Content-Type": "text/html"})

    # ------------------------------------------------------------------ views

    def _paged(self, req: Request, items: list[tuple[str, str]], wrapper: str) -> Response:
        """Page (name, xml) items with pageSize/pageNumber and a `name:eq:` filter."""
        try:
            size = int(req.q("pageSize", "100") or 100)
            number = int(req.q("pageNumber", "1") or 1)
        except ValueError:
            return self._error(req, 400, "400006", "Bad Request", "pageSize and pageNumber must be integers")
        if not 1 <= size <= 1000 or number < 1:
            return self._error(req, 400, "400006", "Bad Request",
                               "The page size must be between 1 and 1000 and the page number at least 1")
        for expr in _filter_expressions(req.q("filter") or ""):
            parts = expr.split(":")
            if len(parts) != 3:  # a ':' in a value cannot be escaped (TSC 0.42 Filter docs)
                return self._error(req, 400, "400000", "Bad Request", f"Invalid filter expression '{expr}'")
            fld, op, value = parts
            if fld != "name" or op not in ("eq", "in"):
                return self._error(req, 400, "400000", "Bad Request", f"Filter '{expr}' is not supported by this fake")
            if op == "in":
                if not (value.startswith("[") and value.endswith("]")) or set(value[1:-1]) & set("[]"):
                    return self._error(req, 400, "400000", "Bad Request", f"Invalid filter expression '{expr}'")
                allowed = set(value[1:-1].split(","))
            elif set(value) & set("[]"):  # brackets delimit an `in` list; no escape for them
                return self._error(req, 400, "400000", "Bad Request", f"Invalid filter expression '{expr}'")
            else:
                allowed = {value}
            items = [i for i in items if i[0] in allowed]
        page = items[(number - 1) * size: number * size]
        return self._xml(f'<pagination pageNumber="{number}" pageSize="{size}" totalAvailable="{len(items)}" />'
                         f'<{wrapper}>{"".join(x for _, x in page)}</{wrapper}>')

    def _list_views(self, req: Request) -> Response:
        return self._paged(req, [(v.name, v.xml) for v in self.views], "views")

    def _list_workbooks(self, req: Request) -> Response:
        return self._paged(req, [(name, _workbook_xml(wid, name)) for wid, name in self.workbooks.items()], "workbooks")

    def _find(self, view_id: str) -> FakeView | None:
        return next((v for v in self.views if v.id == view_id), None)

    def _get_view(self, req: Request, view_id: str) -> Response:
        v = self._find(view_id)
        if v is None:
            return self._error(req, 404, "404011", "Resource Not Found", f"View '{view_id}' could not be found.")
        return self._xml(v.xml)

    def _get_workbook(self, req: Request, wid: str) -> Response:
        name = self.workbooks.get(wid)
        if name is None:
            return self._error(req, 404, "404006", "Resource Not Found", f"Workbook '{wid}' could not be found.")
        return self._xml(_workbook_xml(wid, name))

    def _view_data(self, req: Request, view_id: str) -> Response:
        if self._find(view_id) is None or view_id not in self.view_data:
            return self._error(req, 404, "404011", "Resource Not Found", f"View '{view_id}' could not be found.")
        query = {k: v[0] for k, v in req.query.items()}
        self.data_queries.append(query)
        if "maxAge" in query and not (query["maxAge"].isdigit() and 0 <= int(query["maxAge"]) <= 240):
            return self._error(req, 400, "400000", "Bad Request", "maxAge must be a number of minutes")
        body = self.view_data[view_id]
        filters = {k[3:]: v for k, v in query.items() if k.startswith("vf_") and not k.startswith("vf_Parameters.")}
        if filters:
            body = _filter_csv(body, filters)
        return Response(200, body, {"Content-Type": "text/csv; charset=utf-8"})

    # ------------------------------------------------------------------ VizQL Data Service

    def _vds(self, req: Request, endpoint: str) -> Response:
        if not self.vds_enabled:
            return self._error(None, 404, "404003", "Resource Not Found", f"Unknown resource '{req.path}' specified in URI.")
        if endpoint == "simple-request" and req.method == "GET":
            return Response(200, "Hello from VizQL Data Service")
        session = self._session(req)
        if isinstance(session, Response):
            return Response(401, _vds_error("401002", "Invalid authorization credentials"))
        if (f := self._fault("vds", session)) is not None:
            return f
        if req.method != "POST" or endpoint not in ("query-datasource", "read-metadata"):
            return Response(404, _vds_error("404950", f"API endpoint not found: '{endpoint}'"))
        try:
            body = req.json()
            luid = body["datasource"]["datasourceLuid"]
        except (ValueError, KeyError, TypeError):
            return Response(400, _vds_error("400000", "The request needs datasource.datasourceLuid"))
        ds = self.datasources.get(luid)
        if ds is None:  # the error-code table names no code for an unknown LUID: this one is a guess
            return Response(404, _vds_error("404000", f"Datasource '{luid}' not found"))
        if not ds.api_access:
            return Response(403, _vds_error("403800", "API access permission denied for this data source"))
        self.vds_queries.append(body)
        if self.vds_queries_per_hour is not None and len(self.vds_queries) > self.vds_queries_per_hour:
            return Response(429, _vds_error("429000", "Too many requests in the allotted amount of time"))
        captions = list(ds.rows[0]) if ds.rows else []
        if endpoint == "read-metadata":
            return Response(200, {"data": [{"fieldName": c, "fieldCaption": c, "dataType": ds.data_type(c)}
                                           for c in captions], "extraData": {"parameters": []}})
        fields = (body.get("query") or {}).get("fields") or []
        if not fields:
            return Response(400, _vds_error("400802", "query.fields is required"))
        unknown = [f.get("fieldCaption") for f in fields if f.get("fieldCaption") not in captions]
        if unknown:
            return Response(404, _vds_error("404934", f"Unknown Field: {', '.join(map(str, unknown))}."))
        rows = ds.rows
        seen: set[str] = set()
        for flt in (body.get("query") or {}).get("filters") or []:
            problem = _vds_filter_problem(flt, ds, captions, seen)
            if problem is not None:
                status, code, message = problem
                return Response(status, _vds_error(code, message))
            rows = [r for r in rows if _vds_keeps(flt, r.get(flt["field"]["fieldCaption"]))]

        def key(f: dict[str, Any]) -> str:
            if f.get("fieldAlias"):
                return f["fieldAlias"]
            return f"{f['function']}({f['fieldCaption']})" if f.get("function") else f["fieldCaption"]

        answer = {"data": [{key(f): r.get(f["fieldCaption"]) for f in fields} for r in rows]}
        if len(json.dumps(answer)) > self.vds_max_response_bytes:
            return Response(400, _vds_error("400804", "Response too large. You must apply a filter in your request."))
        return Response(200, answer)

    # ------------------------------------------------------------------ bodies

    @staticmethod
    def _wants_json(req: Request | None) -> bool:
        return req is not None and "application/json" in req.headers.get("accept", "")

    def _xml(self, inner: str) -> Response:
        body = (f"<?xml version='1.0' encoding='UTF-8'?>\n<tsResponse xmlns=\"{NS}\" "
                f"xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{inner}</tsResponse>")
        return Response(200, body.encode(), {"Content-Type": "application/xml"})

    def _error(self, req: Request | None, status: int, code: str, summary: str, detail: str) -> Response:
        if self._wants_json(req):
            return Response(status, {"error": {"summary": summary, "detail": detail, "code": code}})
        body = (f"<?xml version='1.0' encoding='UTF-8'?>\n<tsResponse xmlns=\"{NS}\"><error code=\"{code}\">"
                f"<summary>{summary}</summary><detail>{_esc(detail)}</detail></error></tsResponse>")
        return Response(status, body.encode(), {"Content-Type": "application/xml"})


def _workbook_xml(wid: str, name: str) -> str:
    """A <workbook> element as "Query Workbooks for Site" lists it (the recorded workbook_get_page_*.xml shape)."""
    return (f'<workbook id="{wid}" name="{_esc(name)}" contentUrl="{_esc(name.replace(" ", ""))}" showTabs="false" '
            f'size="1" createdAt="2016-08-03T20:34:04Z" updatedAt="2016-08-04T17:56:41Z">'
            f'<project id="ee8c6e70-43b6-11e6-af4f-f7b0d8e20760" name="default" />'
            f'<owner id="5de011f8-5aa9-4d5b-b991-f462c8dd6bb7" /><tags /></workbook>')


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _vds_error(code: str, message: str) -> dict[str, Any]:
    return {"errorCode": code, "message": message, "messages": [], "datetime": "2026-01-01T00:00:00Z",
            "debug": {}, "tab-error-code": code}


_VDS_FILTER_TYPES = ("QUANTITATIVE_DATE", "QUANTITATIVE_NUMERICAL", "SET", "MATCH", "DATE", "TOP")


def _vds_filter_problem(flt: Any, ds: FakeDatasource, captions: list[str],
                        seen: set[str]) -> tuple[int, str, str] | None:
    """Why VDS refuses one filter (status, errorCode, message), per the schema and the limitations page."""
    if not isinstance(flt, dict) or not isinstance(flt.get("field"), dict) or flt.get("filterType") not in _VDS_FILTER_TYPES:
        return 400, "400802", f"Filter {flt!r} is not valid per the OpenAPI specification"
    field_ = flt["field"]
    cap, kind = field_.get("fieldCaption"), flt["filterType"]
    if cap not in captions:
        return 404, "404934", f"Unknown Field: {cap}."
    if cap in seen:
        return 400, "400803", f"Only one filter per field is allowed ('{cap}')"
    seen.add(cap)
    if kind in ("SET", "MATCH", "DATE") and (field_.get("function") or field_.get("calculation")):
        return 400, "400803", f"{kind} filters can't have functions or calculations ('{cap}')"
    dtype = ds.data_type(cap)
    if kind == "SET":
        if not isinstance(flt.get("values"), list):
            return 400, "400802", "A SET filter needs 'values' (an array)"
        if dtype in ("DATE", "DATETIME"):
            return 400, "400803", f"Set filters don't support dates ('{cap}' is {dtype})"
    if kind == "QUANTITATIVE_DATE":
        qtype = flt.get("quantitativeFilterType")
        need = {"RANGE": ("minDate", "maxDate"), "MIN": ("minDate",), "MAX": ("maxDate",),
                "ONLY_NULL": (), "ONLY_NON_NULL": ()}.get(qtype)
        if need is None:
            return 400, "400802", f"quantitativeFilterType {qtype!r} is not valid"
        bad = [k for k in need if not (isinstance(flt.get(k), str) and _ISO_DATE.match(flt[k]))]
        if bad:
            return 400, "400802", f"{', '.join(bad)} must be RFC 3339 full dates (YYYY-MM-DD)"
        if dtype not in ("DATE", "DATETIME"):
            return 400, "400803", f"A QUANTITATIVE_DATE filter needs a date field ('{cap}' is {dtype})"
    if kind == "QUANTITATIVE_NUMERICAL":
        qtype = flt.get("quantitativeFilterType")
        need = {"RANGE": ("min", "max"), "MIN": ("min",), "MAX": ("max",), "ONLY_NULL": (), "ONLY_NON_NULL": ()}.get(qtype)
        if need is None or any(not isinstance(flt.get(k), int | float) for k in need):
            return 400, "400802", f"QUANTITATIVE_NUMERICAL {qtype!r} needs numbers for {need}"
    if kind in ("DATE", "TOP"):
        return 501, "501000", f"{kind} filters are not implemented by this fake"
    return None


def _vds_keeps(flt: dict[str, Any], value: Any) -> bool:
    """Whether a row's value passes one (valid) filter."""
    kind, qtype = flt["filterType"], flt.get("quantitativeFilterType")
    if kind == "SET":
        return (value in set(flt["values"])) != bool(flt.get("exclude"))
    if kind == "MATCH":
        text = "" if value is None else str(value)
        hit = (("contains" not in flt or str(flt["contains"]) in text)
               and ("startsWith" not in flt or text.startswith(str(flt["startsWith"])))
               and ("endsWith" not in flt or text.endswith(str(flt["endsWith"]))))
        return hit != bool(flt.get("exclude"))
    if qtype == "ONLY_NULL":
        return value is None
    if qtype == "ONLY_NON_NULL":
        return value is not None
    if value is None:
        return bool(flt.get("includeNulls"))
    lo, hi = ("minDate", "maxDate") if kind == "QUANTITATIVE_DATE" else ("min", "max")
    v = str(value)[:10] if kind == "QUANTITATIVE_DATE" else value
    return (lo not in flt or v >= flt[lo]) and (hi not in flt or v <= flt[hi])


def _filter_expressions(text: str) -> list[str]:
    """`filter=` split into expressions at ',' and '&' outside an `in` list's brackets."""
    out, cur, depth = [], "", 0
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch in ",&" and depth <= 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [e for e in out if e]


def split_vf_value(value: str) -> list[str]:
    """A vf_ wire value -> its alternatives: ',' separates, '\\,' and '\\\\' escape."""
    out, cur, i = [], "", 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur += value[i + 1]
            i += 2
            continue
        if ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return out


def _filter_csv(body: bytes, filters: dict[str, str]) -> bytes:
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    header, data = rows[0], rows[1:]
    for name, value in filters.items():
        if name in header:
            i, allowed = header.index(name), set(split_vf_value(value))
            data = [r for r in data if r[i] in allowed]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *data])
    return buf.getvalue().encode()


def opportunities_csv(n: int, *, start: int = 1) -> bytes:
    """A generated view export of n opportunities with Tableau's formatting (US locale)."""
    stages = ["Lead generation", "Qualification", "Contact", "Proposal", "Closing", "Won", "Lost"]
    regions = ["East", "West", "Central", "South"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Opportunity ID", "Opportunity Name", "Region", "Stage", "Amount", "Created Date",
                "Close Date", "Win Probability"])
    for i in range(start, start + n):
        amount = (i * 1237) % 250_000 + 500
        w.writerow([f"OPP-{i:06d}", f"Deal {i}", regions[i % 4], stages[i % 7], f"${amount:,}",
                    f"{(i % 12) + 1}/{(i % 28) + 1}/2025", f"{(i % 12) + 1}/{(i % 27) + 2}/2026",
                    f"{(i % 10) * 10}%"])
    return buf.getvalue().encode()
