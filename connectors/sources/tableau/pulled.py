"""What one mode hands back to `extract`: the records (or None when unchanged), raw frame, notes, version."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from config.models import TableauSourceConfig


@dataclass
class Pulled:
    """Records (None: the answer is byte for byte the one at `cached_version`), raw frame, notes, and
    the answer's version (sha256 of its bytes)."""

    records: pd.DataFrame | None
    raw: pd.DataFrame | None
    notes: list[str]
    version: str


def answer_version(cfg: TableauSourceConfig, body: bytes) -> str:
    return hashlib.sha256(cfg.mode.encode() + b"\x00" + body).hexdigest()
