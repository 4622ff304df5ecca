"""What a year of weekly snapshots costs in the state database (issue 22: storage grows with changes).

    python bench/bench_snapshots.py --deals 100000 1000000 --weeks 52 [--old-weeks 4]

Synthetic open deals (`deals` of them in every snapshot: the open pipeline of one report), ids like
`hubspot:12345678`, 40 owners, 6 products, 5 stages, amounts and close dates. Every week 10% of the
open deals change a stored field (half of them the close date, 60% of those later, the rest amount,
stage or owner) and 2.5% close (leave the snapshot) while as many new deals open. Each week is saved
by `connectors.state.snapshots.save_snapshot` in its own transaction on a fresh SQLite file, as
the flow commits it; then the last week's `load_history` is timed. "old" stores the same weeks the
way versions before issue 22 did (one `snapshot_deals` row per open deal per date, 20k-row
batches) for `--old-weeks` weeks, extrapolated linearly to `--weeks` (it grows by one full copy a
week). One process per size; prints a markdown table. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START = date(2026, 1, 4)


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def weekly_frames(n: int, weeks: int):
    """Yield (as_of, open deals frame) for each week."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(22)
    next_id = 10_000_000
    ids = np.arange(next_id, next_id + n)
    next_id += n
    owners = np.array([f"Owner {i:02d}" for i in range(40)], dtype=object)
    products = np.array(["Platform", "Analytics", "Services", "Support", "Data", "Apps"], dtype=object)
    stages = np.array(["Lead generation", "Qualification", "Contact", "Proposal", "Closing"], dtype=object)
    owner = rng.integers(0, 40, n)
    product = rng.integers(0, 6, n)
    stage = rng.integers(0, 5, n)
    amount = np.round(rng.lognormal(9, 1, n), 2)
    close = (np.datetime64(START, "D") + rng.integers(0, 365, n)).astype("datetime64[D]")
    for w in range(weeks):
        if w:
            change = rng.random(n) < 0.10
            which = rng.random(n)
            c = change & (which < 0.5)
            shift = np.where(rng.random(n) < 0.6, rng.integers(7, 60, n), -rng.integers(1, 30, n))
            close = np.where(c, close + shift.astype("timedelta64[D]"), close)
            a = change & (which >= 0.5) & (which < 0.7)
            amount = np.where(a, np.round(amount * rng.uniform(0.7, 1.3, n), 2), amount)
            s = change & (which >= 0.7) & (which < 0.9)
            stage = np.where(s, np.minimum(stage + 1, 4), stage)
            o = change & (which >= 0.9)
            owner = np.where(o, rng.integers(0, 40, n), owner)
            gone = rng.random(n) < 0.025  # closed: replaced by new deals
            k = int(gone.sum())
            ids = ids.copy()
            ids[gone] = np.arange(next_id, next_id + k)
            next_id += k
            owner[gone], product[gone], stage[gone] = rng.integers(0, 40, k), rng.integers(0, 6, k), 0
            amount[gone] = np.round(rng.lognormal(9, 1, k), 2)
            close[gone] = np.datetime64(START, "D") + w * 7 + rng.integers(30, 200, k)
        frame = pd.DataFrame({
            "deal_id": pd.Series([f"hubspot:{i}" for i in ids.tolist()], dtype=object),
            "owner": pd.Series(owners[owner], dtype=object), "product": pd.Series(products[product], dtype=object),
            "stage": pd.Series(stages[stage], dtype=object), "amount": amount.astype(float),
            "close_date": close.astype("datetime64[ns]")})
        yield START + timedelta(weeks=w), frame


