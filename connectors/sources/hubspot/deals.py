"""Reading HubSpot deals: pipelines and stages, the full listing, the incremental search, archived
ids, line-item products and owners. The calls go through `client.HubSpotApi`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.models import HubSpotSourceConfig
from connectors.errors import FatalAPIError
from connectors.http.paging import paginate
from connectors.http.session import Observer
from connectors.sources.hubspot.client import HubSpotApi, as_float, next_after
from connectors.sources.hubspot.resolve import Stage
from connectors.sources.hubspot.table import LINE_ITEM_PRODUCT, DealTable
from connectors.state.source_state import gc_paused

SEARCH_CAP = 10_000  # results one search query can page through (HubSpot answers 400 beyond)


# ----------------------------------------------------------------------------- pipelines


def stage_text(pipeline_label: str, stage_id: str, label: str, stage_map: dict[str, str]) -> str:
    """The key `stage_map` knows this stage by: 'Pipeline / Label', the id, else the label."""
    keys = {k.strip().lower() for k in stage_map}
    for candidate in (f"{pipeline_label} / {label}", stage_id):
        if candidate.lower() in keys:
            return candidate
    return label


def parse_pipelines(body: dict, stage_map: dict[str, str]) -> tuple[dict[str, str], dict[str, Stage]]:
    """(pipeline id -> label, stage id -> Stage) from GET /crm/v3/pipelines/deals."""
    pipelines: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    for p in body.get("results") or []:
        pid, plabel = str(p["id"]), str(p.get("label") or p["id"])
        pipelines[pid] = plabel
        for s in p.get("stages") or []:
            meta = s.get("metadata") or {}
            sid, label = str(s["id"]), str(s.get("label") or s["id"])
            stages[sid] = Stage(
                id=sid, label=label, pipeline_id=pid, pipeline_label=plabel,
                order=int(s.get("displayOrder") or 0), probability=as_float(meta.get("probability")),
                closed=str(meta.get("isClosed", "false")).lower() == "true",
                text=stage_text(plabel, sid, label, stage_map),
            )
    return pipelines, stages


def select_pipelines(cfg: HubSpotSourceConfig, pipelines: dict[str, str]) -> set[str]:
    """Pipeline ids the `pipelines:` filter (ids or labels, any case) selects; all when unset."""
    if not cfg.pipelines:
        return set(pipelines)
    by_key = {k.lower(): k for k in pipelines} | {v.lower(): k for k, v in pipelines.items()}
    unknown = [p for p in cfg.pipelines if p.strip().lower() not in by_key]
    if unknown:
        have = ", ".join(f"{k} ({v})" for k, v in pipelines.items()) or "none"
        raise FatalAPIError(
            f"source '{cfg.name}': pipelines: {', '.join(repr(u) for u in unknown)} is neither the id nor "
            f"the label of a HubSpot deal pipeline; the account has: {have}"
        )
    return {by_key[p.strip().lower()] for p in cfg.pipelines}


@dataclass(frozen=True)
class Scope:
    """The account's pipelines (id -> label), their stages (id -> Stage) and the selected pipeline ids."""

    pipelines: dict[str, str]
    stages: dict[str, Stage]
    selected: set[str]


def read_scope(api: HubSpotApi, cfg: HubSpotSourceConfig) -> Scope:
    """GET the deal pipelines; select those of the `pipelines:` filter."""
    pipelines, stages = parse_pipelines(api.pipelines(), cfg.stage_map)
    return Scope(pipelines, stages, select_pipelines(cfg, pipelines))


def _ms(when: datetime) -> int:
    """Epoch milliseconds, as search filters on hs_lastmodifieddate take them."""
    return int(when.timestamp() * 1000)


