"""HubSpot's delta: the deals searched since the cursor merged into the stored deals.

The window (start, signpost, cursor to commit) comes from connectors/sources/incremental.py, as for
every source that keeps state. What is HubSpot's own: the stored deals are read back as a DealTable
(a chunk of payloads at a time, only each payload's raw deal decoded; on a worker thread while the
search waits on HubSpot when they will be needed: `stored_ahead`); archived deals and deals moved out of the selected pipelines leave
it; only the deals whose stored payload would change are upserted (`Delta.moved`: each stored row
screened by a digest of its text, built column by column by `RowTexts`); and a run that
finds nothing changed since the rows the flow holds (`unchanged`) builds no rows at all, and one
whose flow holds those rows builds the changed deals' rows only (`read_narrow`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from config.models import HubSpotSourceConfig
from connectors.extracted import ExtractContext
from connectors.sources.hubspot.client import HubSpotApi
from connectors.sources.hubspot.deals import (
    Progress,
    Scope,
    add_line_item_products,
    archived_ids,
    load_owners,
    search_changed,
)
from connectors.sources.hubspot.resolve import HISTORY_KEY, RAW_KEY, Resolver, StoredPayloads
from connectors.sources.hubspot.table import LINE_ITEM_PRODUCT, DealTable, sorted_ids
from connectors.sources.incremental import Window, deleted_ids, merge
from connectors.state.source_state import (
    gc_paused,
    iter_records,
    json_text,
    load_some,
    stored_ids,
)

_RAW_CUT = ', "_hubspot": '  # in a stored payload's text: where its row part (canonical row, history) ends
_COMPARE_CHUNK = 5_000
_encode_str = json.encoder.encode_basestring_ascii  # json.dumps' escaping of a str (ensure_ascii)


def resolution_digest(scope: Scope, owners: dict[str, tuple[str, str | None]] | None = None) -> str:
    """Names everything besides the stored deals that shapes the rows: pipelines, stages, owners."""
    key = json.dumps([scope.pipelines, [list(vars(st).values()) for st in scope.stages.values()],
                      sorted(scope.selected), owners], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def unchanged(api: HubSpotApi, cfg: HubSpotSourceConfig, ctx: ExtractContext, window: Window,
              changed: dict[str, dict], gone: set[str], scope: Scope) -> bool:
    """True when the stored rows are still the source's rows and the flow holds them: no deal
    archived, every deal the search found (e.g. re-read in the overlap window) is stored exactly
    as it is now, and pipelines, stages and the stored deals' owners resolve as before."""
    stored = window.stored
    if ctx.engine is None or stored is None or not window.holds(ctx.cached_version):
        return False
    if changed:
        if cfg.product_from_line_items:  # their products are only known after reading line items
            return False
        kept = load_some(ctx.engine, cfg.name, changed)
        if any(kept.get(k, {}).get(RAW_KEY) != deal for k, deal in changed.items()):
            return False
    if gone & stored_ids(ctx.engine, cfg.name):
        return False
    wanted = set(stored.detail.get("owners") or [])
    owners = load_owners(api, wanted) if wanted else {}
    return stored.detail.get("resolution") == resolution_digest(scope, owners)


class StoredRows:
    """Per table position, what the stored payload's row part hashes to: the JSON text before the
    raw deal (canonical row and stage history). A stored deal that this run did not re-read has
    the stored raw deal, so its payload is unchanged when the row part's text is (without the
    text, or when it differs, the whole payload is compared). NEW: nothing stored."""

    NEW, DIGEST, COMPARE = 0, 1, 2

    def __init__(self) -> None:
        self.digests = array("q")
        self.kind = bytearray()

    def add(self, text: str, cut: int | None = None) -> None:
        """One stored payload's text; `cut`: where its raw deal starts (`text.find(_RAW_CUT)`)."""
        cut = text.find(_RAW_CUT) if cut is None else cut
        self.digests.append(hash(text[:cut]) if cut > 0 else 0)
        self.kind.append(self.DIGEST if cut > 0 else self.COMPARE)

    def recheck(self, positions: Iterable[int | None]) -> None:
        for i in positions:
            if i is not None:
                self.kind[i] = self.COMPARE

    def reorder(self, order: list[int] | None, n: int) -> None:
        """Follow DealTable.finish's new positions; positions past the stored ones are NEW."""
        m = len(self.kind)
        order = order if order is not None else list(range(n))
        self.digests = array("q", (self.digests[i] if i < m else 0 for i in order))
        self.kind = bytearray(self.kind[i] if i < m else self.NEW for i in order)


