"""Shared fixtures. Keep each one independent and small."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (~13 s to start; see platform notes)."""
    pytest.importorskip("prefect")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
