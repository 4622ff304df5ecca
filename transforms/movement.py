"""Pipeline movement (shared docs/metrics.md, "Pipeline movement"): how this period's pipeline
changed between the previous stored snapshot (D0) and as_of (D1), balanced to the cent.

`W` is the whole reporting period containing as_of. A deal is in scope at t when it is open at t
with its close_date at t in W; a missing amount counts as 0. Each deal in scope at D0 or D1
falls in exactly one category (the table of the spec); deals in scope at both with the same
amount are listed as `unchanged` (they are in start and end, in no category). Choices where the
spec leaves room:

- amounts are rounded to the cent per deal and summed as integer cents, so the balance
  `start + created + pulled_in + increased - decreased - won - lost - pushed_out - removed = end`
  holds exactly;
- `increased` / `decreased` values also carry the amount change of deals won, lost or pushed
  out (as the spec says); their deal counts are the deals of those categories only, so counts
  add up to the deals in scope at D0 or D1;
- an open deal at D1 without a close_date is outside W (pushed_out when it was in scope at D0);
- owner: at D1, or at D0 when the deal is absent at D1; no owner is "(no owner)".

The sheet ("Movement"): the team waterfall (category, sign, deals, value, and the chart's
helper columns), its balance check as a formula, the same per owner, then one line per deal
(which category, old and new amount and close date, its value and amount change, and what it
adds to start and end), so every total can be traced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from config.workbook import FormCell, FormTable, SheetData, SheetForm, WaterfallSpec
from transforms.history import to_days
from transforms.metrics import NO_OWNER

SHEET = "Movement"
CATEGORIES: tuple[str, ...] = ("created", "pulled_in", "increased", "decreased", "won", "lost", "pushed_out", "removed")
ROWS: tuple[str, ...] = ("start", *CATEGORIES, "end")
SIGN: dict[str, int] = {"created": 1, "pulled_in": 1, "increased": 1, "decreased": -1, "won": -1, "lost": -1,
                        "pushed_out": -1, "removed": -1}
LINE_ORDER: tuple[str, ...] = (*CATEGORIES, "unchanged")
LINE_COLUMNS = ["category", "row_id", "opportunity_id", "name", "owner", "status", "old_amount", "new_amount",
                "old_close_date", "new_close_date", "value", "amount_change", "start_value", "end_value"]
_LINE_FORMATS = {"old_amount": "currency", "new_amount": "currency", "old_close_date": "date",
                 "new_close_date": "date", "value": "currency", "amount_change": "currency",
                 "start_value": "currency", "end_value": "currency"}


@dataclass
class Movement:
    """The movement between `d0` and `d1` over W = `window` (first and last day).

    `totals`: scope (team | owner), key, category (ROWS order), deals, value (currency, >= 0);
    `lines`: one row per deal in scope at D0 or D1 (LINE_COLUMNS); `checks`: (scope, key) ->
    the balance in cents (0 = balanced)."""

    d0: date
    d1: date
    window: tuple[date, date]
    totals: pd.DataFrame
    lines: pd.DataFrame
    checks: dict[tuple[str, str], int]

    def value(self, category: str, scope: str = "team", key: str = "all") -> float:
        t = self.totals
        return float(t.loc[(t["scope"] == scope) & (t["key"] == key) & (t["category"] == category), "value"].iloc[0])

    def deals(self, category: str, scope: str = "team", key: str = "all") -> int:
        t = self.totals
        return int(t.loc[(t["scope"] == scope) & (t["key"] == key) & (t["category"] == category), "deals"].iloc[0])


def a1(row: int, col: int) -> str:
    """The A1 reference of a 0-based cell (absolute, so a copied formula keeps pointing at it)."""
    letters, n = "", col + 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(65 + r) + letters
    return f"${letters}${row + 1}"


def _cents(values: np.ndarray) -> np.ndarray:
    return np.round(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0) * 100).astype(np.int64)


def compute_movement(current: pd.DataFrame, previous: pd.DataFrame, d0: date, d1: date,
                     window: tuple[date, date], at: np.ndarray | None = None) -> Movement:
    """`current`: the deals at D1 (row_id, opportunity_id, name, owner, status at D1, amount,
    close_date, created_date); `previous`: the open deals of the snapshot at D0 (deal_id, owner,
    amount, close_date); `at`: per previous deal its position in `current` (-1: absent), when
    the caller has it."""
    w0, w1 = np.datetime64(window[0], "D"), np.datetime64(window[1], "D")
    if at is None:
        at = pd.Index(current["row_id"].astype(str).to_numpy(dtype=object)).get_indexer(
            previous["deal_id"].astype(str).to_numpy(dtype=object))
    old_close = to_days(previous["close_date"])
    in_w0 = (old_close >= w0) & (old_close <= w1)  # in scope at D0 (the snapshot holds open deals)
    new_close = to_days(current["close_date"])
    cur_in1 = (current["status"].to_numpy(dtype=object) == "open") & (new_close >= w0) & (new_close <= w1)
    old_of = np.full(len(current), -1, dtype=np.int64)  # per current deal: its previous row in scope at D0
    sel = in_w0 & (at >= 0)
    old_of[at[sel]] = np.flatnonzero(sel)
    ci = np.flatnonzero(cur_in1 | (old_of >= 0))  # current deals in scope at D0 or D1
    gi = np.flatnonzero(in_w0 & (at < 0))  # deals in scope at D0, absent at D1
    oi = old_of[ci]
    n_c, n_g = len(ci), len(gi)

    def both(cur_values: np.ndarray, gone_fill: object, dtype: object = object) -> np.ndarray:
        return np.concatenate([np.asarray(cur_values)[ci], np.full(n_g, gone_fill, dtype=dtype)])

    def old(values: np.ndarray, missing: object, dtype: object = object) -> np.ndarray:
        values = np.asarray(values)
        got = np.where(oi >= 0, values[np.where(oi >= 0, oi, 0)] if len(values) else missing, missing)
        return np.concatenate([got.astype(dtype), values[gi].astype(dtype)])

    nat = np.datetime64("NaT", "D")
    j = pd.DataFrame({
        "row_id": np.concatenate([current["row_id"].astype(str).to_numpy(dtype=object)[ci],
                                  previous["deal_id"].astype(str).to_numpy(dtype=object)[gi]]),
        "opportunity_id": both(current["opportunity_id"].to_numpy(dtype=object), None),
        "name": both(current["name"].to_numpy(dtype=object), None),
        "new_owner": both(current["owner"].to_numpy(dtype=object), None),
        "status": both(current["status"].to_numpy(dtype=object), None),
        "new_amount": both(current["amount"].to_numpy(dtype=float), np.nan, float),
        "new_close_date": both(new_close, nat, "datetime64[D]"),
        "created_date": both(to_days(current["created_date"]), nat, "datetime64[D]"),
        "old_owner": old(previous["owner"].to_numpy(dtype=object), None),
        "old_amount": old(previous["amount"].to_numpy(dtype=float), np.nan, float),
        "old_close_date": old(old_close, nat, "datetime64[D]"),
    })
    in0 = np.concatenate([oi >= 0, np.ones(n_g, dtype=bool)])
    here = np.concatenate([np.ones(n_c, dtype=bool), np.zeros(n_g, dtype=bool)])
    in1 = np.concatenate([cur_in1[ci], np.zeros(n_g, dtype=bool)])
    status = np.where(here, j["status"].to_numpy(dtype=object), "absent")
    a0, a1 = _cents(j["old_amount"].to_numpy()), _cents(j["new_amount"].to_numpy())
    created_after = j["created_date"].to_numpy(dtype="datetime64[D]") > np.datetime64(d0, "D")

    cat = np.full(len(j), "unchanged", dtype=object)
    only1 = in1 & ~in0
    cat[only1 & created_after] = "created"
    cat[only1 & ~created_after] = "pulled_in"
    stay = in0 & in1
    cat[stay & (a1 > a0)] = "increased"
    cat[stay & (a1 < a0)] = "decreased"
    out0 = in0 & ~in1
    cat[out0 & (status == "won")] = "won"
    cat[out0 & (status == "lost")] = "lost"
    cat[out0 & (status == "open")] = "pushed_out"
    cat[out0 & (status == "absent")] = "removed"

    change = np.where(in0 & here, a1 - a0, 0)
    has_change = in0 & here
    value = np.zeros(len(j), dtype=np.int64)
    plus = np.isin(cat, ["created", "pulled_in", "won", "lost", "pushed_out"])
    value[plus] = a1[plus]
    value[cat == "removed"] = a0[cat == "removed"]
    value[cat == "increased"] = change[cat == "increased"]
    value[cat == "decreased"] = -change[cat == "decreased"]
    start_c = np.where(in0, a0, 0)
    end_c = np.where(in1, a1, 0)

    owner = np.where(here, j["new_owner"].to_numpy(dtype=object), j["old_owner"].to_numpy(dtype=object))
    owner = np.where(pd.isna(owner), NO_OWNER, owner).astype(object)
    opp = j["opportunity_id"].to_numpy(dtype=object, copy=True)
    gone = np.flatnonzero(pd.isna(opp))
    opp[gone] = [str(r).split(":", 1)[-1] for r in j["row_id"].to_numpy(dtype=object)[gone]]

    order = pd.Index(LINE_ORDER).get_indexer(cat)
    lines = pd.DataFrame({
        "category": pd.Series(cat, dtype=object), "row_id": j["row_id"].astype(object),
        "opportunity_id": pd.Series(opp, dtype=object), "name": j["name"].astype(object).where(j["name"].notna(), None),
        "owner": pd.Series(owner, dtype=object), "status": pd.Series(status, dtype=object),
        "old_amount": j["old_amount"].to_numpy(dtype=float), "new_amount": j["new_amount"].to_numpy(dtype=float),
        "old_close_date": j["old_close_date"].to_numpy(dtype="datetime64[D]").astype("datetime64[ns]"),
        "new_close_date": j["new_close_date"].to_numpy(dtype="datetime64[D]").astype("datetime64[ns]"),
        "value": value / 100.0,
        "amount_change": np.where(has_change, change / 100.0, np.nan),
        "start_value": np.where(in0, start_c / 100.0, np.nan),
        "end_value": np.where(in1, end_c / 100.0, np.nan),
    })

    # per owner with integer sums per code (bincount: int64 exact below 2**53 cents); team = all codes
    codes, names = pd.factorize(owner, sort=True)
    # lines by category, then owner (within an owner: the data's order, then deals no longer in it)
    lines = lines.take(np.lexsort((codes, order))).reset_index(drop=True)
    k = len(names)

    def per_owner(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        if weights is None:
            return np.bincount(codes[mask], minlength=k).astype(np.int64)
        return np.bincount(codes[mask], weights=weights[mask].astype(float), minlength=k).round().astype(np.int64)

    deals = {"start": per_owner(in0), "end": per_owner(in1)}
    cents = {"start": per_owner(in0, start_c), "end": per_owner(in1, end_c)}
    for c in CATEGORIES:
        deals[c] = per_owner(cat == c)
        cents[c] = per_owner(cat == c, value)
    cents["increased"] = per_owner(has_change, np.maximum(change, 0))
    cents["decreased"] = per_owner(has_change, np.maximum(-change, 0))
    # one row per (scope, key) x ROWS: the team (all owners) first, then each owner
    d_mat = np.vstack([np.r_[deals[r].sum(), deals[r]] for r in ROWS]).T  # (1 + k) x rows
    v_mat = np.vstack([np.r_[cents[r].sum(), cents[r]] for r in ROWS]).T
    sign = np.array([1] + [SIGN[c] for c in CATEGORIES] + [-1], dtype=np.int64)
    balance = (v_mat * sign).sum(axis=1)
    keys = ["all", *[str(n) for n in names]]
    scopes = ["team"] + ["owner"] * k
    checks = {(sc, key): int(b) for sc, key, b in zip(scopes, keys, balance.tolist(), strict=True)}
    totals = pd.DataFrame({
        "scope": pd.Series(np.repeat(scopes, len(ROWS)), dtype=object),
        "key": pd.Series(np.repeat(np.array(keys, dtype=object), len(ROWS)), dtype=object),
        "category": pd.Series(np.tile(np.array(ROWS, dtype=object), 1 + k), dtype=object),
        "deals": d_mat.reshape(-1).astype(np.int64), "value": v_mat.reshape(-1) / 100.0})
    return Movement(d0, d1, window, totals, lines[LINE_COLUMNS], checks)


# ----------------------------------------------------------------------------- the sheet

_TEAM_HEADERS = ["category", "sign", "deals", "value", "chart: base", "chart: added", "chart: taken out",
                 "chart: pipeline", "chart: label"]
_CHART_LABELS = {"start": "Start", "created": "Created", "pulled_in": "Pulled in", "increased": "Increased",
                 "decreased": "Decreased", "won": "Won", "lost": "Lost", "pushed_out": "Pushed out",
                 "removed": "Removed", "end": "End"}  # the waterfall's bars in words; column A keeps metrics.md's names
_TEAM_TOP = 3  # header row of the team table


def movement_sheet(m: Movement | None, as_of: date, window: tuple[date, date], label: str) -> tuple[SheetData, WaterfallSpec | None]:
    """The Movement sheet and the Summary's waterfall of it (None without an earlier snapshot)."""
    if m is None:
        cells = [FormCell(0, 0, "Pipeline movement", style="title"),
                 FormCell(1, 0, f"No earlier snapshot of this report before {as_of.isoformat()}: there is nothing to "
                                "compare yet. The next run (or a backfill of earlier dates) shows how the pipeline moved.",
                          style="note")]
        return SheetData(SHEET, pd.DataFrame(), form=SheetForm(cells, widths={0: 18})), None
    cells: list[FormCell] = [
        FormCell(0, 0, f"Pipeline movement of {label} ({window[0].isoformat()} to {window[1].isoformat()}): "
                       f"from the snapshot of {m.d0.isoformat()} (D0) to {m.d1.isoformat()} (D1)", style="title"),
        FormCell(1, 0, "In scope: open deals with a close date in the period; missing amounts count as 0. Each deal is "
                       "in one category; increased / decreased also carry the amount change of deals won, lost or "
                       "pushed out. Every deal is listed below, with what it adds to start, end and its category.",
                 style="note"),
    ]
    team = m.totals[m.totals["scope"] == "team"].set_index("category")
    for j, h in enumerate(_TEAM_HEADERS):
        cells.append(FormCell(_TEAM_TOP, j, h, style="header"))
    running = 0.0
    first = _TEAM_TOP + 1
    value_refs: dict[str, str] = {}
    for i, cat in enumerate(ROWS):
        r = first + i
        v = float(team.loc[cat, "value"])
        sign = None if cat in ("start", "end") else ("+" if SIGN[cat] > 0 else "-")
        cells += [FormCell(r, 0, cat, style="bold" if sign is None else "text"), FormCell(r, 1, sign),
                  FormCell(r, 2, int(team.loc[cat, "deals"]), "int"), FormCell(r, 3, v, "currency")]
        value_refs[cat] = a1(r, 3)
        cells.append(FormCell(r, 8, _CHART_LABELS[cat]))
        if cat in ("start", "end"):
            cells.append(FormCell(r, 7, v, "currency"))
            running = v
        elif SIGN[cat] > 0:
            cells += [FormCell(r, 4, running, "currency"), FormCell(r, 5, v, "currency")]
            running += v
        else:
            running -= v
            cells += [FormCell(r, 4, running, "currency"), FormCell(r, 6, v, "currency")]
    last = first + len(ROWS) - 1
    check_row = last + 1
    formula = "=" + value_refs["start"] + "".join(
        ("+" if SIGN[c] > 0 else "-") + value_refs[c] for c in CATEGORIES) + "-" + value_refs["end"]
    team_check = m.checks["team", "all"] / 100.0
    cells += [FormCell(check_row, 0, "balance check", style="bold"),
              FormCell(check_row, 1, "start + added - taken out - end (0 = balanced)", style="note"),
              FormCell(check_row, 3, team_check, "currency", formula=formula, style="bold"),
              FormCell(check_row, 4, "balanced" if team_check == 0 else "NOT balanced",
                       formula=f'=IF(ROUND({a1(check_row, 3)},2)=0,"balanced","NOT balanced")',
                       style="bold")]
    tables = [FormTable("tblMovementTeam", _TEAM_TOP, 0, last, _TEAM_HEADERS)]

    owners = m.totals[m.totals["scope"] == "owner"]
    own_top = check_row + 3
    cells.append(FormCell(own_top - 1, 0, "By owner (owner at D1, or at D0 for deals no longer in the data)",
                          style="bold"))
    own_headers = ["owner"] + [f"{r}_{what}" for r in ROWS for what in ("deals", "value")] + ["check"]
    for j, h in enumerate(own_headers):
        cells.append(FormCell(own_top, j, h, style="header"))
    keys = list(dict.fromkeys(owners["key"]))
    n_deals = owners["deals"].to_numpy().reshape(-1, len(ROWS)).tolist()  # rows are key-major, ROWS order
    n_value = owners["value"].to_numpy().reshape(-1, len(ROWS)).tolist()
    for i, key in enumerate(keys):
        r = own_top + 1 + i
        cells.append(FormCell(r, 0, key))
        refs = {}
        for k, cat in enumerate(ROWS):
            cells += [FormCell(r, 1 + 2 * k, int(n_deals[i][k]), "int"),
                      FormCell(r, 2 + 2 * k, float(n_value[i][k]), "currency")]
            refs[cat] = a1(r, 2 + 2 * k)
        f = "=" + refs["start"] + "".join(("+" if SIGN[c] > 0 else "-") + refs[c] for c in CATEGORIES) + "-" + refs["end"]
        cells.append(FormCell(r, len(own_headers) - 1, m.checks["owner", key] / 100.0, "currency", formula=f))
    tables.append(FormTable("tblMovementOwners", own_top, 0, own_top + max(len(keys), 1), own_headers))
    lines_title = own_top + max(len(keys), 1) + 2
    cells.append(FormCell(lines_title, 0, f"Deals ({len(m.lines)}): one line per deal in scope at D0 or D1", style="bold"))
    form = SheetForm(cells, tables, widths={0: 16, **{j: 16 for j in range(1, len(own_headers))}},
                     table_name="tblMovementDeals")
    chart = WaterfallSpec(f"{label} pipeline movement since {m.d0.isoformat()}", SHEET, first, last,
                          8, 4, 5, 6, 7)
    return SheetData(SHEET, m.lines, dict(_LINE_FORMATS), form=form), chart


def summary_line(m: Movement | None, as_of: date) -> str:
    if m is None:
        return f"Movement: no earlier snapshot of this report before {as_of.isoformat()}."
    t = {c: m.value(c) for c in ROWS}
    ok = "balanced" if m.checks["team", "all"] == 0 else "NOT balanced"
    return (f"Movement since {m.d0.isoformat()}: this period's pipeline {t['start']:,.0f} -> {t['end']:,.0f} "
            f"(+{t['created'] + t['pulled_in'] + t['increased']:,.0f} added, "
            f"-{t['decreased'] + t['won'] + t['lost'] + t['pushed_out'] + t['removed']:,.0f} taken out; {ok}; "
            "the Movement sheet has every deal).")