def read_stored(engine: sa.Engine, source: str, stop: threading.Event | None = None) -> tuple[DealTable, StoredRows]:
    """The stored deals as a table (a chunk of payloads at a time) and their row parts' digests.
    `stop` set: give up before the next chunk (raises StoppedReading)."""
    table, rows = DealTable(), StoredRows()
    with gc_paused():  # a chunk of decoded payloads is many acyclic containers, freed by refcount
        for chunk in iter_records(engine, source, decode=False):
            if stop is not None and stop.is_set():
                raise StoppedReading(source)
            texts = [text for _, text in chunk]
            cuts = [text.find(_RAW_CUT) for text in texts]
            deals = []
            for text, cut, deal in zip(texts, cuts, raw_deals(texts, cuts), strict=True):
                if deal is not None:
                    deals.append(deal)
                    rows.add(text, cut)
            table.add_deals(deals)
            if len(table) != len(rows.kind):  # a raw deal id stored twice: compare every payload whole
                rows.kind = bytearray([StoredRows.COMPARE]) * len(table)
                rows.digests = array("q", bytes(8 * len(table)))
    return table, rows


class StoppedReading(Exception):
    """read_stored was told to stop (its run failed or no longer needs the stored deals)."""


@contextmanager
def stored_ahead(engine: sa.Engine, source: str, ahead: bool) -> Iterator[Callable[[], tuple[DealTable, StoredRows]]]:
    """A function giving `read_stored(engine, source)`. `ahead`: the stored deals will be needed, so
    they are read on a worker thread from now on, while the caller waits on HubSpot (the search's
    pacing and answers): the function then waits for that read. Leaving the block stops a read
    still running after its current chunk. An engine whose connections are per thread (SQLite in
    memory) or shared between threads is read when asked, on the caller's thread."""
    if not ahead or isinstance(engine.pool, SingletonThreadPool | StaticPool):
        yield lambda: read_stored(engine, source)
        return
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix=f"stored-{source}") as pool:
        future = pool.submit(read_stored, engine, source, stop)
        try:
            yield future.result
        finally:
            stop.set()


def raw_deals(texts: list[str], cuts: list[int] | None = None) -> list[dict | None]:
    """The raw deal (RAW_KEY) of each stored payload text, None where it has none. A payload as
    `stored` builds and save_state encodes it ends with its raw deal: only that part is decoded
    (`cuts`: each text's `find(_RAW_CUT)`). Other texts (another key order or encoding) are
    decoded whole; when a cut part does not decode to deals, the whole chunk is."""
    cuts = [text.find(_RAW_CUT) for text in texts] if cuts is None else cuts
    parts = [text[cut + len(_RAW_CUT):-1] if cut > 0 and text.endswith("}") else None
             for text, cut in zip(texts, cuts, strict=True)]
    cut_parts = [p for p in parts if p is not None]
    if cut_parts:
        try:  # a part that is not its payload's last value (`{...}, "k": v`) makes the array invalid
            decoded = json.loads("[" + ",".join(cut_parts) + "]")
        except ValueError:
            decoded = None
        if decoded is not None and len(decoded) == len(cut_parts) \
                and all(d.__class__ is dict and "id" in d for d in decoded):
            rest = [t for t, p in zip(texts, parts, strict=True) if p is None]
            whole = iter(json.loads("[" + ",".join(rest) + "]") if rest else [])
            raw = iter(decoded)
            return [next(raw) if p is not None else _raw_of(next(whole)) for p in parts]
    return [_raw_of(payload) for payload in json.loads("[" + ",".join(texts) + "]")]


def _raw_of(payload: Any) -> dict | None:
    return payload.get(RAW_KEY) if isinstance(payload, dict) else None


