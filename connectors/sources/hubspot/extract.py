"""HubSpot deals source (CRM API v3): `extract(cfg, ctx)` returns the current set of deals (or its changes).

The first run (or `full_refresh`, or a changed property set) lists every deal; later runs search
only deals modified since the stored cursor, up to the run's signpost (`ctx.run_started`), and
merge them into the stored state (the window: connectors/sources/incremental.py; the merge:
incremental.py here). When the flow holds the validated rows of the stored version
(`ctx.cached_version`) and owners, stages and pipelines resolve as then, an incremental run
hands over only the changed deals (`Extracted.partial`, with every current id in `row_ids`) and
reads no stored payload but the changed deals': the flow merges them into the rows it holds. The new cursor and record changes travel in `Extracted.pending_state`; the
flow commits them only when the whole run succeeds.

Stage text: a deal's `stage` is its HubSpot stage label, or, when the source's `stage_map`
has that key, the qualified "Pipeline label / Stage label" or the stage id (for pipelines
whose labels repeat). `_pipeline` names the deal's pipeline for reject reasons. A stage's entry
time is read from the property the portal has for it (`hs_date_entered_<id>`, or on some portals
`hs_v2_date_entered_<id>`; GET /crm/v3/properties/deals says which). The full listing keeps every
GET URL under client.MAX_URL: the properties that do not fit are read per page by batch read.

Modules: client (HTTP calls, rate limits), deals (reading pipelines, deals, owners), incremental
(the delta), table (deals held as columns), resolve (deal -> row), rows (the frames), history
(close date / amount history, `field_history: true`), rates (the account's exchange rates,
`exchange_rates: true`), links (each deal's `record_url`: one account-details request on a run that
builds rows). Memory: an incremental run reads the stored deals a chunk at a time; a
full pull of 1M deals peaks at ~1.2 GB.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import chain

import requests

from config.models import HubSpotSourceConfig
from connectors.extracted import STALE_NOTE, ExtractContext, Extracted, PendingState
from connectors.http.session import RetryPolicy
from connectors.sources.hubspot import history, links
from connectors.sources.hubspot.client import OWNER_PAGE, HubSpotApi, make_api
from connectors.sources.hubspot.deals import (
    Progress,
    Scope,
    list_all,
    load_owners,
    parse_pipelines,
    read_scope,
    search_changed,
    stage_text,
)
from connectors.sources.hubspot.incremental import Delta, Narrow, read_delta, resolution_digest
from connectors.sources.hubspot.rates import read_rates
from connectors.sources.hubspot.resolve import RAW_KEY, Resolver, StoredPayloads, field_properties
from connectors.sources.hubspot.rows import frames, table_frames
from connectors.sources.hubspot.table import DealTable
from connectors.sources.incremental import CursorFormat, Meter, Window, open_window

# names other code imports from here (this module once held the whole source)
_Progress = Progress
__all__ = ["OWNER_PAGE", "_Progress", "extract", "from_state", "make_api", "parse_pipelines",
           "search_changed", "stage_text"]

CORE_PROPERTIES = ("dealstage", "pipeline", "hubspot_owner_id", "createdate", "hs_lastmodifieddate")
STATE_FORMAT = "v1"  # of the stored payloads; part of the cursor's fingerprint


def base_properties(cfg: HubSpotSourceConfig) -> list[str]:
    props = list(CORE_PROPERTIES) + list(field_properties(cfg).values())
    if cfg.product_property:
        props.append(cfg.product_property)
    return list(dict.fromkeys(props))


def read_properties(cfg: HubSpotSourceConfig, scope: Scope) -> list[str]:
    """The deal properties a run reads: the base ones and the selected pipelines' stage timing,
    under the names the portal has (only those stages': fewer properties to send)."""
    props = base_properties(cfg) + [scope.entered.get(s.id, f"{cfg.stage_entered_prefix}{s.id}")
                                    for s in scope.stages.values() if s.pipeline_id in scope.selected]
    return list(dict.fromkeys(props))


def fingerprint(cfg: HubSpotSourceConfig, scope: Scope | None = None) -> str:
    """Changes when the stored deals would lack something this config reads: also when the portal
    names a stage's entry time otherwise than `stage_entered_prefix` (e.g. hs_v2_date_entered_)."""
    key = "|".join(base_properties(cfg)) + f"|li={cfg.product_from_line_items}|{cfg.stage_entered_prefix}|{STATE_FORMAT}"
    other = sorted((sid, name) for sid, name in (scope.entered if scope else {}).items()
                   if name != f"{cfg.stage_entered_prefix}{sid}")
    if other:
        key += "|entered=" + json.dumps(other)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def format_cursor(when: datetime, fp: str) -> str:
    return f"{when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z;{fp}"


def parse_cursor(cursor: str | None) -> tuple[datetime | None, str | None]:
    if not cursor:
        return None, None
    when, _, fp = cursor.partition(";")
    try:
        return datetime.fromisoformat(when.replace("Z", "+00:00")), fp or None
    except ValueError:
        return None, None


CURSOR = CursorFormat(format_cursor, parse_cursor)
REFRESH_NOTE = "the deal properties read changed since the last run: full refresh"


def extract(cfg: HubSpotSourceConfig, ctx: ExtractContext, *, session: requests.Session | None = None,
            policy: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> Extracted:
    """Read the source's full current set of deals (incrementally when state allows).

    `session`, `policy` and `clock` are for tests (a fake server's session, no real sleeping).
    """
    api = make_api(cfg, ctx.observer, session=session, policy=policy or ctx.retry_policy, clock=clock)
    try:
        return _extract(cfg, ctx, api)
    finally:
        if session is None:
            api.client.session.close()


def _extract(cfg: HubSpotSourceConfig, ctx: ExtractContext, api: HubSpotApi) -> Extracted:
    meter = Meter(ctx.observer)
    rates = read_rates(api, cfg, ctx.tz) if cfg.exchange_rates else None
    scope = read_scope(api, cfg)
    props = read_properties(cfg, scope)
    window = open_window(ctx, cfg.name, fingerprint(cfg, scope), CURSOR, cfg.search_overlap_seconds,
                         incremental=cfg.incremental, refresh_note=REFRESH_NOTE)
    progress = Progress(ctx.observer, cfg.name)
    delta: Delta | None = None
    if window.incremental:
        delta = read_delta(api, cfg, ctx, window, props, progress, scope)
        if delta is None:
            reused = window.reused(cfg.name, f"{_since(window)}: nothing changed", meter)
            reused.notes += scope.notes
            reused.rates = rates
            return reused
        if isinstance(delta, Narrow):
            notes = [*window.notes, f"{_since(window)}: {delta.changed} changed, {len(delta.deletes)} archived deal(s)"]
            narrow = _narrow_result(cfg, ctx, api, window, scope, delta, notes, meter)
            narrow.rates = rates
            return narrow
        table = delta.table
        notes = [*window.notes, f"{_since(window)}: {delta.changed} changed, {len(delta.deletes)} archived deal(s)"]
    else:
        table, listed = list_all(api, cfg, props, progress, scope.selected)
        notes = [*window.notes, f"full refresh: {listed} deal(s)"]
    result = _result(cfg, ctx, api, window, scope, table, delta, notes, meter)
    result.rates = rates
    return result


def _since(window: Window) -> str:
    assert window.since is not None
    return f"incremental since {window.since.isoformat()}"


def _result(cfg: HubSpotSourceConfig, ctx: ExtractContext, api: HubSpotApi, window: Window, scope: Scope,
            table: DealTable, delta: Delta | None, notes: list[str], meter: Meter) -> Extracted:
    """The run's frames and pending state: every deal upserted after a full read; after an
    incremental one the changed deals and any whose resolved row moved (a renamed owner, stage
    or pipeline). Payloads are built when the flow commits them."""
    owner_ids = set(table.values("hubspot_owner_id")) - {None, ""}
    owners = load_owners(api, owner_ids) if owner_ids else {}
    resolver = Resolver(cfg, scope.pipelines, scope.stages, owners, entered_names=scope.entered)
    upserts = StoredPayloads(table, resolver, range(len(table)))
    deletes: set[str] = set()
    if delta is not None:
        assert ctx.engine is not None
        upserts = StoredPayloads(table, resolver, delta.moved(ctx.engine, cfg.name, upserts))
        deletes = delta.deletes
    records, history_frame, raw = table_frames(cfg, table, resolver)
    notes = [*notes, *links.link_records(api, cfg, records)]  # record_url: one account-details request
    fetched, field_history = history.field_history(api, cfg, ctx.engine, (table.ids[i] for i in upserts.positions),
                                                   table.ids, deletes, with_stored=delta is not None)
    pending = (_pending(cfg, window, scope, owners, owner_ids, upserts, deletes, fetched)
               if window.keeps_state else None)
    return Extracted(
        source=cfg.name, records=records, history=history_frame, raw=raw, field_history=field_history,
        notes=[*notes, *resolver.notes(), *scope.notes], **meter.counts(), pending_state=pending,
        version=pending.version.version if pending is not None and pending.version else None,
        **window.delta(chain((table.ids[i] for i in upserts.positions), deletes)),
    )


def _narrow_result(cfg: HubSpotSourceConfig, ctx: ExtractContext, api: HubSpotApi, window: Window, scope: Scope,
                   narrow: Narrow, notes: list[str], meter: Meter) -> Extracted:
    """Only the changed deals' frames (`partial`), every current id in row order, and the changes
    to commit: the flow merges them into the validated rows it holds of the stored version."""
    table = narrow.table
    resolver = Resolver(cfg, scope.pipelines, scope.stages, narrow.owners, entered_names=scope.entered)
    upserts = StoredPayloads(table, resolver, range(len(table)))
    records, history_frame, raw = table_frames(cfg, table, resolver)
    notes = [*notes, *links.link_records(api, cfg, records)]  # record_url: one account-details request
    # the changed deals' close date / amount history; the flow merges it with the rows it holds
    fetched, field_history = history.field_history(api, cfg, ctx.engine, table.ids, table.ids, narrow.deletes,
                                                   with_stored=False)
    pending = (_pending(cfg, window, scope, narrow.owners, narrow.owner_ids, upserts, narrow.deletes, fetched)
               if window.keeps_state else None)
    return Extracted(
        source=cfg.name, records=records, history=history_frame, raw=raw, field_history=field_history,
        notes=[*notes, *resolver.notes(), *scope.notes], **meter.counts(), pending_state=pending,
        version=pending.version.version if pending is not None and pending.version else None,
        partial=True, row_ids=narrow.row_ids, **window.delta(chain(table.ids, narrow.deletes)),
    )


def _pending(cfg: HubSpotSourceConfig, window: Window, scope: Scope, owners: dict[str, tuple[str, str | None]],
             owner_ids: set[str], upserts: StoredPayloads, deletes: set[str],
             field_history: dict[str, list] | None = None) -> PendingState | None:
    """The changes to commit, with the rows' version: kept when nothing changed, neither a deal
    nor how pipelines, stages and the deals' owners (`owner_ids`) resolve; and the close date /
    amount history of the deals read (`field_history`, None: not read)."""
    resolution = resolution_digest(scope, owners)
    stored = window.stored
    same = not upserts and not deletes and stored is not None and stored.detail.get("resolution") == resolution
    version = window.version(same, cfg.name, resolution, len(upserts), len(deletes),
                             detail={"resolution": resolution, "owners": sorted(owner_ids)})
    return window.pending(upserts, sorted(deletes), version, field_history=field_history)


def from_state(cfg: HubSpotSourceConfig, payloads: list[dict]) -> Extracted:
    """The stored current deals (source_state.load_records) as this source's frames, marked stale:
    what the flow hands on when HubSpot cannot be reached. Needs no API call."""
    usable = [p for p in payloads if RAW_KEY in p]
    records, history, raw = frames(cfg, usable)
    return Extracted(source=cfg.name, records=records, history=history, raw=raw if cfg.raw_sheet else None,
                     stale=True, notes=[STALE_NOTE.format(cfg.name)])
