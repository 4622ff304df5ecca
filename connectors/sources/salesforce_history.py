"""Salesforce close date and amount history, from OpportunityHistory (issue 22: slippage).

OpportunityHistory gets a row whenever Amount, Probability, StageName or CloseDate changes
(Salesforce Object Reference, "OpportunityHistory"; shared docs/api-contracts.md 3.4), each
row holding the values after the change. The connector already reads those rows for stage
history (`salesforce._enrich`); this module keeps, per opportunity, the rows whose CloseDate or
Amount differs from the row before (`[CreatedDate, CloseDate, Amount]`, oldest first) in the
stored record, and turns stored records into the raw field-history frame
(config.schema.FIELD_HISTORY_COLUMNS) that transforms/field_history.py types.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from config.schema import FIELD_HISTORY_COLUMNS

FIELD_HISTORY_KEY = "_field_history"  # extra key of a stored record
HISTORY_FIELDS = "OpportunityId, StageName, CreatedDate, CloseDate, Amount"  # what _enrich selects


def field_entries(rows: Iterable[dict]) -> dict[str, list[list]]:
    """OpportunityHistory rows -> per opportunity [[CreatedDate, CloseDate, Amount], ...] for the
    rows where CloseDate or Amount changed (the first row always counts), in time order."""
    by_opp: dict[str, list[dict]] = {}
    for r in rows:
        by_opp.setdefault(r.get("OpportunityId"), []).append(r)
    out: dict[str, list[list]] = {}
    for opp, items in by_opp.items():
        items.sort(key=lambda r: (r.get("CreatedDate") or "", r.get("Id") or ""))
        entries: list[list] = []
        for r in items:
            entry = [r.get("CreatedDate"), r.get("CloseDate"), r.get("Amount")]
            if not entries or entries[-1][1:] != entry[1:]:
                entries.append(entry)
        out[opp] = entries
    return out


def field_history_frame(payloads: Iterable[dict]) -> pd.DataFrame:
    """Stored records -> raw field-history rows (opportunity_id, field, changed_at, value)."""
    rows: list[tuple] = []
    for p in payloads:
        opp = p.get("Id")
        last_close, last_amount = object(), object()
        for created, close, amount in p.get(FIELD_HISTORY_KEY) or []:
            if close != last_close:
                rows.append((opp, "close_date", created, close))
            if amount != last_amount:
                rows.append((opp, "amount", created, amount))
            last_close, last_amount = close, amount
    return pd.DataFrame(rows, columns=list(FIELD_HISTORY_COLUMNS), dtype=object)
