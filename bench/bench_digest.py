"""Benchmark of the digest's flag memory: identities, load previous, diff, save, before and after.

    python bench/bench_digest.py --rows 240000 2400000 --repeat 3 [--before-rev ee2c685^]

A synthetic Flags frame (7 deal checks over rows / 2.4 deals with keys like `hubspot:12345678`,
~60-character messages, plus team rows with repeated identities, sorted like transforms.flags) is
stored as the previous run (untimed); then the next run's frame (2% of the deals re-drawn, every
message's day count moved) goes through the digest's flag work (timed) against a fresh SQLite
state DB. "before" runs flows/notify.py and connectors/state/digest_flags.py as they were at
`--before-rev` (from git). One process per measurement; peak RSS growth is VmHWM (reset before
the timed part) minus VmRSS before it; the previous run is stored by a process of its own. Prints a markdown table; never run by the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BEFORE = "ee2c685^"

CHECKS = (  # check, rule, severity, share of deals, message
    ("unqualified", "M2", "medium", 0.35, "{k} has no budget, authority, need or timeline after {d} days."),
    ("stalled", "M3", "medium", 0.45, "{k} has been in its stage for {d} days, over the limit."),
    ("past_due", "M4", "high", 0.30, "{k} is still open but its close date is {d} days before as_of."),
    ("aged", "M4", "medium", 0.40, "{k} has been open for {d} days, over twice the cycle."),
    ("overdue_follow_up", "M4", "medium", 0.30, "{k} has a follow-up that is {d} days overdue."),
    ("no_activity", "M4", "low", 0.40, "{k} has had no activity for {d} days."),
    ("missing_fields", "M5", "medium", 0.20, "{k} misses amount, close_date or owner ({d})."),
)
RANK = {"high": 0, "medium": 1, "low": 2}
D1, D2 = date(2026, 11, 20), date(2026, 11, 27)


def flags_frame(rows: int, run: int):
    """~`rows` flags of a run (run 0: previous, run 1: current)."""
    import pandas as pd

    deals = max(1, round(rows / 2.4))
    rng = np.random.default_rng(7)
    ids = np.array([f"hubspot:{i}" for i in rng.choice(90_000_000, deals, replace=False) + 10_000_000], dtype=object)
    masks = [rng.random(deals) < share for _, _, _, share, _ in CHECKS]
    if run:
        moved = np.random.default_rng(8).random(deals) < 0.02
        redraw = np.random.default_rng(9)
        masks = [np.where(moved, redraw.random(deals) < share, m) for m, (_, _, _, share, _) in zip(masks, CHECKS, strict=True)]
    days = rng.integers(1, 400, deals) + 7 * run
    team = [("M1", "low_lead_gen", "high", "team", "all", "New pipeline averaged 1,200 per day, below the target."),
            ("M6", "low_existing_share", "medium", "team", "all", "Existing customers hold 12% of open value.")]
    team += [("M7", "metric_unavailable", "low", "team", "all", f"{m} is empty because an input is missing.")
             for m in ("win_rate", "avg_sales_cycle_days", "sales_velocity_per_day")]
    parts = [pd.DataFrame(team, columns=["rule", "check", "severity", "scope", "key", "message"], dtype=object)]
    for (check, rule, sev, _, text), m in zip(CHECKS, masks, strict=True):
        keys = ids[m]
        parts.append(pd.DataFrame({
            "rule": rule, "check": check, "severity": sev, "scope": "deal", "key": keys,
            "message": np.array([text.format(k=k, d=d) for k, d in zip(keys.tolist(), days[m].tolist(), strict=True)],
                                dtype=object)}, dtype=object))
    frame = pd.concat(parts, ignore_index=True)
    order = np.lexsort((frame["rule"].to_numpy(), frame["severity"].map(RANK).to_numpy()))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["opportunity_id"] = frame["key"].str.split(":").str[-1].astype(object)
    frame["value"] = 1.0
    frame["threshold"] = 0.0
    frame["advice"] = "Keep the fields complete and the sources fresh."
    return frame


def _proc_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def _old_sources(rev: str, folder: Path) -> Path:
    for rel in ("flows/notify.py", "connectors/state/digest_flags.py", "connectors/state/db.py"):
        out = folder / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True, capture_output=True,
                                      text=True).stdout)
    for pkg in ("flows", "connectors"):
        (folder / pkg / "__init__.py").write_text("")
    return folder


def prepare(version: str, rows: int, db: Path) -> None:
    """Store the previous run (its own process: its memory does not count)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{db}")
    if version == "before":
        from flows import notify

        notify.save_flags(engine, "pipeline", D1, notify.flag_lines(flags_frame(rows, 0)))
    else:
        from flows.notify import remember_flags

        remember_flags(engine, "pipeline", D1, flags_frame(rows, 0))
    engine.dispose()


