"""HubSpot source under faults: 429 (with/without Retry-After), 5xx, dropped and truncated answers,
the daily limit, rate-limit pacing. Each ends like a clean run, or in a clear error with the cursor unmoved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.state.source_state import get_cursor, load_records
from tests.fakes.hubspot import Harness, demo_harness

RUN1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(hours=1)
CHANGED_AT = RUN1 + timedelta(minutes=20)


@pytest.fixture
def h(tmp_path):
    with demo_harness(tmp_path, max_page=1) as harness:
        yield harness


def prepare(h: Harness, mode: str) -> datetime:
    """For 'incremental': a committed first run and three changes on the fake. Returns the run time."""
    if mode == "full":
        return RUN1
    h.commit(h.run(started=RUN1))
    h.hub.update("101", CHANGED_AT, amount="13000")
    h.hub.update("104", CHANGED_AT + timedelta(seconds=1), dealstage="closedwon")
    h.hub.add_deal("106", CHANGED_AT + timedelta(seconds=2), dealname="New one", amount="100")
    return RUN2


# request numbers within the run: full = 1 pipelines, 2 deal properties, 3..9 deal pages, 10/11 owners;
# incremental = 1 pipelines, 2 deal properties, 3.. search pages (keyset: tiny pages re-read their
# boundary), archived, owners. The fault hits the second deal page / search.
FAULT_AT = {"full": 4, "incremental": 4}


@pytest.mark.parametrize("mode", ["full", "incremental"])
@pytest.mark.parametrize(("kind", "sleeps"), [
    ("429", [7.0]),                  # Retry-After: 7
    ("429-no-retry-after", [10.0]),  # the rest of the 10-second window (nothing elapsed yet)
    ("500", [0.01]),                 # exponential backoff, first step
    ("503", [0.01]),
    ("drop", [0.01]),
    ("truncate", [0.01]),
])
def test_a_transient_fault_ends_like_a_clean_run(h, mode, kind, sleeps):
    started = prepare(h, mode)
    clean = h.run(started=started)
    h.clock.sleeps.clear()
    h.hub.faults = {h.hub.count + FAULT_AT[mode]: kind}
    faulted = h.run(started=started)
    assert faulted.records.equals(clean.records)
    assert faulted.history.equals(clean.history)
    assert faulted.pending_state == clean.pending_state
    assert faulted.retries == 1 and faulted.requests == clean.requests + 1
    if kind == "429-no-retry-after" and mode == "incremental":
        sleeps = [9.75]  # one 0.25 s gap between search calls of the window had already passed
    assert [d["wait"] for k, d in h.events if k == "retry"] == sleeps
    assert sleeps[0] in h.clock.sleeps  # really waited (the rest are 0.25 s gaps between searches)
    if mode == "incremental":
        assert set(faulted.records["opportunity_id"]) >= {"106"}


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_daily_limit_is_fatal_and_leaves_the_cursor(h, mode):
    started = prepare(h, mode)
    before = get_cursor(h.engine, "hubspot_main")
    h.hub.faults = {h.hub.count + 2: "429-daily"}
    n = h.hub.count
    with pytest.raises(FatalAPIError) as err:
        h.run(started=started)
    assert "daily API limit of 1000000 calls is used up" in str(err.value)
    assert "resets at midnight" in str(err.value)
    assert h.hub.count == n + 2  # no retries against a daily limit
    assert get_cursor(h.engine, "hubspot_main") == before


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_run_failing_half_way_leaves_cursor_and_state(h, mode):
    started = prepare(h, mode)
    before_cursor = get_cursor(h.engine, "hubspot_main")
    before_records = load_records(h.engine, "hubspot_main")
    h.hub.fail_from = h.hub.count + 3
    with pytest.raises(RetriableAPIError) as err:
        h.run(started=started)
    assert "HubSpot: gave up after 4 attempts" in str(err.value) and "HTTP 503" in str(err.value)
    assert get_cursor(h.engine, "hubspot_main") == before_cursor
    assert load_records(h.engine, "hubspot_main") == before_records
    # the next run, with HubSpot back, picks everything up
    h.hub.fail_from = None
    ex = h.run(started=started + timedelta(minutes=5))
    h.commit(ex)
    assert get_cursor(h.engine, "hubspot_main").startswith("2026-11-27T")
    if mode == "incremental":
        acme = next(p for p in load_records(h.engine, "hubspot_main") if p["opportunity_id"] == "101")
        assert acme["amount"] == "13000"


@pytest.mark.parametrize(("rate_max", "reserve", "waits"), [
    (6, 2, [10.0, 10.0, 10.0]),  # 13 requests (the last: account details): pause when 2 calls are left
    (6, 0, [10.0, 10.0]),        # pause only when none is left
    (190, 5, []),          # plenty of room: no pause
])
def test_paces_by_rate_limit_headers_without_hitting_429(h, rate_max, reserve, waits):
    h.hub.rate_max = rate_max
    ex = h.run(h.cfg(rate_limit_reserve=reserve), started=RUN1, state=False)
    assert len(ex.records) == 7
    assert ex.retries == 0  # never throttled
    assert h.clock.sleeps == waits
    assert ex.waited_seconds == sum(waits)
    assert [d["wait"] for k, d in h.events if k == "wait"] == waits



def test_a_request_that_times_out_is_retried(h):
    clean = h.run(started=RUN1, state=False)
    h.hub.faults = {h.hub.count + 3: "hang"}  # the first deals page answers only after 1 s
    ex = h.run(h.cfg(timeout=0.2), started=RUN1, state=False)
    assert ex.records.equals(clean.records) and ex.retries == 1
    reasons = [d["reason"] for k, d in h.events if k == "retry"]
    assert len(reasons) == 1 and reasons[0].startswith("ReadTimeout on GET")
