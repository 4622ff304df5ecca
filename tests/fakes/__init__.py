"""Fake services for tests, and where the shared recorded samples live."""

from pathlib import Path

# ../shared beside the repository (CI lays a copy there); the recorded real API samples.
REAL_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "real"
