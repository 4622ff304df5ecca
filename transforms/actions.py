"""The Actions sheet ("Deals to act on", shared docs/metrics.md): one row per open deal with a
deal-scope flag, its flags in words, one next step made specific by the evidence, and a link.

Rows are sorted by the deal's highest severity, then amount (largest first; a missing amount
last), then close date and row id. The evidence comes from `flags.deal_check_masks` over the
flagged deals only, so the words always agree with the Flags sheet.

The next step is the one that unblocks the deal first: a deal nobody owns needs an owner; then a
close date already passed (long past and quiet: close it lost); then a promised follow-up not kept; then a deal stalled in its stage;
then one that is not qualified; then one much older than the sales cycle; then one whose close
date keeps being pushed; then missing amount or close date; then no recent activity.
"""

from __future__ import annotations

import re
import string
from datetime import date
from urllib.parse import quote

import numpy as np
import pandas as pd

from config.models import AppConfig
from config.schema import BANT_FIELDS, FIELD_NAMES, SOURCE_COLUMN
from config.workbook import ColumnFormat, SheetData
from transforms.flags import DEAL_CHECKS, SEVERITY_ORDER, deal_check_masks, format_distinct

ACTIONS_SHEET = "Actions"
ACTION_COLUMNS = ["severity", "opportunity_id", "name", "owner", "stage", "amount", "close_date", "days_in_stage",
                  "flags", "next_step", "record_url"]
ACTION_FORMATS: dict[str, ColumnFormat] = {"amount": "currency_whole", "close_date": "date", "days_in_stage": "int",
                                           "record_url": "url"}
# the order the flags are listed in, and the order that picks the next step
FLAG_ORDER = ("past_due", "overdue_follow_up", "stalled", "unqualified", "aged", "pushed_repeatedly", "missing_fields",
              "no_activity")
STEP_ORDER = ("no_owner", "past_due", "overdue_follow_up", "stalled", "unqualified", "aged", "pushed_repeatedly",
              "missing_fields", "no_activity")
_MISSING = ("amount", "close date", "owner")
DEAD_PAST_DUE_DAYS = 90  # past due this long and idle past the activity limit: the step is to close it
_SAFE_URL_VALUE = re.compile(r"^[A-Za-z0-9._~-]*$")


def _days(k: int) -> str:
    return "1 day" if k == 1 else f"{k:,} days"


def _times(k: int) -> str:
    return "once" if k == 1 else f"{k:,} times"


def _iso(day: int) -> str:
    return str(np.datetime64(day, "D"))


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _listed(bits: int, names: tuple[str, ...]) -> str:
    return ", ".join(n for i, n in enumerate(names) if bits >> i & 1)


