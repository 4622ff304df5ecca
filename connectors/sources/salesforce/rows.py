"""Salesforce opportunities as rows: flattened records, stage entries, close date / amount
history, the main product, and the frames (records, history, raw, field history) built from the
stored payloads."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from config.models import SalesforceSourceConfig
from config.schema import FIELD_HISTORY_COLUMNS
from connectors.sources.salesforce.query import line_item_product_field, opportunity_product_field

DEFAULT_TYPE_MAP: dict[str, str] = {
    "New Customer": "new",
    "New Business": "new",
    "Existing Customer - Upgrade": "existing",
    "Existing Customer - Replacement": "existing",
    "Existing Business": "existing",
    "Renewal": "existing",
}
# Salesforce field -> canonical field (raw values; canonicalize() types them).
CANONICAL: dict[str, str] = {
    "Id": "opportunity_id",
    "Name": "name",
    "AccountId": "account_id",
    "Account.Name": "account_name",
    "Owner.Name": "owner",
    "StageName": "stage",
    "Amount": "amount",
    "CreatedDate": "created_date",
    "CloseDate": "close_date",
    "LastStageChangeDate": "stage_entered_date",
    "LastActivityDate": "last_activity_date",
    "LeadSource": "lead_source",
    "ForecastCategoryName": "forecast_category",
}
HISTORY_KEY, PRODUCT_KEY = "_history", "_product"  # extra keys of a stored record
FIELD_HISTORY_KEY = "_field_history"  # ... [[CreatedDate, CloseDate, Amount], ...] (issue 22)


def flatten(record: dict, fields: Iterable[str]) -> dict[str, Any]:
    """The requested field paths of one SOQL record (`Account.Name` walks the nested object)."""
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = record
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[path] = value
    return out


def stage_entries(rows: Iterable[dict]) -> dict[str, list[list[str]]]:
    """OpportunityHistory rows -> per opportunity [[stage, entered], ...]: a row counts when StageName changed."""
    by_opp: dict[str, list[dict]] = {}
    for r in rows:
        by_opp.setdefault(r.get("OpportunityId"), []).append(r)
    out: dict[str, list[list[str]]] = {}
    for opp, items in by_opp.items():
        items.sort(key=lambda r: (r.get("CreatedDate") or "", r.get("Id") or ""))
        entries: list[list[str]] = []
        for r in items:
            stage = r.get("StageName")
            if stage and (not entries or entries[-1][0] != stage):
                entries.append([stage, r.get("CreatedDate")])
        out[opp] = entries
    return out


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
    """Stored records -> raw field-history rows (config.schema.FIELD_HISTORY_COLUMNS: opportunity_id,
    field, changed_at, value), one per change of close_date or amount; transforms/field_history.py
    types them."""
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


def main_product(rows: Iterable[dict], field: str) -> dict[str, Any]:
    """Per opportunity, the product of its line item with the largest TotalPrice (first on ties)."""
    best: dict[str, tuple[float, Any]] = {}
    for r in rows:
        value = flatten(r, [field])[field]
        if value in (None, ""):
            continue
        price = float(r.get("TotalPrice") or 0)
        opp = r.get("OpportunityId")
        if opp not in best or price > best[opp][0]:
            best[opp] = (price, value)
    return {k: v for k, (_, v) in best.items()}


def status_of(rec: dict) -> str | None:
    if rec.get("IsWon") is True:
        return "won"
    if rec.get("IsClosed") is True:
        return "lost"
    return "open" if rec.get("IsClosed") is False else None


def to_frames(
    payloads: list[dict], cfg: SalesforceSourceConfig, fields: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Stored payloads -> (records, history, raw, notes)."""
    type_map = {k.strip().lower(): v for k, v in {**DEFAULT_TYPE_MAP, **(cfg.type_map or {})}.items()}
    opp_product = opportunity_product_field(cfg)
    product_col = cfg.product_field if line_item_product_field(cfg) else None
    rows, hist, raw, unknown_types = [], [], [], {}
    for i, p in enumerate(payloads, start=1):
        rec = {canon: p.get(sf) for sf, canon in CANONICAL.items()}
        rec["_row"] = i
        rec["status"] = status_of(p)
        sf_type = p.get("Type")
        mapped = type_map.get(str(sf_type).strip().lower()) if sf_type not in (None, "") else None
        if sf_type not in (None, "") and mapped is None:
            unknown_types[sf_type] = unknown_types.get(sf_type, 0) + 1
        rec["deal_type"] = mapped or sf_type
        rec["product"] = p.get(opp_product) if opp_product else p.get(PRODUCT_KEY)
        rec["next_step_date"] = p.get(cfg.next_step_field) if cfg.next_step_field else None
        if cfg.currency_rates != "none":
            rec["currency"] = p.get("CurrencyIsoCode")
        rows.append(rec)
        hist += [{"opportunity_id": p.get("Id"), "stage": s, "entered_date": d} for s, d in p.get(HISTORY_KEY) or []]
        r = {f: p.get(f) for f in fields}
        if product_col:
            r[product_col] = p.get(PRODUCT_KEY)
        raw.append(r)
    notes = [
        f"Type '{t}' ({n} opportunit{'y' if n == 1 else 'ies'}) is not in type_map: add it as new or existing"
        for t, n in sorted(unknown_types.items())
    ]
    canon_cols = [*CANONICAL.values(), "status", "deal_type", "product", "next_step_date",
                  *(["currency"] if cfg.currency_rates != "none" else []), "_row"]
    records = pd.DataFrame(rows, columns=canon_cols, dtype=object)
    records["_row"] = records["_row"].astype("int64")
    history = pd.DataFrame(hist, columns=["opportunity_id", "stage", "entered_date"], dtype=object)
    raw_cols = fields + ([product_col] if product_col else [])
    return records, history, pd.DataFrame(raw, columns=raw_cols, dtype=object), notes


