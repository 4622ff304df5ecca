"""Tableau source: a view's data as CSV (mode `view`) or a VizQL Data Service query (mode `datasource`).

Sign-in is a personal access token through tableauserverclient (TSC). Tableau allows one session
per token: a second sign-in with the same token ends the first, so runs in this process that
share a token are serialised, and every run signs out in `finally`. An expired session
(401002) is signed in again once; 429000 and 5xx answers are retried with the project's
RetryPolicy. Tableau's formatted numbers ("$45,047", "14.4%", "(1,234)") and dates are read
here, at the boundary; `columns` renames source headers to canonical fields.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import pandas as pd
import requests
import tableauserverclient as TSC
from tableauserverclient.server.endpoint.exceptions import (
    InternalServerError,
    NonXMLResponseError,
    XMLError,
)

from config.models import TableauSourceConfig
from config.schema import FIELD_NAMES, FIELDS_BY_NAME
from connectors.errors import FatalAPIError, RetriableAPIError, SourceDataError
from connectors.extracted import ExtractContext, Extracted
from connectors.http.paging import paginate
from connectors.http.session import (
    TRANSIENT_EXCEPTIONS,
    HttpClient,
    Observer,
    RetryPolicy,
    build_session,
    pause_before_retry,
    retry_after_seconds,
)
from connectors.sources import files

log = logging.getLogger(__name__)

T = TypeVar("T")
VIEW_PAGE_SIZE = 100
VDS_PATH = "/api/v1/vizql-data-service"
REQUIRED_FIELDS = tuple(f.name for f in FIELDS_BY_NAME.values() if f.required)
AMOUNT_FIELDS = tuple(f.name for f in FIELDS_BY_NAME.values() if f.kind == "amount")
DATE_FIELDS = tuple(f.name for f in FIELDS_BY_NAME.values() if f.kind == "date")
_LUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RETRY_AFTER = re.compile(r"retry\s+after\s+(\d+(?:\.\d+)?)\s*(second|sec|minute|min|hour)", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600}

_PAT_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_PAT_LOCKS_GUARD = threading.Lock()


# ----------------------------------------------------------------------------- entry point


def extract(
    cfg: TableauSourceConfig,
    ctx: ExtractContext,
    *,
    policy: RetryPolicy | None = None,
    session_factory: Callable[[], requests.Session] | None = None,
) -> Extracted:
    """Sign in, pull the view (or data source), sign out; records carry canonical names and `_row`.

    `policy` (retries, backoff, sleep) and `session_factory` (a requests Session per thread
    for TSC) can be injected; by default the project's RetryPolicy and `build_session`.
    """
    started = time.monotonic()
    obs = ctx.observer
    before = (obs.requests, obs.retries, obs.waited_seconds)
    policy = policy or ctx.retry_policy or RetryPolicy()
    with _one_session_per_token(cfg):
        tab = TableauSession(cfg, obs, policy, session_factory)
        try:
            tab.sign_in()
            if cfg.mode == "view":
                got = _extract_view(cfg, tab, ctx.cached_version)
            else:
                got = _extract_datasource(cfg, tab, obs, policy, ctx.cached_version)
        finally:
            tab.close()
    for note in got.notes:
        log.warning("tableau source '%s': %s", cfg.name, note)
    return Extracted(
        source=cfg.name,
        records=got.records if got.records is not None else pd.DataFrame(),
        raw=got.raw if cfg.raw_sheet else None,
        seconds=time.monotonic() - started,
        notes=got.notes,
        requests=obs.requests - before[0],
        retries=obs.retries - before[1],
        waited_seconds=obs.waited_seconds - before[2],
        version=got.version,
        reused=got.records is None,
    )


@dataclass
class _Pulled:
    """Records (None: the answer is byte for byte the one at `cached_version`), raw frame, notes, and
    the answer's version (sha256 of its bytes)."""

    records: pd.DataFrame | None
    raw: pd.DataFrame | None
    notes: list[str]
    version: str


def _answer_version(cfg: TableauSourceConfig, body: bytes) -> str:
    return hashlib.sha256(cfg.mode.encode() + b"\x00" + body).hexdigest()