def actions_frame(deals: pd.DataFrame, deal_bits: np.ndarray, cfg: AppConfig, as_of: date,
                  avg_cycle: float | None) -> pd.DataFrame:
    """ACTION_COLUMNS for every deal with a deal-scope flag (`deal_bits` from compute_flags)."""
    rows = np.flatnonzero(deal_bits != 0)
    sub = deals.iloc[rows].reset_index(drop=True)
    bits = deal_bits[rows]
    n = len(sub)
    fired = {check: (bits >> i & 1).astype(bool) for i, (check, _, _) in enumerate(DEAL_CHECKS)}
    masks = deal_check_masks(sub, cfg, as_of, avg_cycle)
    stages = cfg.pipeline.stages
    stage_names = [s.name for s in stages] + [""]
    code = sub["_stage_code"].to_numpy()
    amount = sub["amount"].to_numpy(dtype=float)
    missing = (np.isnan(amount).astype(np.int64) + 2 * sub["close_date"].isna().to_numpy().astype(np.int64)
               + 4 * sub["owner"].isna().to_numpy().astype(np.int64))
    score = masks["unqualified"][1].astype(np.int64)
    bant_missing = sum((~sub[f].fillna(False).to_numpy(dtype=bool)).astype(np.int64) << i
                       for i, f in enumerate(BANT_FIELDS))

    def ints(check: str, which: int = 1) -> np.ndarray:
        return np.nan_to_num(masks[check][which]).astype(np.int64)

    close_day = np.where(sub["close_date"].isna(), 0, sub["close_date"].to_numpy(dtype="datetime64[D]").astype(np.int64))
    next_day = np.where(sub["next_step_date"].isna(), 0,
                        sub["next_step_date"].to_numpy(dtype="datetime64[D]").astype(np.int64))
    limit = np.nan_to_num(masks["aged"][2])
    t = cfg.targets
    min_score = cfg.pipeline.qualification.min_score
    words = {  # check -> (words in the flags column, the next step)
        "past_due": (lambda k: f"past its close date by {_days(k)}", (ints("past_due"),),
                     lambda d, k: f"Close date {_iso(d)} passed {_days(k)} ago: set a new date or close it lost.",
                     (close_day, ints("past_due"))),
        "overdue_follow_up": (lambda k: f"follow-up {_days(k)} overdue", (ints("overdue_follow_up"),),
                              lambda d, k: f"Follow-up promised for {_iso(d)} is {_days(k)} late: do it now or agree "
                                           "a new date with the buyer.", (next_day, ints("overdue_follow_up"))),
        "stalled": (lambda k, c: f"{_days(k)} in {stage_names[c]} (limit {stages[c].max_days})",
                    (ints("stalled"), code),
                    lambda k, c: f"{_days(k)} in {stage_names[c]} (limit {stages[c].max_days}): agree the step that "
                                 "moves it forward, or close it lost.", (ints("stalled"), code)),
        "unqualified": (lambda s: f"BANT {s} of 4 (minimum {min_score})", (score,),
                        lambda s, b, c: f"Only {s} of 4 BANT criteria met in {stage_names[c]} (missing: "
                                        f"{_listed(b, BANT_FIELDS)}): requalify with the buyer or remove the deal.",
                        (score, bant_missing, code)),
        "aged": (lambda k, lim: f"{_days(k)} old (limit {lim:,})", (ints("aged"), limit.astype(np.int64)),
                 lambda k: f"Open {_days(k)}, over {t.max_age_factor:g} x the {avg_cycle or 0:.0f}-day sales cycle: "
                           "decide whether it will buy; if not, close it lost.", (ints("aged"),)),
        "pushed_repeatedly": (lambda k: f"close date pushed {_times(k)} (limit {t.max_pushes})",
                              (ints("pushed_repeatedly"),),
                              lambda k: f"Close date pushed out {_times(k)}: agree a date with the buyer and what must "
                                        "happen by then, or close it lost.", (ints("pushed_repeatedly"),)),
        "missing_fields": (lambda b: f"no {_listed(b, _MISSING)}", (missing,),
                           lambda b: f"Fill in the {_listed(b, _MISSING)} in the CRM so the forecast can count it.",
                           (missing,)),
        "no_activity": (lambda k: f"no activity for {_days(k)}", (ints("no_activity"),),
                        lambda k: f"No activity for {_days(k)}: contact the buyer this week.", (ints("no_activity"),)),
    }

    parts = np.full((n, len(FLAG_ORDER)), "", dtype=object)  # per deal, the words of each of its flags
    empty = np.ones(n, dtype=bool)  # no flag listed yet: the next one starts the text, capitalised
    for k, check in enumerate(FLAG_ORDER):
        m = fired[check]
        if not m.any():
            continue
        fmt, cols = words[check][0], words[check][1]
        first, more = m & empty, m & ~empty
        if first.any():
            parts[first, k] = format_distinct(lambda *a, f=fmt: _capitalised(f(*a)), *(c[first] for c in cols))
        if more.any():
            parts[more, k] = format_distinct(lambda *a, f=fmt: "; " + f(*a), *(c[more] for c in cols))
        empty &= ~m
    flag_text = _joined_rows(parts)

    step = np.full(n, None, dtype=object)
    unset = np.ones(n, dtype=bool)
    no_owner = fired["missing_fields"] & (missing >> 2 & 1).astype(bool)
    others = missing & 3
    if no_owner.any():
        step[no_owner] = format_distinct(lambda b: "Assign an owner: nobody is responsible for this deal"
                                         + (f" (also fill in the {_listed(b, _MISSING)})." if b else "."),
                                         others[no_owner])
        unset &= ~no_owner
    # long past its date and long quiet: most likely dead
    dead = fired["past_due"] & fired["no_activity"] & unset & (ints("past_due") > DEAD_PAST_DUE_DAYS)
    if dead.any():
        # two parts, each formatted once per distinct number of days (pairs are nearly all distinct)
        step[dead] = (format_distinct(lambda q: f"No activity for {_days(q)} and the close date passed ",
                                      ints("no_activity")[dead])
                      + format_distinct(lambda k: f"{_days(k)} ago: close it lost, or set a new date if the buyer is "
                                        "still there.", ints("past_due")[dead]))
        unset &= ~dead
    for check in STEP_ORDER[1:]:
        m = fired[check] & unset
        if m.any():
            fmt, cols = words[check][2], words[check][3]
            step[m] = format_distinct(fmt, *(c[m] for c in cols))
            unset &= ~m

    rank = np.full(n, len(SEVERITY_ORDER), dtype=np.int64)
    for check, _, sev in DEAL_CHECKS:
        rank = np.where(fired[check], np.minimum(rank, SEVERITY_ORDER.index(sev)), rank)
    order = _action_order(rank, -np.nan_to_num(amount, nan=-1.0),
                          np.where(sub["close_date"].isna().to_numpy(), np.iinfo(np.int64).max, close_day),
                          sub["row_id"].to_numpy(dtype=object))
    out = pd.DataFrame({
        "severity": pd.Series(np.array(SEVERITY_ORDER + ("",), dtype=object)[rank], dtype=object),
        **{c: sub[c].astype(object).where(sub[c].notna(), None) for c in ("opportunity_id", "name", "owner", "stage")},
        "amount": amount,
        "close_date": pd.to_datetime(sub["close_date"]).astype("datetime64[ns]"),
        "days_in_stage": sub["days_in_stage"].to_numpy(dtype=float),
        "flags": pd.Series(flag_text, dtype=object),
        "next_step": pd.Series(step, dtype=object),
        "record_url": _links(sub, cfg),
    })
    return out.iloc[order].reset_index(drop=True)


