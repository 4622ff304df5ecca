"""The recorded real API samples in ../shared/fixtures/real/ (and the schemas in
../shared/standards/), and the one rule for tests that read them.

CI lays a copy of shared/ beside its clone; a clone elsewhere may have none. A test that replays
a recorded sample gets its path from `recorded(...)` (a schema folder from `standards(...)`,
which $OOXML_XSD_DIR-style overrides may precede): when the folder is absent the test is
skipped with a one-line reason, except when the environment variable CI is set, where it fails
instead (CI must run them). Nothing else needs the folder: the fakes answer with bodies built
from the vendors' documented shapes, and the recorded-sample tests check those shapes against
the recordings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "fixtures" / "real"
STANDARDS = SHARED / "standards"


def in_ci() -> bool:
    """CI=true (or any value but empty, 0, false): recorded samples must be there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def recorded(*parts: str) -> Path:
    """The recorded sample ../shared/fixtures/real/<parts>; skips the calling test when absent (fails under CI)."""
    path = REAL.joinpath(*parts)
    if path.exists():
        return path
    absent(f"recorded sample {'/'.join(parts)} is absent: no {REAL} beside this clone")


def absent(reason: str) -> NoReturn:
    """Skip the calling test with `reason` (one line); under CI fail with it instead."""
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so the tests of ../shared must run", pytrace=False)
    pytest.skip(reason)


def recorded_bytes(*parts: str) -> bytes:
    return recorded(*parts).read_bytes()


def recorded_text(*parts: str) -> str:
    return recorded(*parts).read_text(encoding="utf-8")