@contextmanager
def _one_session_per_token(cfg: TableauSourceConfig) -> Iterator[None]:
    """Serialise runs in this process that use the same token (a second sign-in ends the first)."""
    key = (cfg.server_url.rstrip("/").lower(), cfg.token_name)
    with _PAT_LOCKS_GUARD:
        lock = _PAT_LOCKS.setdefault(key, threading.Lock())
    if not lock.acquire(blocking=False):
        log.info("tableau source '%s': waiting for another run using token '%s'", cfg.name, cfg.token_name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------- session


class TableauSession:
    """One TSC Server signed in with the PAT; `call()` adds backoff and one re-sign-in on 401002."""

    def __init__(self, cfg: TableauSourceConfig, observer: Observer, policy: RetryPolicy,
                 session_factory: Callable[[], requests.Session] | None = None):
        self.cfg = cfg
        self.observer = observer
        self.policy = policy
        factory = session_factory or (lambda: build_session(cfg.ca_bundle, cfg.verify_tls))

        def counted_session() -> requests.Session:
            session = factory()
            session.hooks["response"].append(self._count)
            return session

        # TSC passes http_options on every request; the session from build_session keeps
        # ca_bundle ahead of REQUESTS_CA_BUNDLE, and a per-request verify makes sure of it.
        options: dict[str, Any] = {"timeout": cfg.timeout}
        if not cfg.verify_tls:
            options["verify"] = False
        elif cfg.ca_bundle:
            options["verify"] = cfg.ca_bundle
        self.server = TSC.Server(cfg.server_url, use_server_version=False, http_options=options,
                                 session_factory=counted_session)
        self.server.version = cfg.api_version
        self.sign_ins = 0
        self.last_response: requests.Response | None = None

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.observer.requests += 1
        self.last_response = response

    @property
    def token(self) -> str:
        return self.server.auth_token

    def sign_in(self) -> None:
        auth = TSC.PersonalAccessTokenAuth(self.cfg.token_name, self.cfg.token_secret, site_id=self.cfg.site)
        self.call("sign in", lambda: self.server.auth.sign_in(auth), reauth=False)
        self.sign_ins += 1
        log.info("tableau: signed in to %s (site '%s', REST API %s)", self.cfg.server_url, self.cfg.site,
                 self.server.version)

    def close(self) -> None:
        """Sign out (ending the token's session) and release connections; never raises."""
        try:
            if self.server.is_signed_in():
                self.server.auth.sign_out()
        except Exception as exc:  # sign-out must not hide the run's own outcome
            log.warning("tableau: sign-out failed (%s); the session ends when it expires", _describe(exc))
        finally:
            self.server.close()

    def call(self, what: str, fn: Callable[[], T], *, reauth: bool = True) -> T:
        """Run one TSC call: retry 429000/5xx/network faults, sign in again once on 401002."""
        attempt = 0
        signed_in_again = False
        while True:
            attempt += 1
            wait: float | None = None
            try:
                return fn()
            except XMLError as exc:
                code = str(exc.code or "")
                if code == "401002" and reauth and not signed_in_again:
                    log.info("tableau: session expired during %s; signing in again", what)
                    signed_in_again = True
                    self.sign_in()
                    attempt -= 1
                    continue
                if not code.startswith("429"):
                    raise FatalAPIError(self._refusal(what, exc)) from None
                reason = f"{what}: {code} {exc.summary}: {exc.detail}"
                wait = retry_after_text(exc.detail or "")
                if wait is not None and wait > self.policy.retry_after_max:
                    raise RetriableAPIError(
                        f"Tableau is rate limiting {what} ({code}: {exc.detail}); run again after "
                        f"{wait / 60:.0f} minutes"
                    ) from None
            except InternalServerError as exc:
                reason = f"{what}: HTTP {exc.code} from Tableau"
            except NonXMLResponseError as exc:
                last = self.last_response
                if last is not None and last.status_code == 429:  # a gateway's 429: not Tableau's XML
                    reason = f"{what}: HTTP 429 (not Tableau's XML: {_snippet(last.content)[:80]})"
                    wait = retry_after_seconds(last)
                    if wait is not None and wait > self.policy.retry_after_max:
                        raise RetriableAPIError(f"Tableau is rate limiting {what} (HTTP 429); run again after "
                                                f"{wait / 60:.0f} minutes") from None
                else:
                    raise FatalAPIError(
                        f"Tableau refused {what} with a non-XML answer: {_snippet(exc.args[0] if exc.args else b'')} "
                        f"(check server_url '{self.cfg.server_url}' and api_version '{self.cfg.api_version}')"
                    ) from None
            except TRANSIENT_EXCEPTIONS as exc:
                reason = f"{what}: {type(exc).__name__}"
            pause_before_retry(self.policy, self.observer, "Tableau", attempt, reason, wait)

    def _refusal(self, what: str, exc: XMLError) -> str:
        code = str(exc.code or "")
        msg = f"Tableau refused {what} ({code}: {exc.summary}: {exc.detail})"
        if code == "401001":
            return (msg + f": check token_name '{self.cfg.token_name}', token_secret and site "
                    f"'{self.cfg.site}' (a token unused for 15 days expires; a revoked one must be replaced)")
        if code.startswith("401"):
            return msg + ": the session was refused again after signing in anew; is the token used elsewhere?"
        if code.startswith("404") and what == "sign in":
            return (msg + f": check server_url '{self.cfg.server_url}' and api_version "
                    f"'{self.cfg.api_version}' (the server may be older than that REST API version)")
        if code.startswith("403"):
            return msg + ": the token's user lacks permission"
        return msg


def retry_after_text(text: str) -> float | None:
    """Seconds from 'Please retry after 29 minutes' style text; None when absent."""
    m = _RETRY_AFTER.search(text)
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()] if m else None


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return " ".join(text.split())[:200] or "(empty body)"


