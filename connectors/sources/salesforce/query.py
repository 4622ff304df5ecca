"""Salesforce SOQL: the fields read, the query, its window on SystemModstamp and the cursor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from config.models import SalesforceSourceConfig
from config.soql import soql_literal, where_clause
from connectors.sources.incremental import CursorFormat
from connectors.sources.salesforce.client import SalesforceAPI

BASE_FIELDS: tuple[str, ...] = (
    "Id", "Name", "AccountId", "Account.Name", "Amount", "StageName", "Probability", "CloseDate",
    "CreatedDate", "SystemModstamp", "IsClosed", "IsWon", "Owner.Name", "Type", "LeadSource",
    "LastActivityDate", "LastStageChangeDate", "ForecastCategoryName",
)

ID_BATCH = 200  # ids per `IN (...)` query: keeps the GET URL well under Salesforce's 16 KB limit
# Deleted records stay in the Recycle Bin (and visible to queryAll) for about 15 days, then are
# purged (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_queryall.htm):
# a window starting longer ago than this may have missed deletions, so the ids are reconciled.
RECYCLE_BIN_DAYS = 14
# What the stage history read selects from OpportunityHistory: each row holds the values after a
# change of Amount, Probability, StageName or CloseDate (Salesforce Object Reference,
# "OpportunityHistory"; api-contracts.md 3.4), so one query gives the stage entries and the close
# date / amount history (issue 22: slippage).
OPPORTUNITY_HISTORY_SOQL = ("SELECT OpportunityId, StageName, CreatedDate, CloseDate, Amount FROM OpportunityHistory"
                            " WHERE OpportunityId IN ({ids}) ORDER BY OpportunityId, CreatedDate")


def select_fields(cfg: SalesforceSourceConfig) -> list[str]:
    fields = list(BASE_FIELDS)
    if cfg.currency_rates != "none":  # CurrencyIsoCode exists in multi-currency orgs only
        fields.append("CurrencyIsoCode")
    if cfg.next_step_field and cfg.next_step_field not in fields:
        fields.append(cfg.next_step_field)
    opp_product = opportunity_product_field(cfg)
    if opp_product and opp_product not in fields:
        fields.append(opp_product)
    return fields


def opportunity_product_field(cfg: SalesforceSourceConfig) -> str | None:
    """`Opportunity.X` reads the product from the opportunity itself; anything else is a Product2 field."""
    pf = cfg.product_field
    return pf.split(".", 1)[1] if pf and pf.startswith("Opportunity.") else None


def line_item_product_field(cfg: SalesforceSourceConfig) -> str | None:
    pf = cfg.product_field
    if not pf or pf.startswith("Opportunity."):
        return None
    return pf if pf.startswith("Product2.") else f"Product2.{pf}"


def opportunity_soql(fields: Iterable[str], *conditions: str | None) -> str:
    conds = [c for c in conditions if c]
    where = " WHERE " + " AND ".join(conds) if conds else ""
    return f"SELECT {', '.join(fields)} FROM Opportunity{where}"


def window(since: datetime, signpost: datetime) -> str:
    return f"SystemModstamp >= {soql_literal(since)} AND SystemModstamp < {soql_literal(signpost)}"


def query_fingerprint(cfg: SalesforceSourceConfig) -> str:
    """Changes when the stored records would no longer match the query (fields, where, product)."""
    shape = json.dumps([select_fields(cfg), where_clause(cfg.where), cfg.product_field], sort_keys=True)
    return hashlib.sha256(shape.encode()).hexdigest()[:12]


def make_cursor(signpost: datetime, fingerprint: str) -> str:
    return f"{soql_literal(signpost)};q={fingerprint}"


def parse_cursor(cursor: str | None) -> tuple[datetime | None, str | None]:
    """(signpost, fingerprint) of `<signpost>;q=<fingerprint>[;r=<last reconciled>]`."""
    if not cursor:
        return None, None
    stamp, _, rest = cursor.partition(";q=")
    when = _stamp(stamp)
    if when is None:
        return None, None
    return when, rest.split(";", 1)[0] or None


def reconciled_at(cursor: str | None) -> datetime | None:
    """When the stored ids were last compared with the org's (`;r=` of the cursor); None: never
    (or a cursor written before ids were reconciled)."""
    _, _, stamp = (cursor or "").partition(";r=")
    return _stamp(stamp.split(";", 1)[0]) if stamp else None


def with_reconciled(cursor: str, when: datetime | None) -> str:
    """The cursor with the time the ids were last reconciled."""
    return f"{cursor};r={soql_literal(when)}" if when else cursor


def _stamp(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


CURSOR = CursorFormat(make_cursor, parse_cursor)


def by_ids(api: SalesforceAPI, template: str, ids: list[str]) -> Iterator[dict]:
    for i in range(0, len(ids), ID_BATCH):
        literal = ", ".join(soql_literal(x) for x in ids[i:i + ID_BATCH])
        for page in api.query(template.replace("{ids}", literal)):
            yield from page


def current_ids(api: SalesforceAPI, user_where: str | None, page: int) -> set[str]:
    """Every opportunity Id the org has now (and `where` matches): keyset pages over Id,
    `WHERE Id > :last ORDER BY Id LIMIT <page>`, one query (one batch) each: no query locator is
    held open however many ids there are."""
    out: set[str] = set()
    last: str | None = None
    while True:
        conds = [f"({user_where})" if user_where else None, f"Id > {soql_literal(last)}" if last else None]
        soql = f"{opportunity_soql(['Id'], *conds)} ORDER BY Id LIMIT {page}"
        got = [str(r["Id"]) for rows in api.query(soql) for r in rows]
        out.update(got)
        if len(got) < page or got[-1] == last:
            return out
        last = got[-1]


def gone_ids(api: SalesforceAPI, since: datetime, signpost: datetime, user_where: str | None) -> set[str]:
    """Ids deleted in the window (queryAll sees IsDeleted rows). With a `where`, every id changed
    in the window: the caller drops those that no longer match it."""
    win = window(since, signpost)
    if user_where:
        soql = f"SELECT Id FROM Opportunity WHERE {win}"
    else:
        soql = f"SELECT Id FROM Opportunity WHERE IsDeleted = true AND {win}"
    return {r["Id"] for page in api.query(soql, include_deleted=True) for r in page}
