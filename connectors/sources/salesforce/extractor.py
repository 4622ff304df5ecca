"""Salesforce opportunities for one run: a full read, or the rows changed since the cursor.

Incremental (connectors/sources/incremental.py, as for HubSpot): the first run (or `full_refresh`)
reads every opportunity and replaces the stored state; later runs read only rows with
`cursor - overlap_seconds <= SystemModstamp < signpost` (the signpost is the run's start, in
whole seconds; the overlap catches transactions that commit late), merge them into the stored
records by Id and drop the ids `queryAll` reports deleted (and, with `where:`, rows that changed
and no longer match it). The new cursor is the signpost; it travels in `Extracted.pending_state`
and the flow commits it only when the whole run succeeds.

queryAll reports a deletion only while the record sits in the Recycle Bin (about 15 days). Every
`reconcile_days` (and whenever the window starts 14 or more days back) the run also lists every
Id (keyset pages) and drops the stored ids the org no longer has; the cursor keeps the time of the
last reconciliation (`;r=`), and a full read counts as one.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta

import requests
import sqlalchemy as sa

from config.models import SalesforceSourceConfig
from config.soql import where_clause
from connectors.extracted import STALE_NOTE, ExtractContext, Extracted
from connectors.http.session import HttpClient, Observer, RetryPolicy, build_session
from connectors.sources.incremental import Meter, Records, Window, deleted_ids, merge, open_window
from connectors.sources.salesforce.client import SalesforceAPI
from connectors.sources.salesforce.query import (
    CURSOR,
    OPPORTUNITY_HISTORY_SOQL,
    RECYCLE_BIN_DAYS,
    by_ids,
    current_ids,
    gone_ids,
    line_item_product_field,
    opportunity_soql,
    query_fingerprint,
    reconciled_at,
    select_fields,
    window,
    with_reconciled,
)
from connectors.sources.salesforce.rates import read_rates
from connectors.sources.salesforce.rows import (
    FIELD_HISTORY_KEY,
    HISTORY_KEY,
    PRODUCT_KEY,
    field_entries,
    field_history_frame,
    flatten,
    main_product,
    stage_entries,
    to_frames,
)
from connectors.state import source_state

log = logging.getLogger(__name__)

REFRESH_NOTE = "the query changed (fields, where or product_field): state rebuilt from a full read"


def extract(
    cfg: SalesforceSourceConfig,
    ctx: ExtractContext,
    *,
    session: requests.Session | None = None,
    policy: RetryPolicy | None = None,
) -> Extracted:
    """Extract one Salesforce org's opportunities (and stage history) for this run."""
    meter = Meter(ctx.observer)
    http = HttpClient(session or build_session(cfg.ca_bundle, cfg.verify_tls), timeout=cfg.timeout,
                      policy=policy or ctx.retry_policy or RetryPolicy(), observer=ctx.observer,
                      service="Salesforce")
    api = SalesforceAPI(cfg, http)
    api.authenticate()
    api.read_limits()
    rates = read_rates(api, cfg) if cfg.currency_rates != "none" else None

    fields = select_fields(cfg)
    user_where = where_clause(cfg.where)
    win = open_window(ctx, cfg.name, query_fingerprint(cfg), CURSOR, cfg.overlap_seconds,
                      keeps_state=cfg.incremental, needs_records=True, whole_seconds=True,
                      refresh_note=REFRESH_NOTE)
    last = reconciled_at(source_state.get_cursor(ctx.engine, cfg.name)) if win.incremental and ctx.engine else None
    reconcile = win.incremental and _reconcile_due(cfg, win, last)
    win = replace(win, cursor=with_reconciled(win.cursor, win.signpost if reconcile or not win.incremental else last))
    changed = read_changed(api, cfg, ctx.observer, win, fields, user_where)
    deletes: list[str] = []
    same = False
    merged: dict[str, dict] = changed
    if win.incremental:
        assert ctx.engine is not None
        deletes, same = _compare(api, ctx.engine, cfg.name, win, changed, user_where)
        if reconcile:
            purged = deleted_ids(win.stored_ids - current_ids(api, user_where, cfg.page_size), changed, win.stored_ids)
            if purged:
                deletes, same = sorted({*deletes, *purged}), False
                n = len(purged)
                win = replace(win, notes=(*win.notes, f"ids reconciled: {n} stored opportunit{'y' if n == 1 else 'ies'} "
                                          "no longer in Salesforce (deleted and purged from the Recycle Bin) left the state"))
            log.info("Salesforce source '%s': ids reconciled, %d gone", cfg.name, len(purged))
        if same and win.holds(ctx.cached_version):
            reused = win.reused(cfg.name, "nothing changed since the last run", meter)
            reused.rates = rates
            return reused
        stored = Records((p["Id"], p) for p in source_state.load_records(ctx.engine, cfg.name))
        merged = merge(stored, changed, deletes)
    result = _result(cfg, win, fields, changed, merged, deletes, same, meter)
    result.rates = rates
    return result