# ----------------------------------------------------------------------------- mode: view


def _extract_view(cfg: TableauSourceConfig, tab: TableauSession, cached_version: str | None = None) -> _Pulled:
    assert cfg.view is not None
    view = find_view(tab, cfg.view)
    if view.sheet_type is None:  # a list answer without sheetType: the single-view answer may have it
        view = tab.call(f"get view {view.id}", lambda: tab.server.views.get_by_id(view.id))
    notes: list[str] = []
    if (view.sheet_type or "").lower() == "dashboard":
        notes.append(
            f"view '{cfg.view}' is a dashboard: Tableau returns only the data of its first "
            f"sheet; point 'view' at the worksheet that holds the opportunities"
        )
    opts = csv_request_options(cfg.filters, cfg.max_age)
    tab.server.views.populate_csv(view, opts)
    body = tab.call(f"download the data of view '{cfg.view}'", lambda: b"".join(view.csv))
    version = _answer_version(cfg, body)
    if version == cached_version:
        return _Pulled(None, None, [*notes, f"view '{cfg.view}': the same data as the last run"], version)
    raw = read_view_csv(body, cfg.view)
    if {"Measure Names", "Measure Values"} <= set(raw.columns):
        notes.append(
            f"view '{cfg.view}' has 'Measure Names'/'Measure Values' columns: each measure comes "
            f"back as its own row; a view with one column per measure suits this pipeline better"
        )
    records = map_columns(raw, cfg.columns, f"view '{cfg.view}'")
    records, more = parse_formatted(records, cfg.date_format)
    notes += more
    records["_row"] = range(2, len(records) + 2)  # CSV line: header = 1
    return _Pulled(records, raw, notes, version)


