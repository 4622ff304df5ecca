"""Reading HubSpot deals: pipelines and stages, the full listing, the incremental search, archived
ids, line-item products and owners. The calls go through `client.HubSpotApi`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
# HubSpot's two namings of a stage's "Date entered" property; a portal has one or the other
# (https://knowledge.hubspot.com/properties/stage-calculated-properties; issue 19).
ENTERED_PREFIXES = ("hs_date_entered_", "hs_v2_date_entered_")


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
    """The account's pipelines (id -> label), their stages (id -> Stage), the selected pipeline ids,
    each stage's entry-time property (stage id -> property name) and what the run should say about them."""

    pipelines: dict[str, str]
    stages: dict[str, Stage]
    selected: set[str]
    entered: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def read_scope(api: HubSpotApi, cfg: HubSpotSourceConfig) -> Scope:
    """GET the deal pipelines and the deal property names; select the pipelines of the `pipelines:`
    filter; name each stage's entry-time property as the portal has it."""
    body = api.pipelines()
    pipelines, stages = parse_pipelines(body, cfg.stage_map)
    selected = select_pipelines(cfg, pipelines)
    names = api.deal_property_names()
    entered = {sid: entered_property(cfg, sid, names) for sid in stages}
    return Scope(pipelines, stages, selected, entered, tuple(open_by_default(body, selected)))


def entered_property(cfg: HubSpotSourceConfig, stage_id: str, names: set[str]) -> str:
    """The stage's entry-time property: `stage_entered_prefix` + id when the portal has it, else the
    other HubSpot naming it has (hs_date_entered_ / hs_v2_date_entered_), else the configured name."""
    for prefix in dict.fromkeys((cfg.stage_entered_prefix, *ENTERED_PREFIXES)):
        if f"{prefix}{stage_id}" in names:
            return f"{prefix}{stage_id}"
    return f"{cfg.stage_entered_prefix}{stage_id}"


def open_by_default(body: dict, selected: set[str]) -> list[str]:
    """A note naming the selected pipelines' stages without `metadata.isClosed`: parse_pipelines
    counts them as open."""
    missing = [f"{p.get('label') or p['id']} / {s.get('label') or s['id']}"
               for p in body.get("results") or [] if str(p["id"]) in selected
               for s in p.get("stages") or [] if "isClosed" not in (s.get("metadata") or {})]
    if not missing:
        return []
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return [f"{len(missing)} HubSpot deal stage(s) without isClosed metadata are counted as open: "
            f"{', '.join(missing[:10])}{more}"]


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
    were listed in all. The properties that do not fit in the list URL are read per page by batch
    read. Products come from line items: each kept deal's largest line item."""
    table = DealTable()
    listed = 0
    fit = api.fit_in_url(props, cfg.page_size)
    in_url, by_batch = props[:fit], props[fit:]
    with gc_paused():  # page dicts are acyclic garbage; the table holds few containers
        for results in api.deals(in_url, cfg.page_size):
            listed += len(results)
            deals = [(str(d["id"]), d.get("properties") or {}) for d in results]
            if by_batch:
                deals = _complete(api, deals, by_batch, selected if "pipeline" in in_url else None)
            page: list[tuple[str, dict]] = []
            for deal_id, p in deals:
                if (p.get("pipeline") or "") not in selected:
                    table.remove(deal_id)  # a deal listed again after it moved out of the selection
                    continue
                page.append((deal_id, p))
            table.add(page)
            progress.page(len(results))
    if cfg.product_from_line_items:
        held: dict[str, dict] = {k: {} for k in table.live_ids()}
        add_line_item_products(api, held)
        table.set_line_item_products({k: d[LINE_ITEM_PRODUCT] for k, d in held.items()})
    return table.finish(), listed


def _complete(api: HubSpotApi, deals: list[tuple[str, dict]], names: list[str],
              selected: set[str] | None) -> list[tuple[str, dict]]:
    """A list page's deals with `names` added by batch read (only for the deals of the `selected`
    pipelines, when the page says their pipeline). A deal the batch read no longer finds (archived
    since it was listed) is left out; one outside the selection is kept as listed."""
    wanted = [k for k, p in deals if selected is None or (p.get("pipeline") or "") in selected]
    more = api.deal_properties(wanted, names) if wanted else {}
    asked = set(wanted)
    return [(k, {**p, **more[k]}) if k in more else (k, p) for k, p in deals if k in more or k not in asked]


def _search_body(props: list[str], limit: int, filters: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "filterGroups": [{"filters": [{"propertyName": "hs_lastmodifieddate", "operator": op, "value": str(v)}
                                      for op, v in filters]}],
        "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
        "properties": props,
        "limit": limit,
    }


def search_changed(api: HubSpotApi, cfg: HubSpotSourceConfig, props: list[str], since: datetime,
                   signpost: datetime, progress: Progress,
                   seen: Callable[[dict[str, dict]], None] | None = None) -> dict[str, dict]:
    """Deals with since <= hs_lastmodifieddate < signpost, deduplicated by id (last version wins);
    `seen` gets each page's deals as they come.

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
        page = {str(d["id"]): _payload(d) for d in results}
        found.update(page)
        progress.page(len(results), total=len(found))
        if seen is not None and page:
            seen(page)

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
    """Set LINE_ITEM_PRODUCT on each deal: the name of its largest line item (by amount). The line
    items come from the v4 associations batch read (1,000 deals a request, every page of each)."""
    if not deals:
        return
    associated = api.line_item_ids(list(deals))
    wanted = sorted({i for ids in associated.values() for i in ids})
    items = {str(li["id"]): li.get("properties") or {} for li in api.line_items(wanted)} if wanted else {}
    for deal_id, p in deals.items():
        best: tuple[float, str] | None = None
        for i in associated.get(deal_id, ()):
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
