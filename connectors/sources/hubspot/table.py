"""HubSpot deals held as columns (DealTable): one value list per property, not a dict per deal."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

LINE_ITEM_PRODUCT = "line_item_product"  # a raw deal's key: the name of its largest line item
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
            order = sorted(keep, key=lambda i: sort_key(ids[i]))
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


def sort_key(deal_id: str) -> tuple[int, int, str]:
    """Deal ids in order: numbers first, by value, then the rest as text."""
    return (0, int(deal_id), "") if deal_id.isdecimal() else (1, 0, deal_id)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """`ids` in `sort_key` order; in one numpy sort when every id is a distinct number of at most 18
    digits (HubSpot's are), else by `sort_key`."""
    items = list(ids)
    if items and max(map(len, items)) <= 18 and all(map(str.isdecimal, items)):
        values = np.fromiter(map(int, items), dtype=np.int64, count=len(items))
        order = np.argsort(values, kind="stable")
        if not (np.diff(values[order]) == 0).any():  # "7" and "007": left to sort_key
            return np.asarray(items, dtype=object)[order].tolist()
    return sorted(items, key=sort_key)
