"""Snapshot history (owned by the analytics work): team metrics and open deals per report and as_of."""

from __future__ import annotations