def _joined_rows(parts: np.ndarray) -> np.ndarray:
    """Each row of a 2-D array of text joined, in one join and one split (a NUL in the text: row by row)."""
    n = len(parts)
    grid = np.empty((n, parts.shape[1] + 1), dtype=object)
    grid[:, :-1] = parts
    grid[:, -1] = "\x00"
    texts = "".join(grid.ravel().tolist()).split("\x00")
    if len(texts) != n + 1:
        texts = ["".join(row) for row in parts.tolist()]
    return np.array(texts[:n], dtype=object)


def _action_order(rank: np.ndarray, neg_amount: np.ndarray, close: np.ndarray, row_id: np.ndarray) -> np.ndarray:
    """The stable order by (rank, neg_amount, close, str(row_id)); row ids (text) are compared only
    within runs that tie on the numbers, which are few."""
    order = np.lexsort((close, neg_amount, rank))
    if len(order) < 2:
        return order
    r, a, c = rank[order], neg_amount[order], close[order]
    same = (r[1:] == r[:-1]) & (a[1:] == a[:-1]) & (c[1:] == c[:-1])
    if not same.any():
        return order
    edges = np.diff(np.concatenate(([0], same.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        run = order[lo:hi]  # ascending positions: a stable sort keeps them for equal ids
        order[lo:hi] = run[np.argsort(row_id[run].astype(str), kind="stable")]
    return order


def _links(sub: pd.DataFrame, cfg: AppConfig) -> pd.Series:
    filled = fill_record_urls(sub, cfg)
    if filled is not None:
        return filled.reset_index(drop=True)
    if "record_url" in sub.columns:
        return sub["record_url"].astype(object).where(sub["record_url"].notna(), None).reset_index(drop=True)
    return pd.Series([None] * len(sub), dtype=object)


def actions_sheet(frame: pd.DataFrame) -> SheetData:
    return SheetData(ACTIONS_SHEET, frame, dict(ACTION_FORMATS), highlight="severity",
                     widths={"name": 30, "owner": 13, "stage": 15, "flags": 44, "next_step": 56, "record_url": 40},
                     wrap={"flags", "next_step"},
                     notes=["One row per open deal with a deal-scope flag, most severe first, then the largest "
                            "amount. Team, owner, stage and product flags are on Flags."])


# ----------------------------------------------------------------------------- record links


def record_url_template(src: object) -> str | None:
    """A source's `record_url_template`; for Salesforce with a My Domain URL, the Lightning record page."""
    template = getattr(src, "record_url_template", None)
    if template:
        return template
    domain = getattr(src, "domain", None)
    if getattr(src, "type", None) == "salesforce" and domain:
        return domain.rstrip("/") + "/lightning/r/Opportunity/{opportunity_id}/view"
    return None


def template_fields(template: str) -> list[str]:
    """The `{field}` names of a template (a ValueError for a malformed one)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def _quoted(values: pd.Series) -> np.ndarray:
    """Each value as URL path text (percent-encoded where needed); missing -> None."""
    text = values.astype(object).where(values.notna(), None)
    codes, uniques = pd.factorize(text, use_na_sentinel=True)
    out = np.array([u if _SAFE_URL_VALUE.match(str(u)) else quote(str(u), safe="") for u in uniques.tolist()] + [None],
                   dtype=object)
    return out[codes]


def fill_record_urls(deals: pd.DataFrame, cfg: AppConfig) -> pd.Series | None:
    """`record_url` where the source gave one, else from its source's template (None: nothing to
    fill, the column stays as it is). A field of the template that is empty leaves the URL empty."""
    templates = {s.name: t for s in cfg.sources if (t := record_url_template(s))}
    if not templates or deals.empty:
        return None
    given = (deals["record_url"].astype(object) if "record_url" in deals.columns
             else pd.Series([None] * len(deals), index=deals.index, dtype=object))
    out = given.where(given.notna(), None).to_numpy(dtype=object).copy()
    source = deals[SOURCE_COLUMN].to_numpy(dtype=object)
    for name, template in templates.items():
        rows = np.flatnonzero((source == name) & pd.isna(out))
        if not len(rows):
            continue
        url = np.full(len(rows), "", dtype=object)
        ok = np.ones(len(rows), dtype=bool)
        for literal, fld, _, _ in string.Formatter().parse(template):
            url = url + literal
            if fld is not None and fld in FIELD_NAMES and fld in deals.columns:
                vals = _quoted(deals[fld].iloc[rows])
                ok &= ~pd.isna(vals)
                url = url + np.where(pd.isna(vals), "", vals)
        out[rows[ok]] = url[ok]
    return pd.Series(out, index=deals.index, dtype=object)
