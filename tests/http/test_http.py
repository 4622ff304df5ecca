"""HttpClient + requests against the local HTTPS fake: retries, Retry-After, fatal errors, TLS, timeouts."""

from __future__ import annotations

import email.utils
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import certifi
import pytest
import requests
import urllib3

from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.http.session import (
    HttpClient,
    Observer,
    RetryPolicy,
    build_session,
    retry_after_seconds,
)
from tests.fakes.server import FakeServer, Request, Response

OK = Response(200, {"value": [1, 2, 3]})


class Script:
    """A fake API answering with the given responses in order (the last one repeats)."""

    def __init__(self, *responses: Response):
        self.responses = list(responses)
        self.seen: list[Request] = []

    def __call__(self, req: Request) -> Response:
        self.seen.append(req)
        return self.responses[min(len(self.seen), len(self.responses)) - 1]


@pytest.fixture
def serve(tmp_path) -> Iterator:
    servers: list[FakeServer] = []

    def start(*responses: Response) -> tuple[FakeServer, Script]:
        script = Script(*responses)
        srv = FakeServer(script, tmp_path).__enter__()
        servers.append(srv)
        return srv, script

    yield start
    for srv in servers:
        srv.__exit__(None, None, None)


def client(srv: FakeServer, waits: list[float], **policy) -> HttpClient:
    """A real client trusting the fake's CA; sleeps are recorded, never slept."""
    pol = RetryPolicy(sleep=waits.append, jitter=False, **{"max_attempts": 4, "backoff_base": 0.5, **policy})
    return HttpClient(build_session(ca_bundle=srv.ca_path), base_url=srv.url, timeout=5, policy=pol, service="fakeapi")


# ----------------------------------------------------------------------------- retries


def test_429_with_retry_after_seconds_is_honoured(serve):
    srv, script = serve(Response(429, {"message": "slow down"}, headers={"Retry-After": "7"}), OK)
    waits: list[float] = []
    events: list[tuple[str, dict]] = []
    c = client(srv, waits)
    c.observer = Observer(on_event=lambda kind, data: events.append((kind, dict(data))))
    assert c.get_json("/deals") == {"value": [1, 2, 3]}
    assert waits == [7.0]
    assert len(script.seen) == 2
    assert (c.observer.requests, c.observer.retries, c.observer.waited_seconds) == (2, 1, 7.0)
    assert events == [("retry", {"reason": f"HTTP 429 from GET {srv.url}/deals: slow down", "wait": 7.0, "attempt": 1})]


def test_503_then_success_backs_off_exponentially(serve):
    srv, script = serve(Response(503, "busy"), Response(503, "busy"), Response(502, "bad gateway"), OK)
    waits: list[float] = []
    resp = client(srv, waits).request("GET", "/deals")
    assert resp.status_code == 200 and resp.json() == {"value": [1, 2, 3]}
    assert waits == [0.5, 1.0, 2.0]
    assert [r.path for r in script.seen] == ["/deals"] * 4


