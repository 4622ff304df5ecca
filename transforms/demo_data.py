"""The bundled demo org: deterministic (seeded) deals and stage history anchored to `as_of`.

About 2,400 deals over 18 months, 6 owners, 3 products, existing-customer deals, stage
history, and a few deliberately bad rows, shaped so the pipeline's usual mistakes show up
(a top-heavy funnel, stalled and past-due deals, missing fields, an owner not prospecting).
Columns are named the way a CRM export names them, to show the `columns:` mapping.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

OWNERS = ("Ava Chen", "Ben Okafor", "Carla Diaz", "Dana Kim", "Eli Novak", "Fay Haddad")
PRODUCTS = ("Platform", "Analytics", "Services")
OPEN_STAGES = ("Lead generation", "Qualification", "Contact", "Proposal", "Closing")
SOURCES = ("Inbound", "Outbound", "Referral", "Event", "Partner")
INJECTIONS = ('=HYPERLINK("http://evil.example/","click me")', "+SUM(1,2)", "-2+3", "@cmd|' /C calc'!A0")


def generate_demo(as_of: date, n_deals: int = 2400, seed: int = 20260101) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (deals as a CRM export would give them, stage history rows)."""
    rng = np.random.default_rng(seed)
    days_back = 540
    asof = np.datetime64(as_of, "D")
    n = n_deals
    owner_idx = rng.choice(len(OWNERS), n, p=[0.2, 0.2, 0.18, 0.12, 0.15, 0.15])
    age = rng.integers(0, days_back, n)
    # Dana stopped prospecting: almost none of her deals are from the last 45 days.
    dana_recent = (owner_idx == OWNERS.index("Dana Kim")) & (age < 45)
    age[dana_recent] += rng.integers(45, 200, int(dana_recent.sum()))
    created = asof - age.astype("timedelta64[D]")
    product_idx = rng.choice(len(PRODUCTS), n, p=[0.55, 0.2, 0.25])
    existing = rng.random(n) < 0.14
    accounts = rng.integers(1, 650, n)
    amount = np.round(np.exp(rng.normal(np.log(18000), 0.7, n)), -2)
    amount[product_idx == 2] = np.round(amount[product_idx == 2] * 0.4, -2)

    # Outcome: 0 won, 1 lost, 2 still working. Stalled deals pile up in the first stage.
    outcome = rng.choice(3, n, p=[0.3, 0.33, 0.37])
    reach = np.where(outcome == 0, 5, rng.integers(0, 5, n))  # open stages entered (1..5)
    working_top = (outcome == 2) & (rng.random(n) < 0.6)
    reach = np.where(working_top, 0, reach) + 1
    reach = np.minimum(reach, 5)
    durations = rng.exponential(11.0, (n, 6)).round().astype(int) + 1
    entries = np.zeros((n, 6), dtype="datetime64[D]")  # entry into open stages 0..4 and the close
    entries[:, 0] = created
    for k in range(1, 6):
        entries[:, k] = entries[:, k - 1] + durations[:, k - 1].astype("timedelta64[D]")
    close_actual = entries[np.arange(n), reach]  # entry of the stage after the last reached
    closes = outcome < 2
    closed_by_asof = closes & (close_actual <= asof)

    entered = (np.arange(5)[None, :] < reach[:, None]) & (entries[:, :5] <= asof)
    last_entered = np.where(entered.any(axis=1), 4 - np.argmax(entered[:, ::-1], axis=1), 0)
    stage = np.asarray(OPEN_STAGES, dtype=object)[last_entered]
    stage[closed_by_asof] = np.where(outcome[closed_by_asof] == 0, "Won", "Lost")
    is_open = ~closed_by_asof
    expected_close = created + rng.integers(45, 150, n).astype("timedelta64[D]")
    close_date = np.where(closed_by_asof, close_actual, expected_close)

    last_activity = asof - rng.integers(0, 55, n).astype("timedelta64[D]")
    last_activity = np.maximum(last_activity, created)
    next_step = asof + rng.integers(-20, 30, n).astype("timedelta64[D]")
    bant = rng.random((n, 4)) < np.array([0.75, 0.6, 0.85, 0.7])

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
    # Data not tracked: some open deals miss an amount, a close date or an owner.
    open_idx = np.flatnonzero(is_open)
    for col, share in (("Amount", 0.06), ("Close Date", 0.04), ("Owner", 0.03)):
        pick = rng.choice(open_idx, max(1, int(len(open_idx) * share)), replace=False)
        deals.loc[pick, col] = ""
    # CRM text is data: names that a spreadsheet would run as formulas.
    for k, text in enumerate(INJECTIONS):
        deals.loc[k * 7 + 3, "Deal Name"] = text

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
        entered = (k < reach) & (entries[:, k] <= asof)
        hist_ids.append(ids[entered])
        hist_stage.append(np.full(int(entered.sum()), OPEN_STAGES[k], dtype=object))
        hist_date.append(entries[entered, k])
    final = closed_by_asof
    hist_ids.append(ids[final])
    hist_stage.append(np.where(outcome[final] == 0, "Won", "Lost").astype(object))
    hist_date.append(close_actual[final])
    history = pd.DataFrame({
        "Deal ID": np.concatenate(hist_ids),
        "Stage": np.concatenate(hist_stage),
        "Entered": pd.to_datetime(np.concatenate(hist_date)).strftime("%Y-%m-%d"),
    }).sort_values(["Deal ID", "Entered"], kind="stable").reset_index(drop=True)
    return deals, history
