"""Destinations: each takes the staged workbook and delivers it (`local_file`, `onedrive`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any


@dataclass(frozen=True)
class PublishContext:
    """What a publisher gets from the run besides its config and the staged workbook."""

    as_of: date  # fills `{as_of}` in paths
    period_label: str  # fills `{period}` in paths
    engine: Any = None  # the run's state database (sqlalchemy Engine); None: nothing is kept
    sleep: Callable[[float], None] = time.sleep  # the run's retry sleep (tests pass one that does not wait)
