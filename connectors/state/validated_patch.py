"""Validated rows kept as a full copy plus what changed since (connectors.state.validated_cache).

A run that merged its changes into the rows it held (flows.pipeline._validate_delta) says where
each row of a merged frame comes from: its position in the held frame followed by the new rows
(`Merged`). Saving then writes only the rows added since the full copy and, per row, its
position in the full copy followed by those added rows (`compose`), so what a run writes follows
what changed, not every row. Reading takes each frame's rows by those positions, a column at a
time (connectors.state.frames.load `patches`). Once the added rows pass COMPACT_SHARE of the full
copy's rows (and COMPACT_MIN_ROWS: below that either costs little), the save writes a full copy again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PATCHED = ("loaded", "history", "raw", "field_history")  # SourceRows frames kept as full copy + added rows
COMPACT_SHARE = 0.2
COMPACT_MIN_ROWS = 1_000


@dataclass
class Held:
    """Where rows read from the cache come from: the full copy (its data file's SHA-256, rows and
    column labels per PATCHED frame; a frame that is None is absent) and, for a patched entry, per
    frame the rows added since and each row's position in the full copy followed by them."""

    base_sha: str
    base_rows: dict[str, int]
    columns: dict[str, list]
    added: dict[str, tuple[np.ndarray, pd.DataFrame]] = field(default_factory=dict)

    def rows(self, name: str) -> int:
        """Rows of the frame `name` as held (after the patch)."""
        return len(self.added[name][0]) if name in self.added else self.base_rows[name]


@dataclass
class Merged:
    """How merged rows were built from held rows (`held`, at version `base_version`): per PATCHED
    frame, each row's position in the held frame followed by `new`, and `new`."""

    held: Held
    base_version: str
    parts: dict[str, tuple[np.ndarray, pd.DataFrame]]


def origin(kept: np.ndarray, held_rows: int, new_rows: int) -> np.ndarray:
    """Positions (into the held frame followed by the new rows) of `held[kept]` stacked over the new rows."""
    return np.concatenate([np.flatnonzero(kept), held_rows + np.arange(new_rows)]).astype(np.int64)


def compose(merged: Merged, frames: dict[str, pd.DataFrame | None],
            ) -> dict[str, tuple[np.ndarray, pd.DataFrame]] | None:
    """Per PATCHED frame, (positions into the full copy followed by the added rows, the added
    rows) for `frames`, the merged rows; None when a full copy is due: a frame not merged (or
    gone, or new), other columns, no held row kept, or the added rows past COMPACT_SHARE."""
    held = merged.held
    out: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
    for name in PATCHED:
        frame = frames.get(name)
        if frame is None or name not in held.base_rows:
            if frame is not None or name in held.base_rows:
                return None
            continue
        if name not in merged.parts:
            return None
        positions, new = merged.parts[name]
        held_rows, full_rows = held.rows(name), held.base_rows[name]
        labels = list(frame.columns)
        if len(positions) != len(frame) or list(new.columns) != labels or held.columns[name] != labels:
            return None
        from_held = positions < held_rows
        if len(frame) and not from_held.any():
            return None  # every row new: its types come from the new rows alone
        before, added = held.added.get(name, (None, None))
        so_far = 0 if added is None else len(added)
        pos = np.empty(len(positions), dtype=np.int64)
        pos[from_held] = positions[from_held] if before is None else before[positions[from_held]]
        pos[~from_held] = full_rows + so_far + (positions[~from_held] - held_rows)
        parts = [p for p in (added, new) if p is not None and len(p)]  # an empty part could change the types
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts or [new])[0].reset_index(drop=True)
        out[name] = (pos, rows)
    added = sum(len(a) for _, a in out.values())
    if added > COMPACT_MIN_ROWS and added > COMPACT_SHARE * sum(held.base_rows.values()):
        return None
    return out
