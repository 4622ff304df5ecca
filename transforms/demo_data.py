"""The bundled demo org: deterministic (seeded) deals and stage history anchored to `as_of`.

About 2,400 deals over 18 months, 6 owners, 3 products, existing-customer deals and full stage
history, shaped like a working sales team: each deal moves through the five open stages in
times around each stage's limit and is lost at some stage or won at the end, so the deals open
on any date (and on every date a backfill looks at) are those still on their way. A few of them
show the usual mistakes: a handful of forgotten deals left open long after they went quiet,
close dates not updated, follow-ups missed, deals moved on without qualification, missing
fields; one owner has stopped prospecting. Roughly one open deal in five has something to act on.

Columns are named the way a CRM export names them, to show the `columns:` mapping; formats are
mixed as exports mix them. Four deal names look like spreadsheet formulas (`=HYPERLINK(...)`):
they are there to show that text from a source is always written as text. Six bad rows show the
Rejected sheet. `generate_partner_deals` is the partner team's smaller Excel export.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

OWNERS = ("Ava Chen", "Ben Okafor", "Carla Diaz", "Dana Kim", "Eli Novak", "Fay Haddad")
PRODUCTS = ("Platform", "Analytics", "Services")
OPEN_STAGES = ("Lead generation", "Qualification", "Contact", "Proposal", "Closing")
STAGE_LIMITS = (14, 21, 21, 30, 21)  # config/demo.yaml keeps the default max_days
LOSS_AFTER = (0.22, 0.15, 0.12, 0.15)  # chance a deal is lost when it leaves each of the first four open stages
WIN_AT_CLOSE = 0.62  # chance a deal that reaches Closing is won
FORGOTTEN = 0.006  # deals that stop moving and are never closed (the M4 "dead deals")
SOURCES = ("Inbound", "Outbound", "Referral", "Event", "Partner")
INJECTIONS = ('=HYPERLINK("http://evil.example/","click me")', "+SUM(1,2)", "-2+3", "@cmd|' /C calc'!A0")
PARTNERS = ("Northwind Partners", "Contoso Resellers")
PARTNER_OWNERS = ("Eli Novak", "Fay Haddad")  # the channel managers


def _stage_days(rng: np.random.Generator, n: int) -> np.ndarray:
    """Days each deal spends in each open stage: around half the stage's limit, a few longer."""
    limits = np.array(STAGE_LIMITS, dtype=float)
    return np.maximum(1, np.round(limits * np.exp(rng.normal(np.log(0.55), 0.4, (n, 5))))).astype(np.int64)