def test_backoff_is_capped_and_jitter_stays_within_half_to_full():
    pol = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=False)
    assert [pol.backoff(a) for a in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(backoff_base=1.0, backoff_max=5.0)
    assert all(1.0 <= jittered.backoff(2) <= 2.0 for _ in range(50))


def test_exhausted_attempts_raise_retriable(serve):
    srv, script = serve(Response(503, {"error": {"code": "serviceUnavailable", "message": "try later"}}))
    waits: list[float] = []
    with pytest.raises(RetriableAPIError) as info:
        client(srv, waits, max_attempts=3).request("GET", "/deals?token=SECRET-IN-QUERY")
    assert str(info.value) == (  # the URL without its query string: queries can carry tokens
        f"fakeapi: gave up after 3 attempts; last: HTTP 503 from GET {srv.url}/deals: serviceUnavailable: try later"
    )
    assert "SECRET" not in str(info.value)
    assert len(script.seen) == 3 and waits == [0.5, 1.0]


@pytest.mark.parametrize(
    ("header", "cap", "expected"),
    [("3600", 60.0, 60.0), ("0", 60.0, 0.0), ("2.5", 60.0, 2.5), ("-3", 60.0, 0.0)],
)
def test_retry_after_cap(serve, header, cap, expected):
    srv, _ = serve(Response(429, "", headers={"Retry-After": header}), OK)
    waits: list[float] = []
    client(srv, waits, retry_after_max=cap).request("GET", "/x")
    assert waits == [expected]


def test_retry_after_as_http_date(serve):
    when = datetime.now(UTC) + timedelta(seconds=120)
    srv, _ = serve(Response(503, "", headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}), OK)
    waits: list[float] = []
    client(srv, waits).request("GET", "/x")
    assert len(waits) == 1 and 100 < waits[0] <= 120


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 27 Oct 2026 08:01:30 GMT", 90.0),
        ("Tue, 27 Oct 2026 07:00:00 GMT", 0.0),  # in the past
        ("120", 120.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_seconds(value, expected):
    resp = requests.Response()
    if value is not None:
        resp.headers["Retry-After"] = value
    assert retry_after_seconds(resp, now=datetime(2026, 10, 27, 8, 0, tzinfo=UTC)) == expected


def test_wait_hint_used_without_retry_after(serve):
    srv, _ = serve(Response(429, {"policyName": "TEN_SECONDLY_ROLLING"}), OK)
    waits: list[float] = []
    c = client(srv, waits)
    c.wait_hint = lambda resp: 10.0 if "SECONDLY" in resp.text else None
    c.request("GET", "/x")
    assert waits == [10.0]


@pytest.mark.parametrize(
    "bad",
    [
        Response(200, b'{"value": [1, 2', headers={"Content-Type": "application/json"}),  # complete, not JSON
        Response(200, {"value": [1, 2, 3]}, truncate_at=7),  # connection closed mid-body
        Response(drop=True),  # connection dropped before any answer
    ],
    ids=["incomplete-json", "truncated-body", "dropped-connection"],
)
def test_faults_are_retried(serve, bad):
    srv, script = serve(bad, OK)
    waits: list[float] = []
    assert client(srv, waits).get_json("/deals") == {"value": [1, 2, 3]}
    assert len(script.seen) == 2 and waits == [0.5]


def test_incomplete_json_without_expect_json_is_returned(serve):
    srv, _ = serve(Response(200, b'{"value": [1', headers={"Content-Type": "application/json"}))
    resp = client(srv, []).request("GET", "/raw")
    assert resp.content == b'{"value": [1'


def test_incomplete_json_every_time_gives_up(serve):
    srv, _ = serve(Response(200, b"{", headers={"Content-Type": "application/json"}))
    with pytest.raises(RetriableAPIError) as info:
        client(srv, [], max_attempts=2).get_json("/deals")
    assert str(info.value) == f"fakeapi: gave up after 2 attempts; last: incomplete JSON body from GET {srv.url}/deals"


# ----------------------------------------------------------------------------- fatal errors


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (Response(404, {"error": {"code": "itemNotFound", "message": "The resource could not be found."}}),
         "itemNotFound: The resource could not be found."),  # Graph
        (Response(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
         "INVALID_SESSION_ID: Session expired or invalid"),  # Salesforce
        (Response(400, [{"message": "No such column 'Foo__c'", "errorCode": "INVALID_FIELD"},
                        {"message": "second", "errorCode": "MALFORMED_QUERY"}]),
         "INVALID_FIELD: No such column 'Foo__c'; MALFORMED_QUERY: second"),
        (Response(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}),
         "invalid_client: AADSTS7000215: Invalid client secret."),  # OAuth
        (Response(403, {"status": "error", "message": "This app hasn't been granted all required scopes",
                        "category": "MISSING_SCOPES"}),
         "This app hasn't been granted all required scopes"),  # HubSpot
        (Response(400, {"error": {"code": "400011", "summary": "Bad Request", "detail": "Unknown filter"}}),
         "400011: Unknown filter"),  # Tableau JSON
        (Response(409, "conflict: locked by another user"), "conflict: locked by another user"),
        (Response(422, b""), "Unprocessable Entity"),
    ],
    ids=["graph", "salesforce", "salesforce-many", "oauth", "hubspot", "tableau", "text", "empty"],
)
def test_other_4xx_is_fatal_with_the_apis_own_message(serve, response, message):
    srv, script = serve(response)
    waits: list[float] = []
    with pytest.raises(FatalAPIError) as info:
        client(srv, waits).request("POST", "/api/items?access_token=SECRET")
    assert str(info.value) == f"fakeapi refused POST {srv.url}/api/items with HTTP {response.status}: {message}"
    assert len(script.seen) == 1 and waits == []


