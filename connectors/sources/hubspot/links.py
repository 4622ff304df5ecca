"""Links from the Actions sheet to each deal's page in HubSpot (`record_url`).

A deal's page is https://<uiDomain>/contacts/<portalId>/record/0-3/<deal id> (0-3: the deals'
object type id, https://developers.hubspot.com/docs/guides/crm/using-object-apis). The portal id
and the app's domain (app.hubspot.com; app-eu1.hubspot.com for EU-hosted portals) come from one
GET /account-info/v3/details a run (https://developers.hubspot.com/docs/api-reference/legacy/account/
account-information/get-account-details; scope `oauth`). A token that may not read it (403), or
any other failure there, leaves the links out with a note: the run goes on. A source's own
`record_url_template` wins: then nothing is asked.
"""

from __future__ import annotations

import logging
import re

import pandas as pd
import requests

from config.models import HubSpotSourceConfig
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.http.session import default_error_message
from connectors.sources.hubspot.client import HubSpotApi

log = logging.getLogger(__name__)

DETAILS = "/account-info/v3/details"
DEAL_OBJECT = "0-3"
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*hubspot\.com")  # the domains HubSpot's app runs on


def record_base(api: HubSpotApi, cfg: HubSpotSourceConfig) -> tuple[str | None, str | None]:
    """(the deal page URL without the deal id, None) or (None, a note saying why there are no links)."""
    why = f"HubSpot source '{cfg.name}': no links to the deal records"
    token = cfg.token

    def answered(resp: requests.Response) -> bool:  # 4xx comes back to us (no retry, no error); 429/5xx retried
        return resp.status_code < 500 and resp.status_code != 429

    try:
        api.limiter.before_request()
        resp = api.client.request("GET", DETAILS, expect_json=True, ok=answered)
    except (FatalAPIError, RetriableAPIError) as exc:
        return None, f"{why} ({DETAILS}: {exc})"
    if resp.status_code == 403:
        return None, (f"{why}: the token may not read the account details (HTTP 403 on {DETAILS}); give the "
                      "private app the scope oauth, or set record_url_template on the source")
    if resp.status_code != 200:
        text = default_error_message(resp).replace(token, "***")
        return None, f"{why}: HTTP {resp.status_code} on {DETAILS}: {text}"
    body = resp.json()
    portal = body.get("portalId") if isinstance(body, dict) else None
    domain = str(body.get("uiDomain") or "app.hubspot.com").lower() if isinstance(body, dict) else ""
    if isinstance(portal, bool) or not isinstance(portal, int) or portal <= 0:
        return None, f"{why}: {DETAILS} gave no portalId"
    if not _HOST.fullmatch(domain):
        return None, f"{why}: {DETAILS} gave uiDomain {domain[:80]!r}, not a hubspot.com host"
    return f"https://{domain}/contacts/{portal}/record/{DEAL_OBJECT}/", None


def add_record_urls(records: pd.DataFrame, base: str) -> None:
    """`record_url` of every deal in `records` (by its opportunity_id, the HubSpot deal id)."""
    ids = records["opportunity_id"].astype(object)
    records["record_url"] = (base + ids.astype(str)).where(ids.notna() & (ids.astype(str) != ""), None)


def link_records(api: HubSpotApi, cfg: HubSpotSourceConfig, records: pd.DataFrame) -> list[str]:
    """Fill `record_url` on `records` (the rows built this run) unless the source has its own
    `record_url_template` (it wins; nothing asked). No rows: nothing asked, but the column is there
    (the frames keep the shape of a run with deals). Returns the notes: why there are no links (also
    logged as a warning)."""
    if cfg.record_url_template:
        return []
    if not len(records):
        records["record_url"] = pd.Series(dtype=object)
        return []
    base, note = record_base(api, cfg)
    if base is None:
        log.warning("%s", note)
        return [note or ""]
    add_record_urls(records, base)
    return []
