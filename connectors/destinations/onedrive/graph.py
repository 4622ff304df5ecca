"""What both OneDrive modes share: authenticated Graph calls, the drive and folder addressing, the result.

`connect()` builds the Graph client (session, msal auth, the shared retry policy); `resolve_drive()`
turns user / site / drive_id / me into a drive id; `ensure_folder()` creates missing folders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from config.models import OneDriveDestinationConfig, onedrive_path_problems
from connectors.errors import DestinationError, FatalAPIError
from connectors.http.msal_auth import GraphAuth
from connectors.http.session import HttpClient, RetryPolicy, build_session, default_error_message

log = logging.getLogger("connectors.destinations.onedrive")


@dataclass
class PublishResult:
    web_url: str
    item_id: str
    etag: str
    size: int
    path: str
    note: str | None = None


class GraphApi:
    """Graph API calls with a bearer token (renewed once on 401) through the shared retry policy."""

    def __init__(self, cfg: OneDriveDestinationConfig, session: requests.Session, auth: GraphAuth,
                 policy: RetryPolicy):
        self.cfg = cfg
        self.session = session
        self.auth = auth
        self.policy = policy
        self.http = HttpClient(session, base_url=cfg.graph_url, timeout=cfg.timeout, policy=policy,
                               service="Microsoft Graph")
        self._token: str | None = None

    def call(self, method: str, path: str, *, allow: frozenset[int] = frozenset(), repeat_safe: bool = True,
             **kwargs: Any) -> requests.Response:
        """Send with auth; statuses in `allow` come back to the caller instead of raising.

        `repeat_safe=False`: never resent after a failure that may have applied it (OutcomeUnknown).
        """
        headers = kwargs.pop("headers", {})
        for attempt in (1, 2):
            if self._token is None or attempt == 2:
                self._token = self.auth.token(refresh=attempt == 2)
            resp = self.http.request(
                method, path, headers={**headers, "Authorization": f"Bearer {self._token}"}, repeat_safe=repeat_safe,
                ok=lambda r: r.status_code < 400 or r.status_code in allow or r.status_code == 401, **kwargs)
            if resp.status_code != 401:
                return resp
        raise FatalAPIError(f"Microsoft Graph rejected a fresh access token for {method} {path.split('?')[0]}: "
                            f"{default_error_message(resp)} (check the app's Graph permissions)")

    def upload_url(self, method: str, url: str, *, allow: frozenset[int] = frozenset()) -> requests.Response:
        """GET / DELETE a pre-authenticated upload URL: never with an Authorization header."""
        return self.http.request(method, url, ok=lambda r: r.status_code < 400 or r.status_code in allow)


def connect(cfg: OneDriveDestinationConfig, *, session: requests.Session | None = None,
            sleep: Callable[[float], None] = time.sleep, auth: GraphAuth | None = None,
            config_dir: Path | None = None, retry_statuses: frozenset[int] | None = None) -> GraphApi:
    """A Graph client for `cfg`: the given session and auth, or new ones (msal signs in on the first call).

    `retry_statuses` narrows the statuses the retry policy resends (default: 429 and 5xx).
    """
    session = session or build_session(cfg.ca_bundle, cfg.verify_tls)
    policy = RetryPolicy(sleep=sleep) if retry_statuses is None else RetryPolicy(sleep=sleep, statuses=retry_statuses)
    return GraphApi(cfg, session, auth or GraphAuth(cfg, session=session, config_dir=config_dir), policy)


def check_path(remote_path: str) -> None:
    """DestinationError naming every problem of a drive path OneDrive would refuse."""
    problems = onedrive_path_problems(remote_path)
    if problems:
        raise DestinationError("onedrive destination path: " + "; ".join(problems))


# ----------------------------------------------------------------------------- addressing


def resolve_drive(g: GraphApi, cfg: OneDriveDestinationConfig) -> str:
    """The drive's id from user / site / drive_id / me."""
    if cfg.drive_id:
        where, path = f"drive_id '{cfg.drive_id}'", f"/drives/{quote(cfg.drive_id, safe='!')}"
    elif cfg.user:
        where, path = f"user '{cfg.user}'", f"/users/{quote(cfg.user, safe='@')}/drive"
    elif cfg.me:
        where, path = "the signed-in user (me: true)", "/me/drive"
    else:
        site_id = _site_id(g, str(cfg.site))
        where, path = f"site '{cfg.site}'", f"/sites/{quote(site_id, safe=',')}/drive"
    resp = g.call("GET", path, allow=frozenset({404}), params={"$select": "id,driveType,webUrl"})
    if resp.status_code == 404:
        raise DestinationError(f"onedrive destination: {where} has no drive (not found); check the key's value")
    return resp.json()["id"]


def _site_id(g: GraphApi, site: str) -> str:
    """Resolve `host:/sites/path` (or https://host/sites/path) to a site id; a site id passes through."""
    value = site.strip()
    if value.startswith("https://"):
        host, _, rest = value[len("https://"):].partition("/")
        value = f"{host}:/{rest}" if rest else host
    if "," in value and ":" not in value:
        return value
    host, _, site_path = value.partition(":")
    path = f"/sites/{host}" + (":" + quote(site_path.rstrip("/"), safe="/") if site_path else "")
    resp = g.call("GET", path, allow=frozenset({400, 404}), params={"$select": "id,webUrl"})
    if resp.status_code in (400, 404):
        raise DestinationError(f"onedrive destination: site '{site}' was not found; write it as "
                               "host:/sites/name, e.g. contoso.sharepoint.com:/sites/Sales")
    return resp.json()["id"]


def item_path(drive_id: str, parent_id: str, name: str) -> str:
    return f"/drives/{drive_id}/items/{parent_id}:/{quote(name, safe='')}:"


def ensure_folder(g: GraphApi, drive_id: str, parts: list[str]) -> str:
    """The id of the folder `parts` under the drive root, creating missing folders."""
    folder = g.call("GET", f"/drives/{drive_id}/root", params={"$select": "id"}).json()["id"]
    if not parts:
        return folder
    whole = g.call("GET", f"/drives/{drive_id}/root:/{'/'.join(quote(p, safe='') for p in parts)}",
                   allow=frozenset({404}))
    if whole.status_code == 200:
        return _folder_id(whole.json(), "/" + "/".join(parts))
    for i, seg in enumerate(parts):
        here = "/" + "/".join(parts[: i + 1])
        resp = g.call("GET", item_path(drive_id, folder, seg), allow=frozenset({404}))
        if resp.status_code == 404:
            resp = g.call("POST", f"/drives/{drive_id}/items/{folder}/children", allow=frozenset({409}),
                          json={"name": seg, "folder": {}, "@microsoft.graph.conflictBehavior": "fail"})
            if resp.status_code == 409:  # made by someone else just now
                resp = g.call("GET", item_path(drive_id, folder, seg))
            else:
                log.info("onedrive: created folder %s", here)
        folder = _folder_id(resp.json(), here)
    return folder


def _folder_id(item: dict[str, Any], path: str) -> str:
    if "folder" not in item:
        raise DestinationError(f"onedrive destination: {path} exists but is a file, not a folder; change `path`")
    return item["id"]
