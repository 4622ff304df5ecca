"""The HTTP boundary: session factory, TLS options and the retry policy for failed requests.

Retry policy (after dlt's requests/retry.py): 429, 5xx, connection errors, timeouts and bodies
cut short are retried with capped exponential backoff that honours Retry-After; when attempts
run out a RetriableAPIError is raised. Any other 4xx raises FatalAPIError at once, carrying the
API's own message. A request sent with `repeat_safe=False` (one whose second application would do
harm, e.g. the Graph workbook API's rows/add or a range delete with shift) is resent only after a
429, which the service refused without running it ("the requests fail",
https://learn.microsoft.com/graph/throttling); after a 5xx, a dropped connection or a timeout it
may have been applied, so `OutcomeUnknown` is raised for the caller to read the state back.
`HttpClient.request` applies it to every request it sends (HubSpot, Salesforce, Tableau's VizQL
Data Service, Microsoft Graph); the two loops that cannot send
through it retry with the same `RetryPolicy` and `pause_before_retry`: Tableau's TSC calls
(connectors/sources/tableau/session.py) and the OneDrive upload pieces, which resume from the
session's nextExpectedRanges (connectors/destinations/onedrive/upload.py).

Waits and repeats that are not this policy, each bounded where it is written:
  - OneDrive locks (423): `on_locked: wait` waits 30 s doubling to 300 s, at most `lock_wait_max`
    in all (upload._LockPolicy); a lost upload session (404) is started over twice at most.
  - The Graph workbook API: createSession answered 202 is polled at the service's Retry-After (else
    every 30 s) for at most workbook_api.SESSION_WAIT_MAX seconds; a dropped workbook session is
    opened again once; a write whose outcome is unknown (OutcomeUnknown) is sent again only after
    reading the workbook back shows it was not applied (workbook_session.Workbook.unsure), at most
    3 times; a refresh that failed is undone once, in a new session (workbook_api).
  - Expired sign-ins are renewed once and the request sent again: Graph tokens on 401
    (onedrive/graph.py), Salesforce INVALID_SESSION_ID, Tableau 401002 and the VizQL 401.
  - HubSpot's rate limiter waits before requests when the window runs low (pacing, not retry);
    a Tableau source waits for another run's hold on the same access token (tableau/token_lock.py).
  - msal's token requests go through a session from `build_session` but not through this policy:
    one attempt each (msal leaves retrying to the http_client it is given); a 429, a 5xx, AADSTS50196
    or an exception is a RetriableAPIError, any other error answer a FatalAPIError
    (connectors/http/msal_auth.py; docs/api-contracts.md section 4). `pipeline-sync login` waits in msal's device-code polling.
  - On top of all of these, the Prefect flow retries a failed extract-/publish- step or report
    task twice (after 30 s and 120 s) when it failed with a RetriableAPIError (flows/sync.py).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.redact import redact

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class OutcomeUnknown(RetriableAPIError):
    """A request that is not safe to repeat failed in a way that leaves open whether it was applied.

    `response` is the failed answer (None after a transport failure); `wait` is its Retry-After.
    """

    def __init__(self, message: str, response: requests.Response | None = None, wait: float | None = None):
        super().__init__(message)
        self.response = response
        self.wait = wait


class TlsSession(requests.Session):
    """A Session whose own `verify` (a CA bundle, or False) wins over REQUESTS_CA_BUNDLE.

    Plain requests lets the environment's bundle override `session.verify`, which silently
    ignores a configured corporate CA (see docs/platform-notes). Proxies from the
    environment still apply.
    """

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if (verify is None or verify is True) and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def build_session(ca_bundle: str | None = None, verify_tls: bool = True, user_agent: str | None = None) -> TlsSession:
    """A session for one connector. `ca_bundle` (a PEM path) is honoured even with REQUESTS_CA_BUNDLE set."""
    session = TlsSession()
    if not verify_tls:
        log.warning("TLS certificate verification is OFF for this connection: use ca_bundle instead")
        session.verify = False
    elif ca_bundle:
        session.verify = ca_bundle
    session.headers["User-Agent"] = user_agent or "pipeline-sync"
    return session


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    backoff_base: float = 0.5  # seconds; doubled each attempt
    backoff_max: float = 30.0  # cap of one computed backoff
    retry_after_max: float = 300.0  # cap of one server-requested wait
    statuses: frozenset[int] = RETRY_STATUSES
    sleep: Callable[[float], None] = time.sleep
    jitter: bool = True

    def backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return delay * (0.5 + random.random() / 2) if self.jitter else delay


def retry_after_seconds(response: requests.Response, now: datetime | None = None) -> float | None:
    """Parse Retry-After (seconds or an HTTP date). None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def pause_before_retry(policy: RetryPolicy, observer: Observer, service: str, attempt: int, reason: str,
                       wait: float | None) -> None:
    """The retry step shared by every client: give up when attempts run out, else count and wait.

    `wait` is the server's (Retry-After or a rate-limit hint); otherwise capped exponential backoff.
    """
    if attempt >= policy.max_attempts:
        raise RetriableAPIError(f"{service}: gave up after {attempt} attempts; last: {reason}")
    delay = wait if wait is not None else policy.backoff(attempt)
    observer.retries += 1
    observer.waited_seconds += delay
    observer.event("retry", reason=reason, wait=delay, attempt=attempt)
    log.info("%s: retrying in %.1fs (attempt %d): %s", service, delay, attempt, reason)
    policy.sleep(delay)


