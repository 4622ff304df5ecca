"""Fake services for tests, on 127.0.0.1. They need nothing from ../shared: the recorded samples
there are replayed by the tests that ask for them through tests/shared_fixtures.py."""