def _reconcile_due(cfg: SalesforceSourceConfig, win: Window, last: datetime | None) -> bool:
    """Whether this incremental run lists every Id: never done (or not since this cursor format),
    `reconcile_days` passed, or the window starts far enough back that the Recycle Bin may have
    purged deletions queryAll would have reported."""
    assert win.since is not None
    if last is None or win.signpost - last >= timedelta(days=cfg.reconcile_days):
        return True
    return win.signpost - win.since >= timedelta(days=RECYCLE_BIN_DAYS)


def read_changed(api: SalesforceAPI, cfg: SalesforceSourceConfig, observer: Observer, win: Window,
                 fields: list[str], user_where: str | None) -> dict[str, dict]:
    """The opportunities of the window (all of them on a full read), flattened, by Id, with their
    stage history and product."""
    soql = opportunity_soql(fields, window(win.start, win.signpost) if win.start else None,
                            f"({user_where})" if user_where else None)
    changed: dict[str, dict] = {}
    for pages, page in enumerate(api.query(soql), start=1):
        for rec in page:
            flat = flatten(rec, fields)
            changed[flat["Id"]] = flat
        observer.event("page", source=cfg.name, records=len(changed), pages=pages)
    _enrich(api, cfg, changed)
    return changed


def _compare(api: SalesforceAPI, engine: sa.Engine, source: str, win: Window, changed: dict[str, dict],
             user_where: str | None) -> tuple[list[str], bool]:
    """(the stored ids that leave the state, whether the stored records are still the org's: none
    deleted and every record read is stored as it is now, e.g. re-read in the overlap)."""
    assert win.start is not None
    deletes = deleted_ids(gone_ids(api, win.start, win.signpost, user_where), changed, win.stored_ids)
    kept = source_state.load_some(engine, source, changed)
    return deletes, not deletes and all(kept.get(k) == v for k, v in changed.items())


def _result(cfg: SalesforceSourceConfig, win: Window, fields: list[str], changed: dict[str, dict],
            merged: dict[str, dict], deletes: list[str], same: bool, meter: Meter) -> Extracted:
    payloads = [merged[k] for k in sorted(merged)]
    records, history, raw, type_notes = to_frames(payloads, cfg, fields)
    version = win.version(same, cfg.name, len(changed), len(deletes))
    pending = win.pending(list(changed.items()), deletes, version)
    log.info("Salesforce source '%s': %s read, %d changed, %d deleted, %d current",
             cfg.name, "incremental" if win.incremental else "full", len(changed), len(deletes), len(payloads))
    return Extracted(
        source=cfg.name, records=records, history=history, raw=raw if cfg.raw_sheet else None,
        field_history=field_history_frame(payloads),
        notes=[*win.notes, *type_notes], **meter.counts(), pending_state=pending,
        version=pending.version.version if pending is not None and pending.version else None,
        **win.delta([*changed, *deletes]),
    )


def from_state(cfg: SalesforceSourceConfig, payloads: list[dict]) -> Extracted:
    """The stored current records (source_state.load_records) as this source's frames, marked
    stale: what the flow should hand on when the org cannot be reached."""
    ordered = sorted(payloads, key=lambda p: str(p.get("Id") or ""))
    records, history, raw, notes = to_frames(ordered, cfg, select_fields(cfg))
    return Extracted(source=cfg.name, records=records, history=history, raw=raw if cfg.raw_sheet else None,
                     field_history=field_history_frame(ordered), stale=True,
                     notes=[STALE_NOTE.format(cfg.name), *notes])


def _enrich(api: SalesforceAPI, cfg: SalesforceSourceConfig, recs: dict[str, dict]) -> None:
    """Add stage history, close date / amount history and (from line items) the product to each
    record, in place."""
    ids = sorted(recs)
    history_rows = list(by_ids(api, OPPORTUNITY_HISTORY_SOQL, ids))
    entries = stage_entries(history_rows)
    changes = field_entries(history_rows)  # issue 22: close date / amount history
    for rid, rec in recs.items():
        rec[HISTORY_KEY] = entries.get(rid, [])
        rec[FIELD_HISTORY_KEY] = changes.get(rid, [])
    product_field = line_item_product_field(cfg)
    if product_field:
        items = by_ids(api, f"SELECT OpportunityId, TotalPrice, {product_field} FROM OpportunityLineItem"
                            " WHERE OpportunityId IN ({ids})", ids)
        products = main_product(items, product_field)
        for rid, rec in recs.items():
            rec[PRODUCT_KEY] = products.get(rid)
