"""Mode `datasource`: one VizQL Data Service query-datasource call with the REST session's token.

Error codes as the VDS error-code table lists them
(https://help.tableau.com/current/api/vizql-data-service/en-us/docs/vds_error_codes.html):
400803 validation failed, 400804 response too large (1 GB, vds_limitations.html), 403800 no API
Access capability, 403157 feature disabled, 404934 unknown field, 429000 too many requests (a
site may run 100 queries per hour per Creator license).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pandas as pd
import requests

from config.models import TableauSourceConfig
from connectors.errors import FatalAPIError, RetriableAPIError, SourceDataError
from connectors.http.session import HttpClient, Observer, RetryPolicy, build_session
from connectors.sources.tableau.pulled import Pulled, answer_version
from connectors.sources.tableau.session import TableauSession, _snippet, retry_after_text
from connectors.sources.tableau.values import map_columns, parse_formatted

log = logging.getLogger(__name__)

VDS_PATH = "/api/v1/vizql-data-service"
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")


def vds_error(resp: requests.Response) -> tuple[str, str]:
    """(errorCode, message) of a TableauError body (or a REST-style `error`); ('', snippet) otherwise."""
    try:
        body = resp.json()
    except ValueError:
        return "", _snippet(resp.content)
    if isinstance(body, dict) and ("message" in body or "errorCode" in body):
        return str(body.get("errorCode") or ""), str(body.get("message") or "")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(err.get("code") or ""), str(err.get("detail") or err.get("summary") or "")
    return "", _snippet(resp.content)


def _vds_message(resp: requests.Response) -> str:
    code, message = vds_error(resp)
    return f"{code}: {message}".strip(": ")


def _vds_wait(resp: requests.Response) -> float | None:
    return retry_after_text(resp.text[:2000])


def _date_set_hint(query: dict[str, Any]) -> str:
    """A hint when a SET filter carries date-like text: VDS does not take dates in set filters."""
    for flt in query["query"].get("filters") or []:
        if flt.get("filterType") == "SET" and any(isinstance(v, str) and _ISO_DAY.match(v) for v in flt.get("values") or []):
            caption = flt["field"].get("fieldCaption")
            return (f"; VizQL Data Service takes no dates in set filters: give filters.{caption} a date (not quoted) "
                    "or {filterType: QUANTITATIVE_DATE, quantitativeFilterType: RANGE, minDate, maxDate}")
    return ""


def _is_json(resp: requests.Response) -> bool:
    try:
        resp.json()
        return True
    except ValueError:
        return False


def extract_datasource(cfg: TableauSourceConfig, tab: TableauSession, observer: Observer, policy: RetryPolicy,
                       query: dict[str, Any], cached_version: str | None = None) -> Pulled:
    """POST query-datasource (signing in again once on 401) and read `data` into records."""
    client = HttpClient(build_session(cfg.ca_bundle, cfg.verify_tls), base_url=cfg.server_url.rstrip("/") + VDS_PATH,
                        timeout=cfg.timeout, policy=policy, observer=observer, service="Tableau VizQL Data Service",
                        error_message=_vds_message, wait_hint=_vds_wait)
    body = json.dumps(query)
    where = f"data source {cfg.datasource_luid}"
    try:
        for attempt in (1, 2):
            resp = client.request("POST", "query-datasource", data=body,
                                  ok=lambda r: r.status_code < 400 or r.status_code in (400, 401, 403, 404),
                                  headers={"Content-Type": "application/json", "Accept": "application/json",
                                           "X-Tableau-Auth": tab.token})
            if resp.status_code == 401 and attempt == 1:
                log.info("tableau: session expired before the VizQL Data Service query; signing in again")
                tab.sign_in()
                continue
            break
    finally:
        client.session.close()
    _raise_for_refusal(cfg, resp, where, query)
    try:
        payload = resp.json()
    except ValueError:
        raise RetriableAPIError(f"VizQL Data Service sent an unreadable answer for {where}") from None
    version = answer_version(cfg, resp.content)
    if version == cached_version and isinstance(payload, dict) and isinstance(payload.get("data"), list):
        return Pulled(None, None, [f"{where}: the same data as the last run"], version)
    rows = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise SourceDataError(f"VizQL Data Service answer for {where} has no 'data' list")
    raw = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(cfg.columns))
    records = map_columns(raw, cfg.columns, where)
    records, notes = parse_formatted(records, cfg.date_format)
    records["_row"] = range(1, len(records) + 1)  # record ordinal
    return Pulled(records, raw, notes, version)


def _raise_for_refusal(cfg: TableauSourceConfig, resp: requests.Response, where: str, query: dict[str, Any]) -> None:
    status = resp.status_code
    if status < 400:
        return
    code, message = vds_error(resp)
    said = f"HTTP {status}: {code}: {message}" if code else f"HTTP {status}: {message}"
    if status == 400:
        if code == "400804":
            raise FatalAPIError(f"VizQL Data Service refused {where} ({said}): the answer would pass VDS's 1 GB "
                                f"limit; add filters")
        raise FatalAPIError(f"VizQL Data Service refused the query on {where} ({said}){_date_set_hint(query)}")
    if status == 401:
        raise FatalAPIError(f"VizQL Data Service refused the session for {where} twice ({code}: {message})")
    if status == 403:
        if code == "403157":
            raise FatalAPIError(f"VizQL Data Service is turned off on site '{cfg.site}' ({said}); use mode 'view'")
        raise FatalAPIError(f"VizQL Data Service refused {where} ({said}): give the token's user the "
                            f"'API Access' capability on that published data source")
    if status == 404 and _is_json(resp):
        if code == "404934":
            raise FatalAPIError(f"VizQL Data Service: {where} has no such field ({said}); check the "
                                f"fieldCaption names in 'fields' / 'columns' against the data source")
        raise FatalAPIError(f"VizQL Data Service does not know {where} ({said}): check datasource_luid "
                            f"(a published data source's LUID)")
    raise FatalAPIError(
        f"{cfg.server_url} has no VizQL Data Service (HTTP {status} at {VDS_PATH}/query-datasource): it needs "
        f"Tableau Cloud or a Tableau Server version that ships VDS; use mode 'view' instead")
