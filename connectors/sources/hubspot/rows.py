"""HubSpot deals as rows: the columnar deal table, the resolver that turns a deal into a canonical
row and stage entries, the frames handed to the flow, and the stored payloads (lazily built).

Memory: deals are held as columns (DealTable), never as a dict per deal; the frames are built
column by column (the raw sheet's str columns serve the table and the records too); the pending
upserts (StoredPayloads) build each deal's payload only when the flow commits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, overload

import numpy as np
import pandas as pd

from config.models import HUBSPOT_DEFAULT_FIELDS, HubSpotSourceConfig
from config.schema import HISTORY_FIELDS
from connectors.state.source_state import gc_paused

ROW_COLUMN = "_row"
PIPELINE_COLUMN = "_pipeline"  # the deal's pipeline label; canonicalize names it in stage rejects
LINE_ITEM_PRODUCT = "line_item_product"
RAW_KEY = "_hubspot"  # stored payload: the raw deal {id, properties, line_item_product}
HISTORY_KEY = "_history"  # stored payload: [[stage text, entered], ...]


@dataclass(frozen=True)
class Stage:
    """One HubSpot deal stage, with its pipeline. `text` is what the records carry as `stage`."""

    id: str
    label: str
    pipeline_id: str
    pipeline_label: str
    order: int
    probability: float | None
    closed: bool
    text: str

    @property
    def status(self) -> str:
        if not self.closed:
            return "open"
        return "won" if (self.probability or 0.0) >= 1.0 else "lost"



def field_properties(cfg: HubSpotSourceConfig) -> dict[str, str]:
    """Canonical field -> deal property for the fields read straight from a property."""
    merged: dict[str, str | None] = {**HUBSPOT_DEFAULT_FIELDS, **cfg.fields}
    return {k: v for k, v in merged.items() if v}


# ----------------------------------------------------------------------------- deal table

INTERN_LIMIT = 1_000  # a property with at most this many distinct values shares one str per value
_TEXT = {str, type(None)}


class DealTable:
    """Deals held as columns (one value list per property) instead of a dict per deal.

    A full pull of a million deals as dicts held ~8 kB per deal; as columns it holds the values
    and 8 bytes per cell. Each deal keeps its property names (one tuple shared by the deals with
    the same names, in HubSpot's order), so `deal(i)` rebuilds the raw deal exactly. Values that
    repeat across deals (stage, pipeline and owner ids, currency, deal type) share one string
    object while their property has at most INTERN_LIMIT distinct values; `hs_object_id` shares
    the id's. Filling: `add` (an id added again is replaced where it stands), `remove`,
    `set_line_item_products`; then `finish` orders the deals by id (positions 0..n-1 from then on).
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.names: list[tuple[str, ...]] = []  # per deal: its property names
        self.columns: dict[str, Any] = {}  # name -> values by position (None where a deal lacks it)
        self.line_item_product: dict[int, Any] = {}  # position -> the deal's LINE_ITEM_PRODUCT, when set
        self._nan_is_none: set[str] = set()  # columns shared with a str frame column: NaN reads as None
        self._dropped: set[int] = set()
        self._at: dict[str, int] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._interned: dict[str, dict[Any, Any] | None] = {}
        self.order: list[int] | None = None  # set by finish

    @classmethod
    def of(cls, deals: Iterable[dict]) -> DealTable:
        """A finished table of raw deals ({id, properties[, LINE_ITEM_PRODUCT]}), e.g. stored ones."""
        table = cls()
        batch: list[dict] = []
        for deal in deals:
            batch.append(deal)
            if len(batch) == 1_000:
                table.add_deals(batch)
                batch = []
        table.add_deals(batch)
        return table.finish()

    def add_deals(self, deals: list[dict]) -> None:
        """Add raw deals ({id, properties[, LINE_ITEM_PRODUCT]})."""
        self.add([(str(d["id"]), d.get("properties") or {}) for d in deals])
        self.set_line_item_products({str(d["id"]): d[LINE_ITEM_PRODUCT] for d in deals if LINE_ITEM_PRODUCT in d})

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, deals: list[tuple[str, dict]]) -> None:
        """Add (id, properties) pairs; a later pair of a stored id replaces it where it stands."""
        page = dict(deals)
        new = [(k, p) for k, p in page.items() if k not in self._at]
        if len(new) < len(page):
            for k, p in page.items():
                if k in self._at:
                    self._replace(self._at[k], p)
        if not new:
            return
        start, ids = len(self.ids), [k for k, _ in new]
        props = [p for _, p in new]
        shapes = list(map(self._shape, props))
        page_values: dict[Any, Any] = {}  # equal values within the page (e.g. createdate and the first
        for name, col in self.columns.items():  # stage's entered date) share one object too
            col.extend(self._intern(name, list(map(dict.get, props, repeat(name))), ids, page_values))
        self.ids += ids
        self.names += shapes
        self._at.update(zip(ids, range(start, start + len(ids)), strict=True))

    def _shape(self, props: dict) -> tuple[str, ...]:
        key = tuple(props)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = key
            for name in key:
                if name not in self.columns:
                    self.columns[name] = [None] * len(self.ids)
                    self._interned[name] = {}
        return shape

    def _intern(self, name: str, values: list[Any], ids: list[str], page_values: dict[Any, Any]) -> list[Any]:
        if name == "hs_object_id":
            return [k if v == k else v for v, k in zip(values, ids, strict=True)]
        if not set(map(type, values)) <= _TEXT:  # only str (1 == True == 1.0 would merge other types)
            return values
        seen = self._interned.get(name)
        if seen is None:
            return list(map(page_values.setdefault, values, values))
        values = list(map(seen.setdefault, values, values))
        if len(seen) > INTERN_LIMIT:
            self._interned[name] = None
        return values

    def _replace(self, i: int, props: dict) -> None:
        self.names[i] = self._shape(props)
        for name, col in self.columns.items():
            col[i] = self._intern(name, [props.get(name)], [self.ids[i]], {})[0]
        self.line_item_product.pop(i, None)

    def remove(self, deal_id: str) -> None:
        i = self._at.pop(deal_id, None)
        if i is not None:
            self._dropped.add(i)

    def live_ids(self) -> list[str]:
        """Ids of the deals held (not removed), in the order they came."""
        return list(self._at)

    def live_positions(self) -> Iterable[tuple[str, int]]:
        """(id, position) of the deals held, while filling."""
        return list(self._at.items())

    def __contains__(self, deal_id: object) -> bool:
        return deal_id in self._at

    def position(self, deal_id: str) -> int | None:
        """Where the deal is, while filling."""
        return self._at.get(deal_id)

    def set_line_item_products(self, products: dict[str, Any]) -> None:
        for deal_id, product in products.items():
            self.line_item_product[self._at[deal_id]] = product

    def finish(self) -> DealTable:
        """Order the deals by id (numbers first, by value; as `frames` orders payloads), drop the
        removed ones and the filling indexes. `order` keeps where each deal was before."""
        ids = self.ids
        keep = range(len(ids)) if not self._dropped else [i for i in range(len(ids)) if i not in self._dropped]
        try:
            keys = np.fromiter((int(k) if k.isdigit() and k.isascii() and len(k) < 19 else None
                                for k in (ids[i] for i in keep)),
                               dtype=np.int64, count=len(keep))
            order = [keep[j] for j in np.argsort(keys, kind="stable").tolist()]
        except (TypeError, ValueError):  # an id that is not a plain number
            order = sorted(keep, key=lambda i: _sort_key(ids[i]))
        self.order = order  # new position -> position before; for callers that keep data by position
        if order != list(range(len(ids))):
            self.ids = [ids[i] for i in order]
            self.names = [self.names[i] for i in order]
            for name, col in self.columns.items():
                self.columns[name] = [col[i] for i in order]
            at = {i: j for j, i in enumerate(order)}
            self.line_item_product = {at[i]: v for i, v in self.line_item_product.items() if i in at}
        self._dropped, self._at, self._shapes, self._interned = set(), {}, {}, {}
        return self

    def values(self, name: str) -> Any:
        """props.get(name) of every deal, by position (a list, or a shared frame column's values)."""
        col = self.columns.get(name)
        if col is None:
            return [None] * len(self.ids)
        if name in self._nan_is_none:
            return [None if v.__class__ is float else v for v in col[1]]
        return col

    def shared(self, name: str) -> pd.Series | None:
        """The frame column that column `name` is read from (see `share`), if any."""
        return self.columns[name][0] if name in self._nan_is_none else None

    def share(self, name: str, series: pd.Series) -> None:
        """Read column `name` from `series`, a str column built from it (NaN where the value was
        None): its list is freed. The frame may change later; copy-on-write keeps `series` as built."""
        self.columns[name] = (series, np.asarray(series))  # the Series keeps pandas' copy-on-write ref
        self._nan_is_none.add(name)

    def deal(self, i: int) -> dict:
        """The raw deal at position i, as HubSpot gave it: {id, properties[, line_item_product]}."""
        cols, shared = self.columns, self._nan_is_none
        props: dict[str, Any] = {}
        for n in self.names[i]:
            if n in shared:
                v = cols[n][1][i]
                props[n] = None if v.__class__ is float else v
            else:
                props[n] = cols[n][i]
        deal = {"id": self.ids[i], "properties": props}
        if i in self.line_item_product:
            deal[LINE_ITEM_PRODUCT] = self.line_item_product[i]
        return deal