@dataclass
class Delta:
    """The stored deals with this run's changes (a finished table), what leaves the state, and
    how many deals the search found."""

    table: DealTable
    stored_rows: StoredRows
    deletes: set[str]
    changed: int

    def moved(self, engine: sa.Engine, source: str, payloads: StoredPayloads) -> list[int]:
        """Positions of the deals whose payload differs from the stored one, or that none is stored for."""
        moved, compare = self._screen(payloads)
        with gc_paused():
            for at in range(0, len(compare), _COMPARE_CHUNK):
                some = compare[at:at + _COMPARE_CHUNK]
                kept = load_some(engine, source, [self.table.ids[i] for i in some])
                for i in some:
                    before = kept.get(self.table.ids[i])
                    if before is None or RAW_KEY not in before or before != payloads.payload(i):
                        moved.append(i)
        return sorted(moved)

    def _screen(self, payloads: StoredPayloads) -> tuple[list[int], list[int]]:
        """(new positions, positions whose stored payload must be compared whole): a stored
        deal's row part is compared by digest, its text built column by column (`row_texts`)."""
        moved: list[int] = []
        compare: list[int] = []
        stored = self.stored_rows
        with gc_paused():
            texts = RowTexts(self.table, payloads.resolver)
            for at in range(0, len(stored.kind), _COMPARE_CHUNK):
                stop = min(at + _COMPARE_CHUNK, len(stored.kind))
                digests = stored.digests
                for i, text in zip(range(at, stop), texts.between(at, stop), strict=True):
                    kind = stored.kind[i]
                    if kind == StoredRows.NEW:
                        moved.append(i)
                    elif kind == StoredRows.COMPARE or hash(text) != digests[i]:
                        compare.append(i)
        return moved, compare


class RowTexts:
    """Each deal's payload text before its raw deal, as save_state stores `stored(deal, *row(deal))`
    (`payload_text(...)` up to `, "_hubspot": `: the canonical row and stage history), for the
    deals of a finished table, built column by column from `Resolver.columns` (no dict per deal)."""

    def __init__(self, table: DealTable, resolver: Resolver) -> None:
        columns = resolver.columns(table)
        self.columns = [_plain(v) for v in columns.values()]
        self.template = ("{{" + ", ".join(_braces(_json(k)) + ": {}" for k in columns)
                         + ", " + _braces(_json(HISTORY_KEY)) + ": {}")
        self.entered = [(table.values(name), _braces("[" + _json(text) + ", "))
                        for name, text in resolver.entered if name in table.columns]

    def between(self, start: int, stop: int) -> list[str]:
        """The texts of positions start..stop-1."""
        encoded = [_json_values(col[start:stop]) for col in self.columns]
        pieces = [[pre + _json(v) + "]" if v else None for v in col[start:stop]] for col, pre in self.entered]
        history = ["[" + ", ".join([p for p in ps if p is not None]) + "]" for ps in zip(*pieces, strict=True)] \
            if pieces else ["[]"] * (stop - start)
        return list(map(self.template.format, *encoded, history))


def _json(value: Any) -> str:
    """payload_text's JSON of one value (a str through the same escaping json.dumps uses)."""
    if value.__class__ is str:
        return _encode_str(value)
    return "null" if value is None else json_text(value)


def _json_values(values: list[Any]) -> list[str]:
    """`_json` of each value; a column of str and None encodes each distinct value once."""
    try:
        distinct = dict.fromkeys(values)
    except TypeError:  # an unhashable value (not a HubSpot property's)
        return list(map(_json, values))
    distinct.pop(None, None)
    if set(map(type, distinct)) <= {str}:
        texts = dict(zip(distinct, map(_encode_str, distinct), strict=True))
        texts[None] = "null"
        return list(map(texts.__getitem__, values))
    return list(map(_json, values))


