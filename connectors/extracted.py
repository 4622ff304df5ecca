"""What every source connector hands to the flow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any

import pandas as pd

from config.models.finance import SourceRates
from connectors.http.session import Observer, RetryPolicy
from connectors.state.source_state import SourceVersion

STALE_NOTE = "source '{}' failed; data from an earlier run"  # the note of rows a failed source left from before


@dataclass
class Extracted:
    """One source's records for this run.

    `records`: one row per source record, columns named by canonical field (config.schema),
    values still raw (strings, numbers, datetimes), plus `_row` (the source's row number or
    record ordinal, used in the Rejected sheet). `history`: stage entries
    (opportunity_id, stage, entered_date), raw. `raw`: the records as the source gave them,
    for a `raw_sheet`. `stale`: the data comes from an earlier run (the source failed or
    returned nothing), which raises the M5 source_stale flag.
    """

    source: str
    records: pd.DataFrame
    history: pd.DataFrame | None = None
    raw: pd.DataFrame | None = None
    seconds: float = 0.0
    stale: bool = False
    notes: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    pending_state: PendingState | None = None
    version: str | None = None  # names the content of these rows (source_state.SourceVersion); None: unversioned
    reused: bool = False  # unchanged since `ExtractContext.cached_version`: no rows built, the flow has them
    reused_rows: Any = None  # set by the flow: its validated copy of the rows at `version`
    delta_base: str | None = None  # these rows differ from the rows at this version ...
    delta_ids: frozenset[str] | None = None  # ... only in these opportunity ids (changed, new or gone)
    base_rows: Any = None  # set by the flow: its validated copy of the rows at `delta_base`
    partial: bool = False  # `records` (history, raw) hold only the `delta_ids` still current, not every record:
    row_ids: Sequence[str] | None = None  # ... then every current record's id in row order (`_row` = position + 1)
    rates: SourceRates | None = None  # the CRM's own exchange rates, when the source reads them
    # issue 22: close_date / amount history (config.schema.FIELD_HISTORY_COLUMNS), raw; None: the source keeps none
    field_history: pd.DataFrame | None = None

    @property
    def rows_read(self) -> int:
        return len(self.row_ids) if self.partial and self.row_ids is not None else len(self.records)


@dataclass
class PendingState:
    """Cursor and record changes to commit only when the whole run succeeds."""

    cursor: str | None
    upserts: Sequence[tuple[str, dict | str]] = field(default_factory=list)  # str: JSON already encoded
    deletes: list[str] = field(default_factory=list)
    replace_all: bool = False
    version: SourceVersion | None = None  # the content version to store with these changes
    # issue 22: close_date / amount history entries of the records read this run (connectors/state/field_history.py)
    field_history: dict[str, list] | None = None


@dataclass
class ExtractContext:
    """What a run hands every extractor: the state database, counters and the run's fixed times.

    `run_started` (UTC) is the incremental signpost: a cursor never moves past it.
    `retry_policy`: the HTTP retry policy extractors use when none is passed to them (None: the default).
    `cached_version`: the version of this source's rows the flow already holds validated; an
    extractor that finds its source unchanged since that version may return `reused=True` and no rows.
    `state_dir`: the config's state folder (`.state/` next to it) for per-folder files such as
    locks; None: the extractor picks a per-user default.
    `prefetch`: an extractor that knows, while still waiting on the service, that it will hand
    over changes against `cached_version` (`delta_base`) may call it: the flow then reads those
    rows meanwhile. Calling it costs only that read; not calling it costs nothing.
    """

    engine: Any | None  # sqlalchemy Engine of the state store, None when state is off
    observer: Observer
    as_of: date
    run_started: datetime
    tz: tzinfo
    full_refresh: bool = False
    retry_policy: RetryPolicy | None = None
    cached_version: str | None = None
    state_dir: Path | None = None
    prefetch: Callable[[], None] | None = None