def default_error_message(response: requests.Response) -> str:
    """The API's own message, from the common JSON/XML envelopes, else the start of the body."""
    text = redact(response.text)[:2000] if response.content else ""  # redacted before the cut
    try:
        body = response.json()
    except ValueError:
        return text.strip()[:500] or response.reason or ""
    if isinstance(body, list) and body and isinstance(body[0], dict):  # Salesforce
        return "; ".join(f"{e.get('errorCode', '')}: {e.get('message', '')}".strip(": ") for e in body)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # Graph, Tableau JSON
            code = err.get("code", "")
            msg = err.get("message") or err.get("detail") or err.get("summary") or ""
            return f"{code}: {msg}".strip(": ")
        if isinstance(err, str):  # OAuth
            return f"{err}: {body.get('error_description', '')}".strip(": ")
        if "message" in body:
            return str(body["message"])
    return text.strip()[:500]


@dataclass
class Observer:
    """Counters a run reports (requests, retries, rate-limit waits); optional progress callback."""

    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    on_event: Callable[[str, Mapping[str, Any]], None] | None = None

    def event(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)


@dataclass
class HttpClient:
    """Requests through one session with the retry policy; connectors build one each."""

    session: requests.Session
    base_url: str = ""
    timeout: float = 30.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    observer: Observer = field(default_factory=Observer)
    error_message: Callable[[requests.Response], str] = default_error_message
    service: str = "service"
    # Hook: decide a wait (seconds) for a retryable response that has no Retry-After.
    wait_hint: Callable[[requests.Response], float | None] | None = None

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url.rstrip("/") + "/" + path_or_url.lstrip("/")

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        expect_json: bool = False,
        ok: Callable[[requests.Response], bool] | None = None,
        repeat_safe: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send with retries. `expect_json` also retries a 2xx body that is not complete JSON.

        `repeat_safe=False`: resent only after a 429; any other retryable failure raises OutcomeUnknown.
        """
        url = self.url(path_or_url)
        kwargs.setdefault("timeout", self.timeout)
        attempt = 0
        while True:
            attempt += 1
            self.observer.requests += 1
            wait: float | None = None
            reason: str
            resp = None
            try:
                resp = self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError as exc:
                detail = _certificate_problem(exc)
                if detail is None:  # e.g. a handshake cut short: transient
                    reason = f"SSLError on {method} {_path(url)}"
                else:  # retrying cannot make an untrusted certificate trusted
                    raise FatalAPIError(
                        f"{self.service}: the TLS certificate of {urlsplit(url).hostname} is not trusted ({detail}); "
                        "set `ca_bundle:` to the PEM file of the CA that issued it (e.g. a corporate proxy's CA)"
                    ) from None
            except TRANSIENT_EXCEPTIONS as exc:
                reason = f"{type(exc).__name__} on {method} {_path(url)}"
            else:
                if ok(resp) if ok is not None else resp.status_code < 400:
                    if not expect_json:
                        return resp
                    try:
                        resp.json()
                        return resp
                    except ValueError:
                        reason = f"incomplete JSON body from {method} {_path(url)}"
                elif resp.status_code in self.policy.statuses:
                    reason = f"HTTP {resp.status_code} from {method} {_path(url)}: {self.error_message(resp)}"
                    wait = retry_after_seconds(resp)
                    if wait is None and self.wait_hint is not None:
                        wait = self.wait_hint(resp)
                    if wait is not None:
                        wait = min(wait, self.policy.retry_after_max)
                else:
                    raise FatalAPIError(
                        f"{self.service} refused {method} {_path(url)} with HTTP {resp.status_code}: "
                        f"{self.error_message(resp)}"
                    )
            if not repeat_safe and (resp is None or resp.status_code != 429):
                raise OutcomeUnknown(f"{self.service}: {reason}; not sent again (it may have been applied)",
                                     resp, wait)
            pause_before_retry(self.policy, self.observer, self.service, attempt, reason, wait)

    def get_json(self, path_or_url: str, **kwargs: Any) -> Any:
        return self.request("GET", path_or_url, expect_json=True, **kwargs).json()

    def post_json(self, path_or_url: str, body: Any, **kwargs: Any) -> Any:
        resp = self.request("POST", path_or_url, expect_json=True, data=json.dumps(body),
                            headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)
        return resp.json()


def _certificate_problem(exc: requests.exceptions.SSLError) -> str | None:
    """'certificate verify failed: <why>' when the server's certificate was rejected, else None."""
    m = re.search(r"certificate verify failed: ([^(')]+)", str(exc))
    return f"certificate verify failed: {m.group(1).strip()}" if m else None


def _path(url: str) -> str:
    """The URL without its query string (queries can carry tokens)."""
    return url.split("?", 1)[0]
