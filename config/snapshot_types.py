"""Plain data exchanged between the analytics (transforms) and the snapshot store (connectors).

Both sides import these; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd

# Columns of the open deals kept in a snapshot, in order.
SNAPSHOT_DEAL_COLUMNS: tuple[str, ...] = ("deal_id", "owner", "product", "stage", "amount", "close_date")


def empty_snapshot_deals() -> pd.DataFrame:
    return pd.DataFrame({
        "deal_id": pd.Series(dtype=object),
        "owner": pd.Series(dtype=object),
        "product": pd.Series(dtype=object),
        "stage": pd.Series(dtype=object),
        "amount": pd.Series(dtype=float),
        "close_date": pd.Series(dtype="datetime64[ns]"),
    })


def empty_pushes() -> pd.DataFrame:
    return pd.DataFrame({"deal_id": pd.Series(dtype=object), "as_of": pd.Series(dtype=object)})


@dataclass
class SnapshotRecord:
    """What one run stores for (report, as_of): team metrics and the deals open at as_of.

    `metrics` maps each team-scope metric to its value (None = empty). `deals` has
    SNAPSHOT_DEAL_COLUMNS; `deal_id` is the row id `source:opportunity_id`.
    """

    as_of: date
    metrics: dict[str, float | None]
    deals: pd.DataFrame = field(default_factory=empty_snapshot_deals)


@dataclass
class SnapshotHistory:
    """Stored snapshots of one report, as the analytics need them.

    `metrics`: one row per (as_of, metric) with `value` (NaN = empty), every stored snapshot on
    or before the run's as_of. `previous_as_of` / `previous_deals`: the most recent snapshot
    strictly before the run's as_of and its open deals (None / empty frame when there is none).
    `pushes` (deal_id, as_of): the close-date pushes between stored snapshots up to then.
    """

    metrics: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"as_of": pd.Series(dtype=object), "metric": pd.Series(dtype=object),
                                              "value": pd.Series(dtype=float)})
    )
    previous_as_of: date | None = None
    previous_deals: pd.DataFrame = field(default_factory=empty_snapshot_deals)
    # One row per push seen between two consecutive stored snapshots up to `previous_as_of`:
    # the deal was open at both and its close_date moved later (docs/metrics.md "Slippage").
    pushes: pd.DataFrame = field(default_factory=lambda: empty_pushes())

    def previous_metrics(self) -> dict[str, float | None]:
        """Team metrics of the previous snapshot (empty dict when there is none)."""
        if self.previous_as_of is None or self.metrics.empty:
            return {}
        rows = self.metrics[self.metrics["as_of"] == self.previous_as_of]
        return {m: (None if pd.isna(v) else float(v)) for m, v in zip(rows["metric"], rows["value"], strict=True)}
