"""HubSpot deals as the frames handed to the flow: records, stage history and the raw sheet,
from stored payloads (`frames`) or column by column from a finished DealTable (`table_frames`).

Memory: deals are held as columns (table.DealTable), never as a dict per deal; the frames are
built column by column (the raw sheet's str columns serve the table and the records too); the
pending upserts (resolve.StoredPayloads) build each deal's payload only when the flow commits it.
It also re-exports the deal table and resolver names it was once the home of (`__all__`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from config.models import HubSpotSourceConfig
from config.schema import HISTORY_FIELDS
from connectors.sources.hubspot.resolve import (
    HISTORY_KEY,
    PIPELINE_COLUMN,
    RAW_KEY,
    ROW_COLUMN,
    Resolver,
    Stage,
    StoredPayloads,
    field_properties,
    stored,
)
from connectors.sources.hubspot.table import INTERN_LIMIT, LINE_ITEM_PRODUCT, DealTable, sort_key
from connectors.state.source_state import gc_paused

__all__ = [
    "HISTORY_KEY", "INTERN_LIMIT", "LINE_ITEM_PRODUCT", "PIPELINE_COLUMN", "RAW_KEY", "ROW_COLUMN",
    "DealTable", "Resolver", "Stage", "StoredPayloads", "field_properties", "frames", "sort_key", "stored",
    "table_frames",
]


def frames(cfg: HubSpotSourceConfig, payloads: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(records with `_row` from 1, history, raw properties) from stored payloads, ordered by deal id."""
    ordered = sorted(payloads, key=lambda p: sort_key(str(p["opportunity_id"])))
    rows, hist, raw = [], [], []
    for i, p in enumerate(ordered, start=1):
        rows.append({k: v for k, v in p.items() if k not in (HISTORY_KEY, RAW_KEY)} | {ROW_COLUMN: i})
        hist += [{"opportunity_id": p["opportunity_id"], "stage": st, "entered_date": when}
                 for st, when in p.get(HISTORY_KEY) or []]
        deal = p[RAW_KEY]
        raw.append({"id": deal["id"], **deal["properties"],
                    **({LINE_ITEM_PRODUCT: deal.get(LINE_ITEM_PRODUCT)} if cfg.product_from_line_items else {})})
    history = pd.DataFrame(hist, columns=list(HISTORY_FIELDS))
    if not rows:
        return _empty_frames(cfg)
    return pd.DataFrame(rows), history, pd.DataFrame(raw)


def _empty_frames(cfg: HubSpotSourceConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """No deals: frames that keep the columns, so an empty source still has the shape of one."""
    columns = ["opportunity_id", *field_properties(cfg), "stage", "status", "owner", "team", "product",
               "stage_entered_date", PIPELINE_COLUMN, ROW_COLUMN]
    return (pd.DataFrame(columns=columns), pd.DataFrame([], columns=list(HISTORY_FIELDS)),
            pd.DataFrame(columns=["id"]))


def table_frames(cfg: HubSpotSourceConfig, table: DealTable,
                 resolver: Resolver) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(records with `_row` from 1, history, raw properties or None without `raw_sheet`) of a
    finished table, built column by column: the frames `frames()` builds from the deals' payloads,
    without a dict per deal. With a raw sheet the raw frame's str columns also serve the table
    and the records' property columns (one array per property, not three)."""
    if not len(table):
        records, history, raw = _empty_frames(cfg)
        return records, history, raw if cfg.raw_sheet else None
    with gc_paused():
        raw = _raw_frame(cfg, table) if cfg.raw_sheet else None
        columns: dict[str, Any] = resolver.columns(table)
        columns[ROW_COLUMN] = np.arange(1, len(table) + 1, dtype=np.int64)
        records = pd.DataFrame(columns, copy=False)
        del columns
        history = _history_frame(table, resolver)
    return records, history, raw


def _history_frame(table: DealTable, resolver: Resolver) -> pd.DataFrame:
    entered = []
    for name, text in resolver.entered:
        if name in table.columns:
            shared = table.shared(name) is not None
            entered.append((table.columns[name][1] if shared else table.columns[name], text, shared))
    ids, stages, when = [], [], []
    for i, deal_id in enumerate(table.ids):
        for col, text, shared in entered:
            value = col[i]
            if value and not (shared and value.__class__ is float):  # NaN: a shared column's None
                ids.append(deal_id)
                stages.append(text)
                when.append(value)
    if not ids:
        return pd.DataFrame([], columns=list(HISTORY_FIELDS))
    columns: dict[str, pd.Series] = {}
    for name, values in zip(HISTORY_FIELDS, (ids, stages, when), strict=True):
        columns[name] = pd.Series(values, copy=False)
        values.clear()  # one list's worth of pointers at a time
    return pd.DataFrame(columns, copy=False)


def _raw_frame(cfg: HubSpotSourceConfig, table: DealTable) -> pd.DataFrame:
    """Per deal {"id", **properties[, LINE_ITEM_PRODUCT]}, columns in first-seen order, NaN where
    a deal lacks a property (as pd.DataFrame of those dicts has it). Its str columns then serve
    as the table's columns (their lists are freed one by one while the frame is built)."""
    li = cfg.product_from_line_items
    names: dict[str, None] = {"id": None}
    shapes: dict[tuple[str, ...], None] = {}
    for shape in table.names:
        if shape not in shapes:
            shapes[shape] = None
            names.update(dict.fromkeys((*shape, LINE_ITEM_PRODUCT) if li else shape))
    nan = float("nan")
    out: dict[str, pd.Series] = {}
    for name in names:
        has = {shape: name in shape for shape in shapes}
        if li and name == LINE_ITEM_PRODUCT:
            values: list[Any] = [table.line_item_product.get(i) for i in range(len(table))]
        elif all(has.values()):
            values = table.values(name)
        elif name == "id" and not any(has.values()):
            values = table.ids
        else:
            col, fallback = table.values(name), table.ids if name == "id" else None
            values = [col[i] if has[shape] else (fallback[i] if fallback else nan)
                      for i, shape in enumerate(table.names)]
        out[name] = series = pd.Series(values, copy=False)
        del values
        if name in table.columns and name != "id" and not (li and name == LINE_ITEM_PRODUCT) \
                and isinstance(series.dtype, pd.StringDtype):
            table.share(name, series)
    return pd.DataFrame(out, copy=False)
