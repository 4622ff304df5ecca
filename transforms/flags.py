"""The eight pipeline mistakes of shared docs/metrics.md as checks ("Flags" sheet).

`compute_flags` returns the Flags table (rule, mistake, check, severity, scope, key,
opportunity_id, name, owner, stage, amount, value, threshold, message, advice; sorted by
severity, then rule, a check's deal rows by amount, largest first) and, per deal, the
comma-separated names of the deal checks that fired. Strict inequalities are strict.
Deal-scope rows use the row id (`source:opportunity_id`) as `key` and carry the deal's name,
owner, stage and amount; other rows leave those empty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd

from config.models import AppConfig
from transforms.history import to_days
from transforms.labels import MISTAKES
from transforms.metrics import NO_OWNER
from transforms.periods import Period

FLAG_COLUMNS = ["rule", "mistake", "check", "severity", "scope", "key", "opportunity_id", "name", "owner", "stage",
                "amount", "value", "threshold", "message", "advice"]
_DEAL_ONLY = ("opportunity_id", "name", "owner", "stage", "amount")
SEVERITY_ORDER = ("high", "medium", "low")

ADVICE: dict[str, str] = {
    "M1": "Block time for prospecting every day or week as a high-priority task and keep a daily new-pipeline target so the pipeline never shrinks.",
    "M2": "Judge quality, not volume: requalify with BANT (or ask whether there is a real problem the customer agrees on), else remove the deal.",
    "M3": "Set a time threshold per stage, find what holds deals back, and spend time every day moving deals forward, not only adding new ones.",
    "M4": "Let deals that will not buy go, use lead scoring, and keep every promised follow-up on time.",
    "M5": "Keep the fields complete and the sources fresh: decisions need a trustworthy dashboard.",
    "M6": "Keep serving and expanding current customers (loyalty, referrals, upsell): they cost less to keep than new ones cost to win.",
    "M7": "Track the metrics that drive revenue (deal size, cycle length, conversion, win rate, velocity, CAC, CLV, growth), not volume alone.",
    "M8": "Decide which products are primary and set how many leads to create and close per product category.",
}

# (check, rule, severity) of the deal-scope checks, in the order the `flags` column lists them
DEAL_CHECKS: tuple[tuple[str, str, str], ...] = (
    ("unqualified", "M2", "medium"),
    ("stalled", "M3", "medium"),
    ("past_due", "M4", "high"),
    ("aged", "M4", "medium"),
    ("overdue_follow_up", "M4", "medium"),
    ("no_activity", "M4", "low"),
    ("missing_fields", "M5", "medium"),
    ("pushed_repeatedly", "M4", "medium"),  # needs deals["push_count"] (transforms.slippage)
)


@dataclass
class FlagResult:
    flags: pd.DataFrame
    deal_flags: pd.Series  # per deal (index of `deals`): comma-separated check names, "" if none
    deal_bits: np.ndarray  # per deal: bit i set when DEAL_CHECKS[i] fired
    counts: pd.DataFrame  # rule, check, severity, count (same order as the flags)


def _r(x: float) -> float:
    """Shares compared at 1e-9: 0.65 - 0.5 must not exceed a 0.15 tolerance by float noise."""
    return round(x, 9)


def _num(x: float) -> str:
    return f"{x:,.2f}".rstrip("0").rstrip(".") if x == x else "empty"


def _money(x: float, cfg: AppConfig) -> str:
    from transforms.labels import currency_symbol

    sym = currency_symbol(cfg.inputs.currency)
    return f"{sym}{x:,.0f}" if abs(x) >= 1000 else f"{sym}{_num(x)}"


def _team_row(rule: str, check: str, severity: str, scope: str, key: str, value: float | None,
              threshold: float | None, message: str) -> dict:
    return {"rule": rule, "mistake": MISTAKES[rule], "check": check, "severity": severity, "scope": scope, "key": key,
            **dict.fromkeys(_DEAL_ONLY), "value": value, "threshold": threshold, "message": message,
            "advice": ADVICE[rule]}


def _messages(ids: np.ndarray, fmt: Callable[..., str], *cols: np.ndarray) -> np.ndarray:
    """`id + fmt(*values)` per row, formatting each distinct combination of int `cols` once."""
    if len(ids) == 0:
        return np.zeros(0, dtype=object)
    return ids + (format_distinct(fmt, *cols) if cols else fmt())


def format_distinct(fmt: Callable[..., str], *cols: np.ndarray) -> np.ndarray:
    """`fmt(*values)` per row of the int `cols` (at least one), each distinct combination formatted once."""
    n = len(cols[0])
    if n == 0:
        return np.zeros(0, dtype=object)
    key = np.zeros(n, dtype=np.int64)
    span = 1
    for c in cols:
        lo, hi = int(c.min()), int(c.max())
        key = key * (hi - lo + 1) + (c - lo)
        span *= hi - lo + 1
    if span <= 4 * n + 1024:  # dense keys: O(n) instead of sorting
        first_at = np.full(span, n, dtype=np.int64)
        first_at[key] = np.arange(n)  # any row of a key will do: they share every value
        present = np.flatnonzero(first_at < n)
        rank = np.zeros(span, dtype=np.int64)
        rank[present] = np.arange(len(present))
        first, inv = first_at[present], rank[key]
    else:
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    return np.array([fmt(*(int(c[i]) for c in cols)) for i in first], dtype=object)[inv]


def _iso(days: int) -> str:
    return str(np.datetime64(days, "D"))


def deal_check_masks(deals: pd.DataFrame, cfg: AppConfig, as_of: date, avg_cycle: float | None,
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]]:
    """check -> (mask, value, threshold, messages(rows)) of the deal checks, over all deals; `rows`
    is a mask or an array of row positions."""
    t = cfg.targets
    stages = cfg.pipeline.stages
    names = [s.name for s in stages] + [""]
    day = np.datetime64(as_of, "D")
    n = len(deals)
    is_open = deals["status"].to_numpy(dtype=object) == "open"
    code = deals["_stage_code"].to_numpy()
    ids = deals["opportunity_id"].to_numpy(dtype=object)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]] = {}

    def maker(fmt: Callable[..., str], *cols: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda m: _messages(ids[m], fmt, *(c[m] for c in cols))

    def days_between(a: np.ndarray) -> np.ndarray:
        return (day - a).astype("timedelta64[D]").astype(float)

    # M2: open, in a stage after the qualification stage, BANT score < min_score
    q_index = [s.name for s in stages].index(cfg.pipeline.qualification_stage)
    score = sum(deals[f].fillna(False).to_numpy(dtype=bool).astype(np.int64) for f in ("budget", "authority", "need", "timeline"))
    min_score = cfg.pipeline.qualification.min_score
    m = is_open & (code > q_index) & (score < min_score)
    out["unqualified"] = (m, score.astype(float), np.full(n, float(min_score)), maker(
        lambda c, sc: f" is in {names[c]} with a BANT qualification score of {sc} (minimum {min_score}).", code, score))

    # M3 stalled: days_in_stage > max_days of its stage
    max_days = np.array([np.nan if s.max_days is None else s.max_days for s in stages] + [np.nan])[code]
    dis = deals["days_in_stage"].to_numpy(dtype=float)
    m = is_open & (dis > np.nan_to_num(max_days, nan=np.inf))
    out["stalled"] = (m, dis, max_days, maker(
        lambda c, k: f" has been in {names[c]} for {k} days (stage limit {stages[c].max_days} days).",
        code, dis.astype(np.int64)))

    # M4
    close = to_days(deals["close_date"])
    past = days_between(close)
    m = is_open & (close < day)
    close_i = np.where(np.isnat(close), 0, close.astype(np.int64))
    out["past_due"] = (m, past, np.zeros(n), maker(
        lambda c, k: f" is still open but its close date {_iso(c)} is {k} days before as_of.",
        close_i, np.nan_to_num(past).astype(np.int64)))

    age = deals["age_days"].to_numpy(dtype=float)
    if avg_cycle is not None:
        limit = t.max_age_factor * avg_cycle
        m = is_open & (age > limit)
        out["aged"] = (m, age, np.full(n, limit), maker(
            lambda k: f" is {k} days old, more than {_num(t.max_age_factor)} x the average sales cycle of "
                      f"{_num(avg_cycle)} days ({_num(limit)} days).", age.astype(np.int64)))
    else:
        out["aged"] = (np.zeros(n, bool), age, np.full(n, np.nan), maker(lambda: ""))

    nxt = to_days(deals["next_step_date"])
    late = days_between(nxt)
    m = is_open & (nxt < day)
    nxt_i = np.where(np.isnat(nxt), 0, nxt.astype(np.int64))
    out["overdue_follow_up"] = (m, late, np.zeros(n), maker(
        lambda c, k: f"'s next step was due on {_iso(c)}, {k} days before as_of, and is not done.",
        nxt_i, np.nan_to_num(late).astype(np.int64)))

    idle = days_between(to_days(deals["last_activity_date"]))
    m = is_open & (np.nan_to_num(idle, nan=-np.inf) > t.max_inactive_days)
    out["no_activity"] = (m, idle, np.full(n, float(t.max_inactive_days)), maker(
        lambda k: f" has had no activity for {k} days (limit {t.max_inactive_days}).", np.nan_to_num(idle).astype(np.int64)))

    # M5 missing fields
    missing = (deals["amount"].isna().to_numpy().astype(np.int64) + 2 * np.isnat(close).astype(np.int64)
               + 4 * deals["owner"].isna().to_numpy().astype(np.int64))
    count = (missing & 1) + (missing >> 1 & 1) + (missing >> 2 & 1)
    fields = ("amount", "close_date", "owner")
    m = is_open & (missing > 0)
    out["missing_fields"] = (m, count.astype(float), np.zeros(n), maker(
        lambda b: " is open but has no " + ", ".join(f for i, f in enumerate(fields) if b >> i & 1) + ".", missing))

    # M4 pushed_repeatedly (docs/metrics.md "Slippage")
    pushes = deals["push_count"].to_numpy(dtype=np.int64) if "push_count" in deals else np.zeros(n, np.int64)
    m = is_open & (pushes >= t.max_pushes)
    out["pushed_repeatedly"] = (m, pushes.astype(float), np.full(n, float(t.max_pushes)), maker(
        lambda k: f"'s close date has been pushed out {k} times (limit {t.max_pushes}).", pushes))
    return out


def compute_flags(deals: pd.DataFrame, metrics: pd.DataFrame, cfg: AppConfig, as_of: date, period: Period,
                  *, stale_sources: Sequence[str] = (), previous: Mapping[str, float | None] | None = None,
                  previous_as_of: date | None = None, extra_rows: Sequence[dict] = ()) -> FlagResult:
    """Run every check of the spec over the deals at `as_of` and the metrics table.

    `extra_rows`: Flags rows computed elsewhere (e.g. M1 low_coverage, transforms.targets)."""
    t = cfg.targets
    team = metrics[metrics["scope"] == "team"].set_index("metric")
    tv = {m: (None if pd.isna(v) else float(v)) for m, v in team["value"].items()}
    rows: list[dict] = list(extra_rows)
    is_open = deals["status"].to_numpy(dtype=object) == "open"
    n_open = int(is_open.sum())

    # M1 team and owner
    lg = tv.get("lead_gen_per_day")
    if lg is not None and _r(lg) < t.new_pipeline_per_day:
        rows.append(_team_row("M1", "low_lead_gen", "high", "team", "all", lg, t.new_pipeline_per_day,
                              f"New pipeline averaged {_money(lg, cfg)} a day over the last {t.prospecting_window_days} "
                              f"days, below the target of {_money(t.new_pipeline_per_day, cfg)} a day."))
    if t.new_pipeline_per_day_per_owner is not None:
        rows += _owner_lead_gen(deals, metrics, cfg, period)

    # M3 stage share
    if n_open:
        open_codes = deals["_stage_code"].to_numpy()[is_open]
        counts = np.bincount(open_codes[open_codes >= 0], minlength=len(cfg.pipeline.stages))
        for k, s in enumerate(cfg.pipeline.stages):
            share = counts[k] / n_open
            if s.status == "open" and _r(share) > t.max_stage_share:
                rows.append(_team_row("M3", "stage_share", "medium", "stage", s.name, share, t.max_stage_share,
                                      f"{s.name} holds {int(counts[k])} of {n_open} open deals ({share:.0%}), "
                                      f"more than the {t.max_stage_share:.0%} limit."))

    # deal checks
    masks = deal_check_masks(deals, cfg, as_of, tv.get("avg_sales_cycle_days"))
    bits = np.zeros(len(deals), dtype=np.int64)
    deal_parts: list[tuple[str, str, dict[str, object]]] = []
    row_ids = deals["row_id"].to_numpy(dtype=object)
    deal_cols = {c: deals[c].to_numpy(dtype=float if c == "amount" else object) for c in _DEAL_ONLY}
    by_amount = np.argsort(-np.nan_to_num(deal_cols["amount"], nan=-1.0), kind="stable")  # largest first, missing last
    place = np.empty(len(deals), dtype=np.int64)  # a fired deal's position among the deals that fired
    for i, (check, rule, sev) in enumerate(DEAL_CHECKS):
        m, value, thr, messages = masks[check]
        bits |= m.astype(np.int64) << i
        if not m.any():
            continue
        at = by_amount[m[by_amount]]  # the deals that fired, largest amount first
        fired = np.flatnonzero(m)
        place[fired] = np.arange(len(fired))
        deal_parts.append((sev, rule, {
            "rule": rule, "mistake": MISTAKES[rule], "check": check, "severity": sev, "scope": "deal",
            "key": Gather(row_ids, at), **{c: Gather(v, at) for c, v in deal_cols.items()},
            "value": value[at].astype(float), "threshold": thr[at].astype(float),
            # built in row order (the ids are read in the order they sit in memory), then put in amount order
            "message": messages(fired)[place[at]], "advice": ADVICE[rule],
        }))

    # M5 team: missing share, stale sources
    if n_open:
        n_missing = int(masks["missing_fields"][0].sum())
        share = n_missing / n_open
        if _r(share) > t.max_missing_share:
            rows.append(_team_row("M5", "missing_share", "high", "team", "all", share, t.max_missing_share,
                                  f"{n_missing} of {n_open} open deals ({share:.0%}) miss amount, close_date or owner, "
                                  f"more than the {t.max_missing_share:.0%} limit."))
    for name in stale_sources:
        rows.append(_team_row("M5", "source_stale", "high", "team", "all", None, None,
                              f"Source '{name}' failed or returned no rows this run, so its data is from an earlier run."))

    # M6 existing-customer share of open value
    amount = deals["amount"].to_numpy(dtype=float)
    open_amt = np.where(is_open & ~np.isnan(amount), amount, 0.0)
    total = float(open_amt.sum())
    if total > 0:
        existing = float(open_amt[deals["deal_type"].to_numpy(dtype=object) == "existing"].sum())
        share = existing / total
        if _r(share) < t.min_existing_share:
            rows.append(_team_row("M6", "low_existing_share", "medium", "team", "all", share, t.min_existing_share,
                                  f"Existing customers hold {_money(existing, cfg)} of {_money(total, cfg)} open value "
                                  f"({share:.0%}), "
                                  f"below the {t.min_existing_share:.0%} target."))

    # M7 metrics empty for a missing input; volume over value
    unavailable = metrics[(metrics["scope"] == "team") & metrics["missing_input"].notna()]
    for metric, note, missing in zip(unavailable["metric"], unavailable["note"], unavailable["missing_input"], strict=True):
        rows.append(_team_row("M7", "metric_unavailable", "low", "team", "all", None, None,
                              f"{metric} is empty because {note}: add {missing}."))
    if previous:
        rows += _volume_over_value(tv, previous, previous_as_of)

    # M8 product mix
    if t.product_mix:
        rows += _product_mix(deals, cfg, period)

    flags, counts = _ordered(rows, deal_parts)
    return FlagResult(flags, pd.Series(_bits_to_names(bits), index=deals.index, dtype=object), bits, counts)


class Gather(NamedTuple):
    """`values[at]`, taken only when the Flags column is assembled."""
    values: np.ndarray
    at: np.ndarray


def _ordered(rows: list[dict], deal_parts: list[tuple[str, str, dict[str, object]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All flags sorted by severity then rule (team/owner/stage rows before deal rows within a rule),
    and the count per (rule, check, severity) in the same order. Columns are assembled as numpy
    arrays and framed once (millions of deal flags)."""
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    pieces: list[tuple[tuple[int, str, int], dict[str, object], int]] = []
    for i, r in enumerate(rows):
        pieces.append(((rank[r["severity"]], r["rule"], -len(rows) + i), r, 1))
    for i, (sev, rule, part) in enumerate(deal_parts):
        pieces.append(((rank[sev], rule, i), part, len(part["value"])))  # type: ignore[arg-type]
    pieces.sort(key=lambda p: p[0])
    numeric = {"value", "threshold", "amount"}
    sizes = np.array([n for _, _, n in pieces], dtype=np.int64)
    total = int(sizes.sum())
    flags = pd.DataFrame(index=pd.RangeIndex(total))
    for c in FLAG_COLUMNS:  # one column at a time: no consolidation copy of millions of objects
        kind = float if c in numeric else object
        missing = np.nan if c in numeric else None  # what a numeric column holds for None
        if all(not isinstance(part[c], np.ndarray | Gather) for _, part, _ in pieces):
            col = np.repeat(np.array([missing if part[c] is None else part[c] for _, part, _ in pieces], dtype=kind),
                            sizes)
        else:
            col = np.empty(total, dtype=kind)
            start = 0
            for _, part, n in pieces:  # each piece's rows written into their slice, no piece copied twice
                v, seg = part[c], col[start:start + n]
                if isinstance(v, Gather):
                    np.take(v.values, v.at, out=seg)
                else:
                    seg[:] = missing if v is None else v
                start += n
        flags[c] = pd.Series(col, index=flags.index, dtype=kind, copy=False)
    counts: dict[tuple[str, str, str], int] = {}
    for _, part, n in pieces:
        k = (str(part["rule"]), str(part["check"]), str(part["severity"]))
        counts[k] = counts.get(k, 0) + n
    count_frame = pd.DataFrame({
        "rule": pd.Series([k[0] for k in counts], dtype=object), "check": pd.Series([k[1] for k in counts], dtype=object),
        "severity": pd.Series([k[2] for k in counts], dtype=object),
        "count": pd.Series(list(counts.values()), dtype=np.int64)})
    return flags, count_frame