def find_view(tab: TableauSession, ref: str, page_size: int = VIEW_PAGE_SIZE) -> TSC.ViewItem:
    """A view by LUID, or by 'Workbook/View' through a paged name lookup (split at the first '/')."""
    server = tab.server
    if _LUID.match(ref):
        try:
            return tab.call(f"get view {ref}", lambda: server.views.get_by_id(ref))
        except FatalAPIError as exc:
            if "(404" in str(exc):
                raise FatalAPIError(
                    f"view '{ref}' was not found on site '{tab.cfg.site}' (or the token's user cannot see it)"
                ) from None
            raise
    workbook, _, name = ref.partition("/")
    named: list[TSC.ViewItem] = [v for v in _paged(tab, server.views, "views", name, page_size) if v.name == name]
    workbook_ids = {w.id for w in _paged(tab, server.workbooks, "workbooks", workbook, page_size)
                    if w.name == workbook} if named and not set(workbook) & {",", "&"} else set()
    names: dict[str, str] = {}

    def workbook_of(view: TSC.ViewItem) -> str:
        wid = view.workbook_id or ""
        if wid not in names:
            names[wid] = tab.call(f"get workbook {wid}", lambda: server.workbooks.get_by_id(wid)).name
        return names[wid]

    def in_workbook(view: TSC.ViewItem) -> bool:
        if view.workbook_id in workbook_ids or (view.content_url or "").split("/sheets/")[0] == workbook:
            return True
        return bool(set(workbook) & {",", "&"}) and workbook_of(view) == workbook  # name not filterable

    matches = [v for v in named if in_workbook(v)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        where = sorted({workbook_of(v) for v in named[:10]})
        hint = f"; views named '{name}' exist in workbooks: {', '.join(where)}" if where else ""
        raise FatalAPIError(f"view '{ref}' was not found on site '{tab.cfg.site}'{hint} (set 'view' to 'Workbook/View' or a view id)")
    raise FatalAPIError(f"view '{ref}' is ambiguous ({len(matches)} views); set 'view' to one of these ids: "
                        + ", ".join(str(v.id) for v in matches))


def _paged(tab: TableauSession, endpoint: Any, what: str, name: str, page_size: int) -> Iterator[Any]:
    """Items of a paged list endpoint (views, workbooks) filtered by name where Tableau allows it."""
    opts = TSC.RequestOptions(pagesize=page_size)
    if not set(name) & {",", "&"}:  # Tableau filter expressions cannot carry these
        opts.filter.add(TSC.Filter(TSC.RequestOptions.Field.Name, TSC.RequestOptions.Operator.Equals, name))

    def fetch(page: int | str | None) -> tuple[list[Any], int | None]:
        opts.pagenumber = int(page or 1)
        items, pg = tab.call(f"list {what} (page {opts.pagenumber})", lambda: endpoint.get(opts))
        more = pg.total_available is not None and pg.page_number * pg.page_size < pg.total_available and items
        return items, (pg.page_number + 1 if more else None)

    for page in paginate(fetch, first=1):
        yield from page


def csv_request_options(filters: dict[str, Any], max_age: int | None) -> TSC.CSVRequestOptions:
    """Query View Data options: `vf_<field>` filters, `Parameters.<name>` parameters, maxAge (minutes)."""
    opts = TSC.CSVRequestOptions(maxage=-1 if max_age is None else max_age)
    for key, value in filters.items():
        name = key.removeprefix("vf_")
        if name.startswith("Parameters."):
            opts.parameter(name, filter_value(value))
        else:
            opts.vf(name, filter_value(value))
    return opts


def filter_value(value: Any) -> str:
    """A view filter value on the wire: lists become OR-lists (commas and backslashes escaped)."""
    if isinstance(value, list | tuple | set):
        return ",".join(_one_value(v).replace("\\", "\\\\").replace(",", "\\,") for v in value)
    return _one_value(value)


def _one_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def read_view_csv(body: bytes, where: str) -> pd.DataFrame:
    """The CSV exactly as Tableau sent it: every cell a string, blanks stay ''."""
    text = body.decode("utf-8-sig")
    if not text.strip():
        raise SourceDataError(f"view '{where}' returned an empty body instead of CSV")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise SourceDataError(f"view '{where}' did not return readable CSV: {exc}") from None


def map_columns(frame: pd.DataFrame, columns: dict[str, str], where: str) -> pd.DataFrame:
    """Rename source headers to canonical fields the way the csv source does (connectors.sources.files).

    A `columns` key the data lacks, or no column for a required field, is an error naming both.
    """
    have = {str(c).strip().lower() for c in frame.columns}
    missing = [src for src in columns if src.strip().lower() not in have]
    if missing:
        raise SourceDataError(
            f"{where}: 'columns' names {', '.join(repr(m) for m in missing)}, which the data does not have; "
            f"its columns are: {', '.join(map(str, frame.columns))}"
        )
    out = files.map_columns(frame, columns, FIELD_NAMES, where)
    absent = [f for f in REQUIRED_FIELDS if f not in out]
    if absent:
        raise SourceDataError(
            f"{where}: no column gives {', '.join(absent)}; add it to 'columns' (source header -> field). "
            f"Columns available: {', '.join(map(str, frame.columns))}"
        )
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- formatted values

_NUM_NOISE = re.compile(r"[\s\u00a0\u202f$€£¥]|^(?:USD|EUR|GBP|CHF|JPY)|(?:USD|EUR|GBP|CHF|JPY)$")
_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9}
_GROUPED = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def parse_tableau_number(text: Any) -> float | None:
    """'$45,047' -> 45047.0, '14.4%' -> 0.144, '(1,234)' -> -1234.0, '1.234,5' -> 1234.5, '$1.2M' -> 1.2e6.

    None for blanks and for text that is not a number. Numbers pass through.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return None if pd.isna(text) else float(text)
    s = str(text).strip().replace("\u2212", "-")
    if s == "" or s.lower() in ("null", "%null%"):
        return None
    neg = s.startswith("(") and s.endswith(")")
    s = s[1:-1] if neg else s
    s = _NUM_NOISE.sub("", s.replace("'", ""))
    if s.startswith("-"):
        neg, s = not neg, s[1:]
    s = _NUM_NOISE.sub("", s)
    scale = 1.0
    if s.endswith("%"):
        scale, s = 0.01, s[:-1]
    elif s[-1:].upper() in _UNITS:
        scale, s = _UNITS[s[-1].upper()], s[:-1]
    if "," in s and "." in s:
        s = s.replace(".", "").replace(",", ".") if s.rfind(",") > s.rfind(".") else s.replace(",", "")
    elif "," in s:
        s = s.replace(",", "") if _GROUPED.match(s) else s.replace(",", ".")
    try:
        value = float(s) * scale
    except ValueError:
        return None
    return -value if neg else value


_DATE_FORMATS = (
    "%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%m/%d/%Y", "%m/%d/%Y %I:%M:%S %p", "%d/%m/%Y",
    "%d/%m/%Y %H:%M:%S", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y",
)


def parse_formatted(records: pd.DataFrame, date_format: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Amount fields -> floats (unreadable text kept for the Rejected sheet); dates -> ISO text.

    A date column is read with the first format that fits every value (with `date_format`
    given, the canonical layer reads it instead). Ambiguous day/month columns get a note.
    """
    notes: list[str] = []
    out = records.copy()
    for f in AMOUNT_FIELDS:
        if f not in out:
            continue
        raw = out[f].astype(object)
        txt = _as_text(raw)
        parsed = _parse_numbers(txt)
        keep_raw = parsed.isna() & (txt != "")
        out[f] = parsed.astype(object).where(~keep_raw, raw)
        if txt.str[-1:].str.upper().isin(list(_UNITS)).any():
            notes.append(f"{f}: the view shows abbreviated numbers (K/M/B), so values are rounded as displayed")
    if date_format:
        return out, notes
    for f in DATE_FIELDS:
        if f not in out:
            continue
        txt = _as_text(out[f])
        uniq = pd.Series(pd.unique(txt[txt != ""]), dtype=object)  # parse each distinct date once
        if uniq.empty:
            continue
        fits = [fmt for fmt in _DATE_FORMATS if pd.to_datetime(uniq, format=fmt, errors="coerce").notna().all()]
        if not fits:
            continue  # left raw: the canonical layer rejects the rows with the reason
        if "%m/%d/%Y" in fits and "%d/%m/%Y" in fits:
            notes.append(f"{f}: dates like '{uniq.iloc[0]}' read as month/day/year; set date_format if the view uses day/month")
        iso = dict(zip(uniq, pd.to_datetime(uniq, format=fits[0]).dt.strftime("%Y-%m-%d"), strict=True))
        out[f] = txt.map(iso).astype(object).where(txt != "", "")
    return out, notes