# ----------------------------------------------------------------------------- frames


def _sort_key(deal_id: str) -> tuple[int, int, str]:
    return (0, int(deal_id), "") if deal_id.isdigit() else (1, 0, deal_id)


@dataclass
class Resolver:
    """Turns one deal's raw properties into a canonical row and its stage history entries."""

    cfg: HubSpotSourceConfig
    pipelines: dict[str, str]
    stages: dict[str, Stage]
    owners: dict[str, tuple[str, str | None]]
    unknown_owners: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.fields = list(field_properties(self.cfg).items())
        self.entered = [(f"{self.cfg.stage_entered_prefix}{s.id}", s.text) for s in self.stages.values()]

    def row(self, deal: dict) -> tuple[dict[str, Any], list[list[str]]]:
        cfg, props = self.cfg, deal["properties"]
        prefix = cfg.stage_entered_prefix
        sid = props.get("dealstage") or ""
        stage = self.stages.get(sid)
        pid = props.get("pipeline") or ""
        owner_id = props.get("hubspot_owner_id") or ""
        owner, team = self.owners.get(owner_id, (owner_id or None, None))
        if owner_id and owner_id not in self.owners:
            self.unknown_owners.add(owner_id)
        product = props.get(cfg.product_property) if cfg.product_property else None
        if not product and cfg.product_from_line_items:
            product = deal.get(LINE_ITEM_PRODUCT)
        row: dict[str, Any] = {f: props.get(p) for f, p in self.fields}
        row.update({
            "opportunity_id": deal["id"],
            "stage": stage.text if stage else (sid or None),
            "status": stage.status if stage else None,
            "owner": owner,
            "team": team,
            "product": product,
            "stage_entered_date": props.get(f"{prefix}{sid}") if sid else None,
            PIPELINE_COLUMN: stage.pipeline_label if stage else self.pipelines.get(pid, pid or None),
        })
        hist = [[text, props[name]] for name, text in self.entered if props.get(name)]
        return row, hist

    def columns(self, table: DealTable) -> dict[str, Any]:
        """`row()`'s values for every deal of a finished table, column by column (same keys, same
        order). A property column the table shares with a frame is that frame's column."""
        cfg, stages, ids = self.cfg, self.stages, table.ids
        sids = [v or "" for v in table.values("dealstage")]
        pids = [v or "" for v in table.values("pipeline")]
        owner_ids = [v or "" for v in table.values("hubspot_owner_id")]
        by_stage = {s: stages.get(s) for s in set(sids)}
        owners = {o: self.owners.get(o, (o or None, None)) for o in set(owner_ids)}
        self.unknown_owners |= {o for o in owners if o and o not in self.owners}
        product: Any = None
        if cfg.product_property:
            product = table.shared(cfg.product_property) if not cfg.product_from_line_items else None
            if product is None:
                product = table.values(cfg.product_property)
        else:
            product = [None] * len(ids)
        if cfg.product_from_line_items:
            lip = table.line_item_product
            product = [v if v else lip.get(i) for i, v in enumerate(product)]
        entered = {s: table.values(f"{cfg.stage_entered_prefix}{s}") for s in by_stage
                   if s and f"{cfg.stage_entered_prefix}{s}" in table.columns}
        out: dict[str, Any] = {}
        for f, p in self.fields:
            shared = table.shared(p)
            out[f] = shared if shared is not None else table.values(p)
        out.update({
            "opportunity_id": ids,
            "stage": [st.text if (st := by_stage[s]) else (s or None) for s in sids],
            "status": [st.status if (st := by_stage[s]) else None for s in sids],
            "owner": [owners[o][0] for o in owner_ids],
            "team": [owners[o][1] for o in owner_ids],
            "product": product,
            "stage_entered_date": [col[i] if (col := entered.get(s)) is not None else None
                                   for i, s in enumerate(sids)],
            PIPELINE_COLUMN: [st.pipeline_label if (st := by_stage[s]) else self.pipelines.get(p, p or None)
                              for s, p in zip(sids, pids, strict=True)],
        })
        return out

    def notes(self) -> list[str]:
        if not self.unknown_owners:
            return []
        return [f"{len(self.unknown_owners)} owner id(s) not found in HubSpot owners, kept as ids: "
                + ", ".join(sorted(self.unknown_owners)[:10])]