def run_case(version: str, rows: int, db: Path) -> dict:
    """The timed part: the next run's flag work against the stored previous run."""
    import sqlalchemy as sa

    from flows import notify

    engine = sa.create_engine(f"sqlite:///{db}")
    current = flags_frame(rows, 1)
    gc.collect()
    rss0 = _proc_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    t0 = time.perf_counter()
    if version == "before":
        lines = notify.flag_lines(current)
        _, prev_lines = notify.previous_flags(engine, "pipeline", D2)
        new, resolved = notify.flag_diff(lines, prev_lines)
        notify.save_flags(engine, "pipeline", D2, lines)
        counts, top = (len(new), len(resolved)), [f.key for f in new[:5] + resolved[:5]]
    else:
        summary = notify.remember_flags(engine, "pipeline", D2, current)
        d = summary.diff
        counts, top = (d.new_count, d.resolved_count), [f.key for f in d.new + d.resolved]
    seconds = time.perf_counter() - t0
    growth = (_proc_kb("VmHWM") - rss0) / 1024
    engine.dispose()
    return {"seconds": seconds, "rss_growth_mb": growth, "flags": len(current), "new": counts[0],
            "resolved": counts[1], "top": top, "db_mb": db.stat().st_size / 1e6, "notify": notify.__file__}


def measure(version: str, rows: int, repeat: int, before_rev: str) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        path = [str(ROOT)]
        if version == "before":
            path.insert(0, str(_old_sources(before_rev, Path(tmp) / "src")))
        env["PYTHONPATH"] = os.pathsep.join(path)
        for i in range(repeat):
            db = Path(tmp) / f"state-{i}.db"
            for step in ("--prepare", "--case"):
                out = subprocess.run([sys.executable, __file__, step, version, "--rows", str(rows), "--db", str(db)],
                                     env=env, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            db.unlink()
    first = results[0]
    assert all(("src" in r["notify"]) == (version == "before") for r in results), "wrong notify.py imported"
    return {**first, "seconds": statistics.median(r["seconds"] for r in results),
            "rss_growth_mb": statistics.median(r["rss_growth_mb"] for r in results),
            "all_seconds": [round(r["seconds"], 2) for r in results]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[240_000, 2_400_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before-rev", default=DEFAULT_BEFORE)
    ap.add_argument("--versions", nargs="+", default=["before", "after"])
    ap.add_argument("--case", choices=["before", "after"])
    ap.add_argument("--prepare", choices=["before", "after"])
    ap.add_argument("--db")
    args = ap.parse_args()
    if args.case or args.prepare:
        sys.path.insert(0, os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or str(ROOT))
        if args.prepare:
            prepare(args.prepare, args.rows[0], Path(args.db))
        else:
            print(json.dumps(run_case(args.case, args.rows[0], Path(args.db))))
        return 0
    print(f"| flags | version | seconds (median of {args.repeat}) | runs | peak RSS growth | DB after 2 runs | new "
          "| resolved |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    tops = {}
    for rows in args.rows:
        for version in args.versions:
            r = measure(version, rows, args.repeat, args.before_rev)
            tops[(rows, version)] = (r["new"], r["resolved"], r["top"])
            print(f"| {r['flags']:,} | {version} | {r['seconds']:.2f} s | {r['all_seconds']} | "
                  f"{r['rss_growth_mb']:,.0f} MB | {r['db_mb']:,.0f} MB | {r['new']:,} | {r['resolved']:,} |", flush=True)
        if len(args.versions) == 2:
            same = tops[(rows, "before")] == tops[(rows, "after")]
            print(f"<!-- {rows}: counts and top identities equal before/after: {same} -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
