"""HubSpot deal -> canonical row: the stages, the resolver (a deal's row and stage entries, one
deal or a whole table column by column) and the state-store payloads, built when committed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from config.models import HUBSPOT_DEFAULT_FIELDS, HubSpotSourceConfig
from connectors.sources.hubspot.table import LINE_ITEM_PRODUCT, DealTable

ROW_COLUMN = "_row"
PIPELINE_COLUMN = "_pipeline"  # the deal's pipeline label; canonicalize names it in stage rejects
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


@dataclass
class Resolver:
    """Turns one deal's raw properties into a canonical row and its stage history entries."""

    cfg: HubSpotSourceConfig
    pipelines: dict[str, str]
    stages: dict[str, Stage]
    owners: dict[str, tuple[str, str | None]]
    unknown_owners: set[str] = field(default_factory=set)
    entered_names: dict[str, str] | None = None  # stage id -> its entry-time property; default: prefix + id

    def __post_init__(self) -> None:
        self.fields = list(field_properties(self.cfg).items())
        prefix = self.cfg.stage_entered_prefix
        names = self.entered_names or {}
        self.entry_name = {s.id: names.get(s.id, f"{prefix}{s.id}") for s in self.stages.values()}
        self.entered = [(self.entry_name[s.id], s.text) for s in self.stages.values()]

    def row(self, deal: dict) -> tuple[dict[str, Any], list[list[str]]]:
        cfg, props = self.cfg, deal["properties"]
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
            "stage_entered_date": props.get(self.entry_name.get(sid) or f"{cfg.stage_entered_prefix}{sid}") if sid else None,
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
        name_of = {s: self.entry_name.get(s) or f"{cfg.stage_entered_prefix}{s}" for s in by_stage if s}
        entered = {s: table.values(n) for s, n in name_of.items() if n in table.columns}
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