def test_post_json_sends_a_json_body(serve):
    srv, script = serve(Response(201, {"id": "42"}))
    assert client(srv, []).post_json("/items", {"name": "Ann"}, headers={"X-Test": "1"}) == {"id": "42"}
    (req,) = script.seen
    assert (req.method, req.json(), req.headers["content-type"], req.headers["x-test"]) == (
        "POST", {"name": "Ann"}, "application/json", "1")
    assert req.headers["user-agent"] == "pipeline-sync"


def test_custom_ok_predicate(serve):
    srv, _ = serve(Response(404, {"error": {"code": "itemNotFound", "message": "gone"}}))
    resp = client(srv, []).request("GET", "/item", ok=lambda r: r.status_code in (200, 404))
    assert resp.status_code == 404


# ----------------------------------------------------------------------------- TLS


@pytest.fixture
def env_bundle(monkeypatch) -> str:
    """REQUESTS_CA_BUNDLE as on the build machines (set to the system bundle where it is missing)."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    return bundle


def test_ca_bundle_wins_over_requests_ca_bundle(serve, env_bundle):
    srv, _ = serve(OK)
    assert os.environ["REQUESTS_CA_BUNDLE"] == env_bundle and env_bundle != srv.ca_path
    plain = requests.Session()
    plain.verify = srv.ca_path  # silently overridden by the environment's bundle
    with pytest.raises(requests.exceptions.SSLError):
        plain.get(srv.url + "/x", timeout=5)
    ours = build_session(ca_bundle=srv.ca_path)
    assert ours.get(srv.url + "/x", timeout=5).json() == {"value": [1, 2, 3]}
    # a per-request verify still wins, as in plain requests
    assert build_session().get(srv.url + "/x", timeout=5, verify=srv.ca_path).status_code == 200


def test_verify_tls_off(serve, env_bundle, caplog):
    srv, _ = serve(OK)
    session = build_session(verify_tls=False)
    assert "TLS certificate verification is OFF" in caplog.text
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        assert session.get(srv.url + "/x", timeout=5).status_code == 200


def test_untrusted_certificate_is_fatal_at_once_and_names_ca_bundle(serve, env_bundle):
    srv, script = serve(OK)
    waits: list[float] = []
    c = HttpClient(build_session(), base_url=srv.url, timeout=5, policy=RetryPolicy(sleep=waits.append),
                   service="fakeapi")
    with pytest.raises(FatalAPIError) as info:
        c.request("GET", "/x?token=SECRET")
    msg = str(info.value)
    assert msg.startswith("fakeapi: the TLS certificate of 127.0.0.1 is not trusted")
    assert "ca_bundle" in msg and "SECRET" not in msg
    assert waits == [] and script.seen == []


# ----------------------------------------------------------------------------- timeouts


def test_every_request_has_a_timeout(tmp_path):
    release = threading.Event()
    seen: list[Request] = []

    def slow(req: Request) -> Response:
        seen.append(req)
        release.wait(5)
        return OK

    waits: list[float] = []
    with FakeServer(slow, tmp_path) as srv:
        c = HttpClient(build_session(ca_bundle=srv.ca_path), base_url=srv.url, timeout=0.3,
                       policy=RetryPolicy(max_attempts=2, sleep=waits.append, jitter=False), service="fakeapi")
        try:
            with pytest.raises(RetriableAPIError) as info:
                c.request("GET", "/slow")
            assert str(info.value) == f"fakeapi: gave up after 2 attempts; last: ReadTimeout on GET {srv.url}/slow"
        finally:
            release.set()
    assert len(seen) == 2 and waits == [0.5]