def _bits_to_names(bits: np.ndarray) -> np.ndarray:
    table = np.array([",".join(c for i, (c, _, _) in enumerate(DEAL_CHECKS) if u >> i & 1)
                      for u in range(1 << len(DEAL_CHECKS))], dtype=object)
    return table[bits]


def _owner_lead_gen(deals: pd.DataFrame, metrics: pd.DataFrame, cfg: AppConfig, period: Period) -> list[dict]:
    target = float(cfg.targets.new_pipeline_per_day_per_owner or 0)
    close = to_days(deals["close_date"])
    status = deals["status"].to_numpy(dtype=object)
    closed_in = np.isin(status, ["won", "lost"]) & (close >= np.datetime64(period.start, "D")) & (close <= np.datetime64(period.end, "D"))
    active = (status == "open") | closed_in
    owner = deals["owner"].to_numpy(dtype=object)
    owners = set(pd.unique(owner[active & pd.notna(owner)]).tolist())
    own = metrics[(metrics["metric"] == "lead_gen_per_day") & (metrics["scope"] == "owner")]
    rows = []
    for owner, value in zip(own["key"], own["value"], strict=True):
        if owner in owners and owner != NO_OWNER and not pd.isna(value) and _r(value) < target:
            rows.append(_team_row("M1", "low_lead_gen", "medium", "owner", owner, float(value), target,
                                  f"{owner} added {_money(value, cfg)} of new pipeline a day over the last "
                                  f"{cfg.targets.prospecting_window_days} days, below their target of "
                                  f"{_money(target, cfg)} a day."))
    return rows