def _as_text(values: pd.Series) -> pd.Series:
    """Stripped strings; missing values -> ''."""
    obj = values.astype(object)
    return obj.where(obj.notna(), "").map(str).str.strip().astype(object)


_PLAIN_NUMBER = re.compile(r"^\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")


def _parse_numbers(txt: pd.Series) -> pd.Series:
    """parse_tableau_number over a column: plain '$1,234.5' vectorised, the rest once per distinct value."""
    out = pd.Series(float("nan"), index=txt.index, dtype=float)
    plain = txt.str.match(_PLAIN_NUMBER).astype(bool)
    if plain.any():
        out[plain] = pd.to_numeric(txt[plain].str.replace(r"[$,]", "", regex=True))
    rest = ~plain & (txt != "")
    if rest.any():
        values = {u: parse_tableau_number(u) for u in pd.unique(txt[rest])}
        out[rest] = txt[rest].map(lambda v: values[v]).astype(float)
    return out


# ----------------------------------------------------------------------------- mode: datasource


def vds_query(cfg: TableauSourceConfig) -> dict[str, Any]:
    """The query-datasource body: `fields` (default: one per `columns` key) and `filters`."""
    fields = cfg.fields or [{"fieldCaption": src} for src in cfg.columns]
    filters = []
    for caption, spec in cfg.filters.items():
        field = {"field": {"fieldCaption": caption}}
        if isinstance(spec, dict):
            filters.append({**field, **spec})
        else:
            values = list(spec) if isinstance(spec, list | tuple | set) else [spec]
            filters.append({**field, "filterType": "SET", "values": values, "exclude": False})
    query: dict[str, Any] = {"fields": fields}
    if filters:
        query["filters"] = filters
    return {"datasource": {"datasourceLuid": cfg.datasource_luid}, "query": query,
            "options": {"returnFormat": "OBJECTS", "disaggregate": False}}


