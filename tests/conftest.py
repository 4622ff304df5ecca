"""Shared fixtures. Keep each one independent and small."""

from __future__ import annotations

import logging

import pytest

from connectors import redact


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (~13 s to start; see platform notes)."""
    pytest.importorskip("prefect")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True, scope="module")
def _secrets_stay_in_their_module():
    """The redactor's registered values are process-wide (one config per process in real runs): each
    test module starts with those registered before it, and leaves them so (a `${ROOT}` of one module's
    config must not mask '/data' in another module's log lines)."""
    before = redact.known()
    yield
    redact.forget(keep=before)


@pytest.fixture(autouse=True, scope="module")
def _logger_levels_stay_in_their_module():
    """`run -v` sets our own loggers to INFO (and a Prefect run silences Prefect's engine loggers) for
    the rest of the process; a test module that runs the CLI must not change what the next one logs."""
    manager = logging.Logger.manager
    before = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            lg.setLevel(before.get(name, logging.NOTSET))