def _braces(text: str) -> str:
    """`text` as literal text in a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def _plain(values: Any) -> Any:
    """A column of `Resolver.columns` as values: a frame column shared with the table (NaN where
    the value was None) as a list with None."""
    if isinstance(values, pd.Series):
        return [None if v.__class__ is float else v for v in np.asarray(values)]
    return values


@dataclass
class Narrow:
    """Only this run's changes, for a flow that holds the validated rows of the stored version
    (`Window.holds`) and whose pipelines, stages and owners resolve as then: the changed deals
    still selected (a finished table), the stored ids that leave, and every current id in row
    order (the stored ones less `deletes`, plus the new ones). No stored payload is read."""

    table: DealTable
    deletes: set[str]
    changed: int
    row_ids: list[str]
    owners: dict[str, tuple[str, str | None]]
    owner_ids: set[str]


def read_narrow(api: HubSpotApi, cfg: HubSpotSourceConfig, ctx: ExtractContext, window: Window,
                changed: dict[str, dict], gone: set[str], scope: Scope) -> Narrow | None:
    """The changes alone (see Narrow); None when the flow does not hold the stored version's rows,
    a stored deal's row may move without its deal changing (owners, stages or pipelines resolve
    otherwise), or products come from line items."""
    stored = window.stored
    if cfg.product_from_line_items or ctx.engine is None or stored is None or not window.holds(ctx.cached_version):
        return None
    kept = load_some(ctx.engine, cfg.name, changed)  # a deal re-read (the overlap) as stored is no change
    fresh = {k: d for k, d in changed.items() if kept.get(k, {}).get(RAW_KEY) != d}
    table = DealTable()
    table.add([(k, d.get("properties") or {}) for k, d in fresh.items()])
    ids = stored_ids(ctx.engine, cfg.name)
    was_stored = {k for k in fresh if k in ids}
    deletes = set(deleted_ids(gone, changed, ids)) | _drop_outside(table, scope.selected, fresh, was_stored)
    table.finish()
    owner_ids = set(stored.detail.get("owners") or []) | (set(table.values("hubspot_owner_id")) - {None, ""})
    owners = load_owners(api, owner_ids) if owner_ids else {}
    if stored.detail.get("resolution") != resolution_digest(scope, owners):
        return None
    row_ids = sorted_ids((ids - deletes) | set(table.ids))
    return Narrow(table, deletes, len(changed), row_ids, owners, owner_ids)


def read_delta(api: HubSpotApi, cfg: HubSpotSourceConfig, ctx: ExtractContext, window: Window,
               props: list[str], progress: Progress, scope: Scope) -> Delta | Narrow | None:
    """The deals modified in the window merged into the stored deals (or, when the flow holds the
    stored rows, the changes alone: `read_narrow`); None when nothing changed since the rows the
    flow holds (see `unchanged`)."""
    assert ctx.engine is not None and window.start is not None
    # a flow that does not hold the stored version's rows needs every stored deal (neither
    # `unchanged` nor `read_narrow` can answer): read them while the search waits on HubSpot
    ahead = not window.holds(ctx.cached_version)
    with stored_ahead(ctx.engine, cfg.name, ahead) as stored:
        seen = None if ahead or ctx.prefetch is None else _first_change(ctx, cfg.name, ctx.prefetch)
        changed = search_changed(api, cfg, props, window.start, window.signpost, progress, seen)
        gone = archived_ids(api, cfg) - set(changed)
        if unchanged(api, cfg, ctx, window, changed, gone, scope):
            return None
        narrow = read_narrow(api, cfg, ctx, window, changed, gone, scope)
        if narrow is not None:
            return narrow
        table, stored_rows = stored()
    deletes = set(deleted_ids(gone, changed, table))
    was_stored = {k for k in changed if k in table}
    stored_rows.recheck(table.position(k) for k in was_stored)  # their raw deal may differ
    merge(table, {k: d["properties"] for k, d in changed.items()}, deletes)
    deletes |= _drop_outside(table, scope.selected, changed, was_stored)
    if cfg.product_from_line_items:  # only for deals read in this run; stored ones keep theirs
        _add_products(api, table, changed)
    table.finish()
    stored_rows.reorder(table.order, len(table))
    return Delta(table, stored_rows, deletes, len(changed))


def _first_change(ctx: ExtractContext, source: str, prefetch: Callable[[], None]) -> Callable[[dict[str, dict]], None]:
    """A search page callback that calls `prefetch` once, at the first deal not stored as it is now:
    from then on this run hands over changes against the rows the flow holds, which the flow can
    read while the search waits on HubSpot (a deal re-read in the overlap window as stored is no change)."""
    done = False

    def page(deals: dict[str, dict]) -> None:
        nonlocal done
        if done:
            return
        kept = load_some(ctx.engine, source, deals)
        if any(kept.get(k, {}).get(RAW_KEY) != d for k, d in deals.items()):
            done = True
            prefetch()

    return page


def _drop_outside(table: DealTable, selected: set[str], changed: dict[str, dict], was_stored: set[str]) -> set[str]:
    """Remove the deals whose pipeline is not selected (e.g. moved to another pipeline); the
    stored ones among them leave the state."""
    pipeline_of = table.columns.get("pipeline")
    outside = {k for k, i in table.live_positions()
               if ((pipeline_of[i] if pipeline_of is not None else None) or "") not in selected}
    for deal_id in outside:
        table.remove(deal_id)
    return {k for k in outside if k not in changed or k in was_stored}


def _add_products(api: HubSpotApi, table: DealTable, changed: dict[str, dict]) -> None:
    """The line-item products of the changed deals still held."""
    kept = {k: d for k, d in changed.items() if k in table}
    add_line_item_products(api, kept)
    table.set_line_item_products({k: d[LINE_ITEM_PRODUCT] for k, d in kept.items()})