def _vds_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return _snippet(resp.content)
    if isinstance(body, dict) and ("message" in body or "errorCode" in body):
        return f"{body.get('errorCode', '')}: {body.get('message', '')}".strip(": ")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return f"{err.get('code', '')}: {err.get('detail') or err.get('summary') or ''}".strip(": ")
    return _snippet(resp.content)


def _vds_wait(resp: requests.Response) -> float | None:
    return retry_after_text(resp.text[:2000])


def _extract_datasource(cfg: TableauSourceConfig, tab: TableauSession, observer: Observer,
                        policy: RetryPolicy, cached_version: str | None = None) -> _Pulled:
    client = HttpClient(build_session(cfg.ca_bundle, cfg.verify_tls), base_url=cfg.server_url.rstrip("/") + VDS_PATH,
                        timeout=cfg.timeout, policy=policy, observer=observer, service="Tableau VizQL Data Service",
                        error_message=_vds_message, wait_hint=_vds_wait)
    body = json.dumps(vds_query(cfg))
    where = f"data source {cfg.datasource_luid}"
    try:
        for attempt in (1, 2):
            resp = client.request("POST", "query-datasource", data=body,
                                  ok=lambda r: r.status_code < 400 or r.status_code in (401, 403, 404),
                                  headers={"Content-Type": "application/json", "Accept": "application/json",
                                           "X-Tableau-Auth": tab.token})
            if resp.status_code == 401 and attempt == 1:
                log.info("tableau: session expired before the VizQL Data Service query; signing in again")
                tab.sign_in()
                continue
            break
    finally:
        client.session.close()
    if resp.status_code == 401:
        raise FatalAPIError(f"VizQL Data Service refused the session for {where} twice ({_vds_message(resp)})")
    if resp.status_code == 403:
        raise FatalAPIError(
            f"VizQL Data Service refused {where} (HTTP 403: {_vds_message(resp)}): give the token's user the "
            f"'API Access' capability on that published data source"
        )
    if resp.status_code == 404:
        if _is_json(resp):
            raise FatalAPIError(f"VizQL Data Service does not know {where} (HTTP 404: {_vds_message(resp)}): "
                                f"check datasource_luid (a published data source's LUID)")
        raise FatalAPIError(
            f"{cfg.server_url} has no VizQL Data Service (HTTP 404 at {VDS_PATH}/query-datasource): it needs "
            f"Tableau Cloud or a Tableau Server version that ships VDS; use mode 'view' instead"
        )
    try:
        payload = resp.json()
    except ValueError:
        raise RetriableAPIError(f"VizQL Data Service sent an unreadable answer for {where}") from None
    version = _answer_version(cfg, resp.content)
    if version == cached_version and isinstance(payload, dict) and isinstance(payload.get("data"), list):
        return _Pulled(None, None, [f"{where}: the same data as the last run"], version)
    rows = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise SourceDataError(f"VizQL Data Service answer for {where} has no 'data' list")
    raw = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(cfg.columns))
    records = map_columns(raw, cfg.columns, where)
    records, notes = parse_formatted(records, cfg.date_format)
    records["_row"] = range(1, len(records) + 1)  # record ordinal
    return _Pulled(records, raw, notes, version)


def _is_json(resp: requests.Response) -> bool:
    try:
        resp.json()
        return True
    except ValueError:
        return False