def _parse_ts(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return _ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return int(value) if value.isdigit() else None


# ----------------------------------------------------------------------------- reading deals


@dataclass
class Progress:
    """Counts a read's records and pages and reports each page to the observer."""

    observer: Observer
    source: str
    records: int = 0
    pages: int = 0

    def page(self, n: int, total: int | None = None) -> None:
        self.records = total if total is not None else self.records + n
        self.pages += 1
        self.observer.event("page", source=self.source, records=self.records, pages=self.pages)


def _payload(deal: dict) -> dict:
    return {"id": str(deal["id"]), "properties": dict(deal.get("properties") or {})}


def list_all(api: HubSpotApi, cfg: HubSpotSourceConfig, props: list[str], progress: Progress,
             selected: set[str]) -> tuple[DealTable, int]:
    """Every active deal of the `selected` pipelines (GET list) as a DealTable, and how many deals
    were listed in all. Products come from line items: each kept deal's largest line item."""
    table = DealTable()
    line_items: dict[str, list[str]] = {}
    listed = 0
    with gc_paused():  # page dicts are acyclic garbage; the table holds few containers
        for results in api.deals(props, cfg.page_size, line_items=cfg.product_from_line_items):
            listed += len(results)
            page: list[tuple[str, dict]] = []
            for d in results:
                deal_id, p = str(d["id"]), d.get("properties") or {}
                if (p.get("pipeline") or "") not in selected:
                    table.remove(deal_id)  # a deal listed again after it moved out of the selection
                    continue
                page.append((deal_id, p))
                if cfg.product_from_line_items:
                    assoc = d.get("associations") or {}
                    li = assoc.get("line items") or assoc.get("line_items") or {}
                    line_items[deal_id] = [str(r["id"]) for r in li.get("results") or []]
            table.add(page)
            progress.page(len(results))
    if cfg.product_from_line_items:
        deals = {k: {"_line_item_ids": line_items[k]} for k in table.live_ids()}
        add_line_item_products(api, deals)
        table.set_line_item_products({k: d[LINE_ITEM_PRODUCT] for k, d in deals.items()})
    return table.finish(), listed


def _search_body(props: list[str], limit: int, filters: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "filterGroups": [{"filters": [{"propertyName": "hs_lastmodifieddate", "operator": op, "value": str(v)}
                                      for op, v in filters]}],
        "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
        "properties": props,
        "limit": limit,
    }


def search_changed(api: HubSpotApi, cfg: HubSpotSourceConfig, props: list[str], since: datetime,
                   signpost: datetime, progress: Progress) -> dict[str, dict]:
    """Deals with since <= hs_lastmodifieddate < signpost, deduplicated by id (last version wins).

    Keyset paging, sliced by time: every page is a fresh query from the last modification time
    seen (GTE; records sharing that time come again and are deduplicated). No query pages
    deep, so the 10,000-result cap is never reached, and a deal modified while we page (it
    leaves the window) cannot shift later deals past us as offset paging would. A full page
    that all shares one millisecond is read by offset within that millisecond.
    """
    found: dict[str, dict] = {}
    lo, hi = _ms(since), _ms(signpost)
    limit = cfg.search_page_size

    def take(results: list[dict]) -> None:
        for d in results:
            found[str(d["id"])] = _payload(d)
        progress.page(len(results), total=len(found))

    while lo < hi:
        resp = api.search(_search_body(props, limit, [("GTE", lo), ("LT", hi)]))
        results = resp.get("results") or []
        take(results)
        if not results or not next_after(resp):
            break
        last = _parse_ts((results[-1].get("properties") or {}).get("hs_lastmodifieddate"))
        if last is None:
            raise FatalAPIError("HubSpot search returned a deal without hs_lastmodifieddate; run with --full-refresh")
        if last > lo:
            lo = last
            continue
        same = _search_body(props, limit, [("EQ", lo)])
        fetched = 0

        def page(after: Any, body: dict = same) -> tuple[list[dict], Any]:
            r = api.search({**body, **({"after": after} if after else {})})
            return r.get("results") or [], next_after(r)

        for results in paginate(page):
            take(results)
            fetched += len(results)
            if fetched + limit > SEARCH_CAP:
                raise FatalAPIError(
                    f"HubSpot search: more than {SEARCH_CAP} deals share hs_lastmodifieddate "
                    f"{datetime.fromtimestamp(lo / 1000, UTC).isoformat()}; run with --full-refresh"
                )
        lo += 1
    return found


def archived_ids(api: HubSpotApi, cfg: HubSpotSourceConfig) -> set[str]:
    out: set[str] = set()
    for results in api.deals(["hs_object_id"], cfg.page_size, archived=True):
        out |= {str(d["id"]) for d in results}
    return out


def add_line_item_products(api: HubSpotApi, deals: dict[str, dict]) -> None:
    """Set LINE_ITEM_PRODUCT on each deal: the name of its largest line item (by amount)."""
    if not deals:
        return
    for deal_id, p in deals.items():
        if "_line_item_ids" not in p:
            p["_line_item_ids"] = api.deal_line_item_ids(deal_id)
    wanted = sorted({i for p in deals.values() for i in p["_line_item_ids"]})
    items = {str(li["id"]): li.get("properties") or {} for li in api.line_items(wanted)} if wanted else {}
    for p in deals.values():
        best: tuple[float, str] | None = None
        for i in p.pop("_line_item_ids"):
            props = items.get(i)
            if props and props.get("name"):
                amount = as_float(props.get("amount")) or 0.0
                if best is None or amount > best[0]:
                    best = (amount, str(props["name"]))
        p[LINE_ITEM_PRODUCT] = best[1] if best else None


def load_owners(api: HubSpotApi, wanted: set[str]) -> dict[str, tuple[str, str | None]]:
    """Owner id -> (name, primary team); archived owners are looked up only when needed."""
    out: dict[str, tuple[str, str | None]] = {}
    for archived in (False, True):
        if archived and not (wanted - set(out)):
            break
        for results in api.owners(archived):
            for o in results:
                name = " ".join(x for x in (o.get("firstName"), o.get("lastName")) if x).strip()
                teams = o.get("teams") or []
                team = next((t.get("name") for t in teams if t.get("primary")), None) or (
                    teams[0].get("name") if teams else None)
                out.setdefault(str(o["id"]), (name or o.get("email") or str(o["id"]), team))
    return out
