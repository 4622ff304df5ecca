"""HubSpot close date and amount history (issue 22: slippage), through `propertiesWithHistory`.

HubSpot returns a property's versions (value, timestamp, source) when it is named in
`propertiesWithHistory` (api-contracts.md 2.2; HubSpot CRM API "Deals": list and batch read).
With history the page size is smaller: at most 50 objects per request (api-contracts.md 2.2, as
HubSpot documents for requests with property history), so deals are read by id in batches of 50
with `POST /crm/v3/objects/deals/batch/read`. Only the deals read in a run are asked for (all on
a full refresh, the changed ones otherwise); the others keep what connectors/state/field_history.py
stored for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from config.models import HUBSPOT_DEFAULT_FIELDS, HubSpotSourceConfig

HISTORY_BATCH = 50  # objects per request when propertiesWithHistory is set


def history_properties(cfg: HubSpotSourceConfig) -> dict[str, str]:
    """deal property -> canonical field, for close_date and amount (as `fields` maps them)."""
    fields = {**HUBSPOT_DEFAULT_FIELDS, **cfg.fields}
    return {prop: canon for canon in ("close_date", "amount") if (prop := fields.get(canon))}


def versions_to_entries(history: dict[str, list[dict]], props: dict[str, str]) -> list[list]:
    """One deal's `propertiesWithHistory` -> [[timestamp, field, value], ...], oldest first."""
    out: list[list] = []
    for prop, canon in props.items():
        for v in history.get(prop) or []:
            if isinstance(v, dict) and v.get("timestamp"):
                out.append([str(v["timestamp"]), canon, v.get("value")])
    out.sort(key=lambda e: e[0])
    return out


def fetch(api: Any, cfg: HubSpotSourceConfig, ids: Iterable[str]) -> dict[str, list[list]]:
    """deal id -> its close date / amount entries, read 50 deals per batch request."""
    props = history_properties(cfg)
    wanted = sorted(set(ids), key=lambda x: (len(x), x))
    out: dict[str, list[list]] = {}
    if not props:
        return out
    for i in range(0, len(wanted), HISTORY_BATCH):
        body = {"inputs": [{"id": x} for x in wanted[i:i + HISTORY_BATCH]], "properties": ["hs_object_id"],
                "propertiesWithHistory": list(props)}
        for r in api.post("/crm/v3/objects/deals/batch/read", body).get("results") or []:
            out[str(r["id"])] = versions_to_entries(r.get("propertiesWithHistory") or {}, props)
    return out
