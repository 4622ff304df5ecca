"""The incremental search's keyset slicing, for any mix of shared timestamps and page sizes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.http.session import Observer, RetryPolicy
from connectors.sources.hubspot.extract import _Progress, make_api, search_changed
from tests.fakes.hubspot import FakeClock, FakeHubSpot, Harness
from tests.fakes.server import FakeServer

BASE = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


@pytest.fixture
def h(tmp_path):
    clock = FakeClock()
    hub = FakeHubSpot(clock=clock.now)
    with FakeServer(hub, tmp_path) as srv:
        yield Harness(hub, srv, clock, tmp_path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stamps=st.lists(st.integers(0, 25), max_size=40),  # ms offsets: many deals share one
    page=st.integers(1, 6),
    lo=st.integers(0, 12),
    width=st.integers(1, 30),
)
def test_search_returns_exactly_the_deals_of_the_window(h, stamps, page, lo, width):
    h.hub.deals.clear()
    for i, ms in enumerate(stamps):
        h.hub.add_deal(str(1000 + i), BASE + timedelta(milliseconds=ms))
    cfg = h.cfg(search_page_size=page)
    api = make_api(cfg, Observer(), policy=RetryPolicy(sleep=h.clock.sleep, jitter=False), clock=h.clock.now)
    before = len(h.server.requests)
    since, signpost = BASE + timedelta(milliseconds=lo), BASE + timedelta(milliseconds=lo + width)
    found = search_changed(api, cfg, ["dealname"], since, signpost, _Progress(Observer(), "s"))
    expected = {str(1000 + i) for i, ms in enumerate(stamps) if lo <= ms < lo + width}
    assert set(found) == expected
    inside = [ms for ms in stamps if lo <= ms < lo + width]
    # each query either moves past at least one millisecond or reads one millisecond by offset
    assert len(h.server.requests) - before <= 2 * (len(set(inside)) + len(inside) // page + 1)