def generate_demo(as_of: date, n_deals: int = 2400, seed: int = 20260101) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (deals as a CRM export would give them, stage history rows)."""
    rng = np.random.default_rng(seed)
    days_back = 540
    asof = np.datetime64(as_of, "D")
    n = n_deals
    owner_idx = rng.choice(len(OWNERS), n, p=[0.2, 0.2, 0.18, 0.12, 0.15, 0.15])
    age = rng.integers(0, days_back, n)
    # Dana stopped prospecting: none of her deals are from the last 45 days.
    dana_recent = (owner_idx == OWNERS.index("Dana Kim")) & (age < 45)
    age[dana_recent] += rng.integers(45, 200, int(dana_recent.sum()))
    created = asof - age.astype("timedelta64[D]")
    product_idx = rng.choice(len(PRODUCTS), n, p=[0.55, 0.2, 0.25])
    existing = rng.random(n) < 0.18
    accounts = rng.integers(1, 650, n)
    amount = np.round(np.exp(rng.normal(np.log(18000), 0.7, n)), -2)
    amount[product_idx == 2] = np.round(amount[product_idx == 2] * 0.4, -2)

    # The path: stages 0..last entered; lost after `last` (< 4) or won/lost at the end of Closing.
    leave = rng.random((n, 4)) < np.array(LOSS_AFTER)
    last = np.where(leave.any(axis=1), np.argmax(leave, axis=1), 4)
    won = (last == 4) & (rng.random(n) < WIN_AT_CLOSE)
    durations = _stage_days(rng, n)
    entries = np.zeros((n, 6), dtype="datetime64[D]")  # entry into open stages 0..4, and the close
    entries[:, 0] = created
    for k in range(1, 6):
        entries[:, k] = entries[:, k - 1] + durations[:, k - 1].astype("timedelta64[D]")
    close_actual = entries[np.arange(n), last + 1]  # when the deal left its last stage
    # Forgotten deals stop in some stage and are never closed.
    forgotten = (rng.random(n) < FORGOTTEN) & (age > 60)
    stop_at = np.minimum(rng.integers(0, 5, n), last)
    last = np.where(forgotten, stop_at, last)
    closed_by_asof = ~forgotten & (close_actual <= asof)

    entered = (np.arange(5)[None, :] <= last[:, None]) & (entries[:, :5] <= asof)
    last_entered = np.where(entered.any(axis=1), 4 - np.argmax(entered[:, ::-1], axis=1), 0)
    stage = np.asarray(OPEN_STAGES, dtype=object)[last_entered]
    stage[closed_by_asof] = np.where(won[closed_by_asof], "Won", "Lost")
    is_open = ~closed_by_asof
    stage_entry = entries[np.arange(n), last_entered]
    # Expected close: the rep's estimate, kept ahead of today for most open deals.
    planned = created + rng.integers(50, 110, n).astype("timedelta64[D]")
    ahead = asof + rng.integers(7, 75, n).astype("timedelta64[D]")
    not_updated = rng.random(n) < 0.06
    expected = np.where(not_updated | forgotten | (planned > asof), planned, np.maximum(planned, ahead))
    close_date = np.where(closed_by_asof, close_actual, expected)

    # Activity: working deals were touched in the last days; forgotten ones went quiet long ago.
    quiet = np.where(forgotten, rng.integers(35, 220, n), np.round(rng.exponential(4.0, n)).astype(np.int64))
    last_activity = np.maximum(asof - quiet.astype("timedelta64[D]"), created)
    missed = rng.random(n) < 0.05
    next_offset = np.where(missed | forgotten, -rng.integers(2, 25, n), rng.integers(0, 21, n))
    next_step = asof + next_offset.astype("timedelta64[D]")
    # BANT: deals past Qualification are mostly qualified; a few were pushed on without it.
    qualified = last_entered >= 2
    p_true = np.where(qualified[:, None], 0.93, 0.6)
    bant = rng.random((n, 4)) < p_true

    ids = np.array([f"D-{100000 + i}" for i in range(n)])
    deals = pd.DataFrame({
        "Deal ID": ids,
        "Deal Name": [f"{PRODUCTS[p]} for Account {a:04d}" for p, a in zip(product_idx, accounts, strict=True)],
        "Account ID": [f"A-{a:04d}" for a in accounts],
        "Account": [f"Account {a:04d}" for a in accounts],
        "Owner": [OWNERS[o] for o in owner_idx],
        "Team": ["East" if o < 3 else "West" for o in owner_idx],
        "Product": [PRODUCTS[p] for p in product_idx],
        "Stage": stage,
        "Stage Entered": pd.to_datetime(stage_entry).strftime("%Y-%m-%d"),
        "Amount": [f"{a:.0f}" for a in amount],
        "Currency": "USD",
        "Created": pd.to_datetime(created).strftime("%Y-%m-%d"),
        "Close Date": pd.to_datetime(close_date).strftime("%Y-%m-%d"),
        "Last Activity": pd.to_datetime(last_activity).strftime("%Y-%m-%d"),
        "Next Step Date": np.where(is_open, pd.to_datetime(next_step).strftime("%Y-%m-%d"), ""),
        "Deal Type": np.where(existing, "existing", "new"),
        "Lead Source": rng.choice(SOURCES, n),
        "Budget": np.where(bant[:, 0], "yes", "no"),
        "Authority": np.where(bant[:, 1], "Y", "N"),
        "Need": np.where(bant[:, 2], "true", "false"),
        "Timeline": np.where(bant[:, 3], "1", "0"),
    })
    # Formats as exports mix them: some amounts with symbols, some created stamps as date-times.
    dollars = rng.random(n) < 0.2
    deals.loc[dollars, "Amount"] = [f"${a:,.2f}" for a in amount[dollars]]
    stamped = rng.random(n) < 0.1
    deals.loc[stamped, "Created"] = deals.loc[stamped, "Created"] + "T09:30:00Z"
    # Data not tracked: a few open deals miss an amount, a close date or an owner.
    open_idx = np.flatnonzero(is_open)
    for col, share in (("Amount", 0.02), ("Close Date", 0.012), ("Owner", 0.008)):
        pick = rng.choice(open_idx, max(1, int(len(open_idx) * share)), replace=False) if len(open_idx) else []
        deals.loc[pick, col] = ""
    # CRM text is data: names that a spreadsheet would run as formulas (written as text).
    closed_idx = np.flatnonzero(~is_open)
    for k, text in enumerate(INJECTIONS):
        if k < len(closed_idx):
            deals.loc[closed_idx[k * 7 % len(closed_idx)], "Deal Name"] = text

    bad = pd.DataFrame([
        {**deals.iloc[0].to_dict(), "Deal ID": "D-BAD-1", "Amount": "abc"},
        {**deals.iloc[1].to_dict(), "Deal ID": "D-BAD-2", "Stage": "Negotiation??"},
        {**deals.iloc[2].to_dict(), "Deal ID": "D-BAD-3", "Created": "2026-13-45"},
        {**deals.iloc[3].to_dict()},  # a duplicate of an earlier deal id
        {**deals.iloc[4].to_dict(), "Deal ID": "D-BAD-5", "Amount": "-1500"},
        {**deals.iloc[5].to_dict(), "Deal ID": "D-BAD-6", "Currency": "XYZ"},
    ])
    deals = pd.concat([deals, bad], ignore_index=True)

    hist_ids, hist_stage, hist_date = [], [], []
    for k in range(5):
        at = (k <= last) & (entries[:, k] <= asof)
        hist_ids.append(ids[at])
        hist_stage.append(np.full(int(at.sum()), OPEN_STAGES[k], dtype=object))
        hist_date.append(entries[at, k])
    final = closed_by_asof
    hist_ids.append(ids[final])
    hist_stage.append(np.where(won[final], "Won", "Lost").astype(object))
    hist_date.append(close_actual[final])
    history = pd.DataFrame({
        "Deal ID": np.concatenate(hist_ids),
        "Stage": np.concatenate(hist_stage),
        "Entered": pd.to_datetime(np.concatenate(hist_date)).strftime("%Y-%m-%d"),
    }).sort_values(["Deal ID", "Entered"], kind="stable").reset_index(drop=True)
    return deals, history


def generate_partner_deals(as_of: date, n_deals: int = 36, seed: int = 20260202) -> pd.DataFrame:
    """The partner team's weekly Excel export: fewer columns (no activity, BANT or history)."""
    rng = np.random.default_rng(seed)
    asof = np.datetime64(as_of, "D")
    age = rng.integers(3, 120, n_deals)
    created = asof - age.astype("timedelta64[D]")
    stage_idx = np.minimum(age // 25, 4)
    closed = age > 90
    stage = np.asarray(OPEN_STAGES, dtype=object)[stage_idx]
    won = rng.random(n_deals) < 0.55
    stage[closed] = np.where(won[closed], "Won", "Lost")
    close = np.where(closed, created + rng.integers(40, 90, n_deals).astype("timedelta64[D]"),
                     asof + rng.integers(5, 80, n_deals).astype("timedelta64[D]"))
    close = np.minimum(close, np.where(closed, asof, close))
    amount = np.round(np.exp(rng.normal(np.log(24000), 0.5, n_deals)), -2)
    entered = np.maximum(created, asof - rng.integers(1, 12, n_deals).astype("timedelta64[D]"))
    bant = rng.random((n_deals, 4)) < np.where(stage_idx[:, None] >= 2, 0.95, 0.6)
    return pd.DataFrame({
        "Deal ID": [f"P-{2000 + i}" for i in range(n_deals)],
        "Deal Name": [f"{PRODUCTS[i % 3]} via {PARTNERS[i % 2]} ({i + 1})" for i in range(n_deals)],
        "Owner": [PARTNER_OWNERS[i % 2] for i in range(n_deals)],
        "Product": [PRODUCTS[i % 3] for i in range(n_deals)],
        "Stage": stage,
        "Stage Entered": pd.to_datetime(entered).strftime("%Y-%m-%d"),
        "Amount": amount,
        "Created": pd.to_datetime(created).strftime("%Y-%m-%d"),
        "Close Date": pd.to_datetime(close).strftime("%Y-%m-%d"),
        **{f: np.where(bant[:, i], "yes", "no") for i, f in enumerate(("Budget", "Authority", "Need", "Timeline"))},
    })