def stored(deal: dict, row: dict[str, Any], hist: list[list[str]]) -> dict:
    """The state-store payload of a deal: its canonical row (so a stale fallback needs no API),
    its stage entries, and the raw HubSpot deal the next incremental run rebuilds from."""
    return {**row, HISTORY_KEY: hist, RAW_KEY: deal}


def frames(cfg: HubSpotSourceConfig, payloads: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(records with `_row` from 1, history, raw properties) from stored payloads, ordered by deal id."""
    ordered = sorted(payloads, key=lambda p: _sort_key(str(p["opportunity_id"])))
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


class StoredPayloads(Sequence[tuple[str, dict]]):
    """(deal id, state-store payload) of the deals at `positions` of a finished DealTable, each
    built when read: a run's pending upserts, without a payload dict per deal held until the commit."""

    def __init__(self, table: DealTable, resolver: Resolver, positions: Sequence[int]):
        self.table, self.resolver, self.positions = table, resolver, positions

    def payload(self, i: int) -> dict:
        deal = self.table.deal(i)
        return stored(deal, *self.resolver.row(deal))

    def __len__(self) -> int:
        return len(self.positions)

    @overload
    def __getitem__(self, k: int) -> tuple[str, dict]: ...

    @overload
    def __getitem__(self, k: slice) -> list[tuple[str, dict]]: ...

    def __getitem__(self, k: int | slice) -> tuple[str, dict] | list[tuple[str, dict]]:
        if isinstance(k, slice):
            return [(self.table.ids[i], self.payload(i)) for i in self.positions[k]]
        i = self.positions[k]
        return self.table.ids[i], self.payload(i)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        for i in self.positions:
            yield self.table.ids[i], self.payload(i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredPayloads({len(self)} deal(s))"


