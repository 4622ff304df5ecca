"""HubSpot close date and amount history (issue 22: slippage), through `propertiesWithHistory`.

HubSpot returns a property's versions (value, timestamp, source) when it is named in
`propertiesWithHistory` (api-contracts.md 2.2; HubSpot CRM API "Deals": list and batch read).
With history the page size is smaller: at most 50 objects per request (api-contracts.md 2.2, as
HubSpot documents for requests with property history), so deals are read by id in batches of 50
with `POST /crm/v3/objects/deals/batch/read` (client.HubSpotApi.deal_histories). Only the deals
read in a run are asked for (all on a full refresh, the changed ones otherwise); the others keep
what connectors/state/field_history.py stored for them.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import sqlalchemy as sa

from config.models import HUBSPOT_DEFAULT_FIELDS, HubSpotSourceConfig
from connectors.sources.hubspot.client import HubSpotApi
from connectors.state.field_history import Entries, entries_frame, load_entries


def history_properties(cfg: HubSpotSourceConfig) -> dict[str, str]:
    """deal property -> canonical field, for close_date and amount (as `fields` maps them)."""
    fields = {**HUBSPOT_DEFAULT_FIELDS, **cfg.fields}
    return {prop: canon for canon in ("close_date", "amount") if (prop := fields.get(canon))}


def versions_to_entries(history: dict[str, list[dict]], props: dict[str, str]) -> Entries:
    """One deal's `propertiesWithHistory` -> [[timestamp, field, value], ...], oldest first."""
    out: Entries = []
    for prop, canon in props.items():
        for v in history.get(prop) or []:
            if isinstance(v, dict) and v.get("timestamp"):
                out.append([str(v["timestamp"]), canon, v.get("value")])
    out.sort(key=lambda e: e[0])
    return out


def fetch(api: HubSpotApi, cfg: HubSpotSourceConfig, ids: Iterable[str]) -> dict[str, Entries]:
    """deal id -> its close date / amount entries, read HISTORY_BATCH deals per batch request."""
    props = history_properties(cfg)
    if not props:
        return {}
    wanted = sorted(set(ids), key=lambda x: (len(x), x))
    return {k: versions_to_entries(v, props) for k, v in api.deal_histories(wanted, list(props)).items()}


def field_history(api: HubSpotApi, cfg: HubSpotSourceConfig, engine: sa.Engine | None, read: Iterable[str],
                  current: Iterable[str], deletes: set[str], *, with_stored: bool
                  ) -> tuple[dict[str, Entries] | None, pd.DataFrame | None]:
    """(`field_history: true`) the close date / amount history of the deals `read` this run (to
    store) and the raw field-history frame of the `current` deals: this run's entries, else, with
    `with_stored`, the stored ones. (None, None) when the source does not read history."""
    if not cfg.field_history:
        return None, None
    fetched = fetch(api, cfg, read)
    stored = load_entries(engine, cfg.name) if with_stored and engine is not None else {}
    live = set(current)
    merged = {k: v for k, v in {**stored, **fetched}.items() if k in live and k not in deletes}
    return fetched, entries_frame(merged)
