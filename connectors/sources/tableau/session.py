"""A TSC Server signed in with the personal access token, with the project's retry policy.

An expired session (401002) is signed in again once; 429000, 5xx and network faults are retried
with the RetryPolicy; a "retry after 29 minutes" longer than the policy allows gives up at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import tableauserverclient as TSC
from tableauserverclient.server.endpoint.exceptions import (  # XMLError: TSC 0.34+
    InternalServerError,
    NonXMLResponseError,
    XMLError,
)

from config.models import TableauSourceConfig
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.http.session import (
    TRANSIENT_EXCEPTIONS,
    Observer,
    RetryPolicy,
    build_session,
    pause_before_retry,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_RETRY_AFTER = re.compile(r"retry\s+after\s+(\d+(?:\.\d+)?)\s*(second|sec|minute|min|hour)", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600}


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
            self.server.close()  # Server.close(): TSC 0.42+

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

