"""Tableau source: a view's data as CSV (mode `view`) or a VizQL Data Service query (mode `datasource`).

Sign-in is a personal access token through tableauserverclient (TSC). Tableau allows one session
per token: a second sign-in with the same token ends the first, so every run holds the token's
lock (token_lock: a file in the state folder, across processes) while signed in, and signs out
in `finally`. Filters are checked before the lock is taken or anyone signs in.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import requests
import tableauserverclient as TSC

from config.models import TableauSourceConfig
from connectors.errors import FatalAPIError
from connectors.extracted import ExtractContext, Extracted
from connectors.http.paging import paginate
from connectors.http.session import RetryPolicy
from connectors.sources.tableau.filters import (
    FilterConfigError,
    csv_request_options,
    name_filterable,
    vds_query,
)
from connectors.sources.tableau.pulled import Pulled, answer_version
from connectors.sources.tableau.session import TableauSession
from connectors.sources.tableau.token_lock import (
    LOCK_WAIT_SECONDS,
    default_state_dir,
    token_session_lock,
)
from connectors.sources.tableau.values import map_columns, parse_formatted, read_view_csv
from connectors.sources.tableau.vds import extract_datasource

log = logging.getLogger(__name__)

VIEW_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000  # Paginating Results: pageSize "can be 1 through 1000" (rest_api_concepts_paging.htm)
_LUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


# ----------------------------------------------------------------------------- entry point


def extract(
    cfg: TableauSourceConfig,
    ctx: ExtractContext,
    *,
    policy: RetryPolicy | None = None,
    session_factory: Callable[[], requests.Session] | None = None,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> Extracted:
    """Sign in, pull the view (or data source), sign out; records carry canonical names and `_row`.

    `policy` (retries, backoff, sleep) and `session_factory` (a requests Session per thread
    for TSC) can be injected; by default the project's RetryPolicy and `build_session`.
    `lock_wait`: seconds to wait for another run holding the same token before giving up.
    """
    started = time.monotonic()
    obs = ctx.observer
    before = (obs.requests, obs.retries, obs.waited_seconds)
    policy = policy or ctx.retry_policy or RetryPolicy()
    opts: TSC.CSVRequestOptions | None = None
    query: dict[str, Any] = {}
    try:  # a filter that cannot be sent fails before anyone signs in
        if cfg.mode == "view":
            opts = csv_request_options(cfg.filters, cfg.max_age)
        else:
            query = vds_query(cfg)
    except FilterConfigError as exc:
        raise FatalAPIError(f"tableau source '{cfg.name}': {exc}") from None
    state_dir = ctx.state_dir or default_state_dir()
    with token_session_lock(state_dir, cfg.server_url, cfg.token_name, site=cfg.site, source=cfg.name,
                            wait=lock_wait):
        tab = TableauSession(cfg, obs, policy, session_factory)
        try:
            tab.sign_in()
            if opts is not None:
                got = _extract_view(cfg, tab, opts, ctx.cached_version)
            else:
                got = extract_datasource(cfg, tab, obs, policy, query, ctx.cached_version)
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


# ----------------------------------------------------------------------------- mode: view


def _extract_view(cfg: TableauSourceConfig, tab: TableauSession, opts: TSC.CSVRequestOptions,
                  cached_version: str | None = None) -> Pulled:
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
    tab.server.views.populate_csv(view, opts)
    body = tab.call(f"download the data of view '{cfg.view}'", lambda: b"".join(view.csv))
    version = answer_version(cfg, body)
    if version == cached_version:
        return Pulled(None, None, [*notes, f"view '{cfg.view}': the same data as the last run"], version)
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
    return Pulled(records, raw, notes, version)


def find_view(tab: TableauSession, ref: str, page_size: int = VIEW_PAGE_SIZE) -> TSC.ViewItem:
    """A view by LUID, or by 'Workbook/View' through a paged name lookup (split at the first '/').

    A name Tableau's filter grammar cannot carry (see filters.UNFILTERABLE) is matched here over
    the unfiltered list, read at the largest page size.
    """
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
                    if w.name == workbook} if named and name_filterable(workbook) else set()
    names: dict[str, str] = {}

    def workbook_of(view: TSC.ViewItem) -> str:
        wid = view.workbook_id or ""
        if wid not in names:
            names[wid] = tab.call(f"get workbook {wid}", lambda: server.workbooks.get_by_id(wid)).name
        return names[wid]

    def in_workbook(view: TSC.ViewItem) -> bool:
        if view.workbook_id in workbook_ids or (view.content_url or "").split("/sheets/")[0] == workbook:
            return True
        return not name_filterable(workbook) and workbook_of(view) == workbook

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
    """Items of a paged list endpoint (views, workbooks), filtered by name when Tableau can say it."""
    filtered = name_filterable(name)
    opts = TSC.RequestOptions(pagesize=page_size if filtered else MAX_PAGE_SIZE)
    if filtered:
        opts.filter.add(TSC.Filter(TSC.RequestOptions.Field.Name, TSC.RequestOptions.Operator.Equals, name))

    def fetch(page: int | str | None) -> tuple[list[Any], int | None]:
        opts.pagenumber = int(page or 1)
        items, pg = tab.call(f"list {what} (page {opts.pagenumber})", lambda: endpoint.get(opts))
        more = pg.total_available is not None and pg.page_number * pg.page_size < pg.total_available and items
        return items, (pg.page_number + 1 if more else None)

    for page in paginate(fetch, first=1):
        yield from page
