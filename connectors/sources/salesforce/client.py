"""Salesforce REST client: OAuth sign-in (client credentials or JWT bearer) and SOQL paging.

Plain `requests` through the shared HttpClient (one retry policy, TLS options that win over
REQUESTS_CA_BUNDLE, request counters) rather than simple-salesforce, which hard-codes
`https://{instance}` and its own error handling. Every call goes to the token response's
`instance_url`.

API limits: 403 REQUEST_LIMIT_EXCEEDED is returned for two limits. "TotalRequests Limit exceeded"
is the org's daily allocation (rolling 24 h): fatal, the cursor stays and the next run resumes.
Any other (e.g. "ConcurrentPerOrgLongTxn Limit exceeded": too many long-running requests at
once) clears by itself and is retried with the retry policy's backoff. The allocation left is read
from `/limits` at the start and from every answer's `Sforce-Limit-Info: api-usage=used/max`; the
run stops (fatal, nothing saved) before it would leave fewer than `daily_api_reserve` requests.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from config.models import SalesforceSourceConfig
from connectors.errors import FatalAPIError
from connectors.http.paging import paginate
from connectors.http.session import HttpClient, pause_before_retry

log = logging.getLogger(__name__)

JWT_LIFETIME = timedelta(minutes=3)
_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")
DAILY_LIMIT_TEXT = "TotalRequests"  # the daily allocation's REQUEST_LIMIT_EXCEEDED message


class ReserveReached(FatalAPIError):
    """The org's daily API allocation is down to the configured reserve: the run stopped cleanly."""


class SalesforceAPI:
    """Authenticated REST calls to one org. Re-authenticates once when a session expires (401)."""

    def __init__(self, cfg: SalesforceSourceConfig, http: HttpClient):
        self.cfg = cfg
        self.http = http
        self.instance_url = ""
        self._token = ""  # never logged
        self.token_requests = 0
        self.api_used: int | None = None  # of the org's daily allocation, as last reported
        self.api_max: int | None = None

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

    @property
    def api_remaining(self) -> int | None:
        return None if self.api_used is None or self.api_max is None else self.api_max - self.api_used

    def read_limits(self) -> None:
        """The org's daily API allocation left (GET /limits: DailyApiRequests {Max, Remaining})."""
        body = self.get(f"{self.data_path}/limits")
        daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
        if isinstance(daily, dict) and isinstance(daily.get("Max"), int) and isinstance(daily.get("Remaining"), int):
            self.api_max, self.api_used = daily["Max"], daily["Max"] - daily["Remaining"]

    def _check_reserve(self) -> None:
        left, reserve = self.api_remaining, self.cfg.daily_api_reserve
        if left is not None and left <= reserve:
            raise ReserveReached(
                f"Salesforce source '{self.cfg.name}': stopped before going below daily_api_reserve ({reserve}): "
                f"{max(left, 0)} of {self.api_max} daily API requests left in the org's rolling 24-hour window. "
                "Nothing was saved and the next run resumes from the same cursor; lower daily_api_reserve "
                "to let this source use more of the allocation"
            )

    def _note_usage(self, resp: requests.Response) -> str | None:
        usage = resp.headers.get("Sforce-Limit-Info")
        m = _USAGE.search(usage or "")
        if m:
            self.api_used, self.api_max = int(m.group(1)), int(m.group(2))
        if usage:
            log.debug("Salesforce source '%s': %s", self.cfg.name, usage)
        return usage

    def get(self, path_or_url: str, params: dict[str, str] | None = None) -> Any:
        """GET a data resource as JSON; a 401 INVALID_SESSION_ID signs in again once; a concurrent
        REQUEST_LIMIT_EXCEEDED is retried with backoff; the daily one, or the reserve reached, is fatal."""
        signed_in_again, busy = False, 0
        while True:
            self._check_reserve()
            resp = self.http.request(
                "GET", path_or_url, params=params, expect_json=True,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                         "Sforce-Query-Options": f"batchSize={self.cfg.page_size}"},
                ok=lambda r: r.status_code < 400 or (r.status_code in (401, 403) and bool(_error_list(r))),
            )
            usage = self._note_usage(resp)
            if resp.status_code < 400:
                return resp.json()
            codes = _error_codes(resp)
            if resp.status_code == 401 and "INVALID_SESSION_ID" in codes and not signed_in_again:
                log.info("Salesforce source '%s': session expired; signing in again", self.cfg.name)
                self.authenticate()
                signed_in_again = True
                continue
            message = _error_text(resp)
            if resp.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
                if self._daily_limit(message):
                    raise FatalAPIError(
                        f"Salesforce source '{self.cfg.name}': the org's daily API request allocation is used up "
                        f"({message}; {usage or 'no usage header'}). Retrying will not help until the rolling "
                        "24-hour window frees requests (Setup > Company Information > API Requests); nothing was "
                        "saved and the next run resumes from the same cursor"
                    )
                busy += 1  # the concurrent long-running request limit: clears when those requests end
                pause_before_retry(self.http.policy, self.http.observer, "Salesforce", busy,
                                   f"HTTP 403 on {urlsplit(resp.url).path}: {message}", None)
                continue
            what = "a new session was rejected too" if resp.status_code == 401 else "the request was refused"
            raise FatalAPIError(
                f"Salesforce source '{self.cfg.name}': {what} (HTTP {resp.status_code} on "
                f"{urlsplit(resp.url).path}): {message}; check that the integration user has API access "
                "and may read Opportunity"
            )

    def _daily_limit(self, message: str) -> bool:
        """A REQUEST_LIMIT_EXCEEDED for the daily allocation (its message, or the usage at the max)."""
        left = self.api_remaining
        return DAILY_LIMIT_TEXT in message or (left is not None and left <= 0)

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