def measure(n: int, weeks: int, old_weeks: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa

    from config.snapshot_types import SnapshotRecord
    from connectors.state import snapshots as store
    from connectors.state.db import make_engine

    metrics = {f"metric_{i}": float(i) for i in range(30)}
    out: dict = {"deals": n, "weeks": weeks}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "new.db"
        engine = make_engine(f"sqlite:///{db}")
        saves = []
        rss0 = _rss_mb("VmRSS")
        for as_of, frame in weekly_frames(n, weeks):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                store.save_snapshot(conn, "r", SnapshotRecord(as_of, metrics, frame))
            saves.append(time.perf_counter() - t0)
        last = as_of
        t0 = time.perf_counter()
        h = store.load_history(engine, "r", last + timedelta(days=1))
        out["load_s"] = time.perf_counter() - t0
        assert len(h.previous_deals) == n
        out["pushes"] = len(h.pushes)
        with engine.connect() as conn:
            kinds = conn.execute(sa.text("SELECT kind, COUNT(DISTINCT as_of), SUM(rows) FROM snapshot_deal_parts "
                                         "GROUP BY kind")).all()
        out["kinds"] = {k: [int(d), int(r)] for k, d, r in kinds}
        engine.dispose()
        out["file_mb"] = db.stat().st_size / 1e6
        out["blocks_mb"] = store.storage_bytes(make_engine(f"sqlite:///{db}"), "r") / 1e6
        out["save_s_median"] = sorted(saves)[len(saves) // 2]
        out["save_s_first"] = saves[0]
        out["save_s_max"] = max(saves)
        out["peak_rss_growth_mb"] = _rss_mb("VmHWM") - rss0

        # the layout before issue 22: a row per open deal per date
        old = Path(tmp) / "old.db"
        engine = make_engine(f"sqlite:///{old}")
        t_old = []
        for as_of, frame in weekly_frames(n, old_weeks):
            t0 = time.perf_counter()
            rows = [{"report": "r", "as_of": as_of, "deal_id": d, "owner": o, "product": p, "stage": s,
                     "amount": a, "close_date": c.date()}
                    for d, o, p, s, a, c in zip(frame["deal_id"], frame["owner"], frame["product"], frame["stage"],
                                                frame["amount"].tolist(), frame["close_date"], strict=True)]
            with engine.begin() as conn:
                conn.execute(store.snapshots.insert().values(report="r", as_of=as_of, saved_at=sa.func.now()))
                for i in range(0, len(rows), 20_000):
                    conn.execute(store.snapshot_deals.insert(), rows[i:i + 20_000])
            t_old.append(time.perf_counter() - t0)
        engine.dispose()
        out["old_file_mb_measured"] = old.stat().st_size / 1e6
        out["old_weeks"] = old_weeks
        out["old_file_mb_year"] = out["old_file_mb_measured"] / old_weeks * weeks
        out["old_save_s_median"] = sorted(t_old)[len(t_old) // 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deals", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--weeks", type=int, default=52)
    ap.add_argument("--old-weeks", type=int, default=4)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.weeks, args.old_weeks)))
        return
    results = []
    for n in args.deals:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--weeks", str(args.weeks), "--old-weeks",
                               str(args.old_weeks)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("| open deals | weeks | state DB (SQLite file) | deal blocks | old layout, a year (extrapolated from "
          "weeks measured) | save: first / median / max | old save (median) | load_history | full / delta dates "
          "(rows) | pushes kept | peak RSS growth |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        k = r["kinds"]
        print(f"| {r['deals']:,} | {r['weeks']} | {r['file_mb']:.1f} MB | {r['blocks_mb']:.1f} MB | "
              f"{r['old_file_mb_year']:,.0f} MB ({r['old_file_mb_measured']:.0f} MB / {r['old_weeks']} weeks) | "
              f"{r['save_s_first']:.2f} / {r['save_s_median']:.2f} / {r['save_s_max']:.2f} s | "
              f"{r['old_save_s_median']:.2f} s | {r['load_s']:.2f} s | "
              f"{k.get('full', [0, 0])[0]} ({k.get('full', [0, 0])[1]:,}) / {k.get('delta', [0, 0])[0]} "
              f"({k.get('delta', [0, 0])[1]:,}) | {r['pushes']:,} | {r['peak_rss_growth_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