def _volume_over_value(tv: Mapping[str, float | None], prev: Mapping[str, float | None], prev_as_of: date | None) -> list[dict]:
    cur_open, old_open = tv.get("open_deals"), prev.get("open_deals")
    if cur_open is None or old_open is None or not cur_open > old_open:
        return []
    fell = []
    for m in ("win_rate", "sales_velocity_per_day"):
        a, b = tv.get(m), prev.get(m)
        if a is not None and b is not None and a < b:
            fell.append(f"{m} fell from {_num(b)} to {_num(a)}")
    if not fell:
        return []
    when = f" (snapshot of {prev_as_of.isoformat()})" if prev_as_of else ""
    return [_team_row("M7", "volume_over_value", "medium", "team", "all", cur_open, old_open,
                      f"Open deals rose from {int(old_open)} to {int(cur_open)} since the previous snapshot{when} "
                      f"while {' and '.join(fell)}.")]


def _product_mix(deals: pd.DataFrame, cfg: AppConfig, period: Period) -> list[dict]:
    t = cfg.targets
    status = deals["status"].to_numpy(dtype=object)
    close = to_days(deals["close_date"])
    won_p = (status == "won") & (close >= np.datetime64(period.start, "D")) & (close <= np.datetime64(period.end, "D"))
    product = deals["product"].astype(object).to_numpy()
    rows = []
    for check, mask, what in (("open_mix", status == "open", "open deals"), ("won_mix", won_p, f"deals won in {period.label}")):
        total = int(mask.sum())
        if total == 0:
            continue
        for prod, target in (t.product_mix or {}).items():
            count = int((mask & (product == prod)).sum())
            share = count / total
            if _r(abs(share - target)) > t.product_mix_tolerance:
                rows.append(_team_row("M8", check, "medium", "product", prod, share, target,
                                      f"{prod} has {count} of {total} {what} ({share:.0%}) against a target of {target:.0%} "
                                      f"(tolerance {t.product_mix_tolerance:.0%})."))
    return rows
