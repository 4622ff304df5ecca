"""Benchmark: build_analytics on N synthetic deals with ~4 stage-history rows each.

    .venv/bin/python bench/bench_metrics.py [--deals 1000000] [--seed 7]

Prints the time to generate the data and the time of build_analytics (the number to watch).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.models import AppConfig  # noqa: E402
from config.schema import CANONICAL_FIELDS  # noqa: E402
from config.snapshot_types import SnapshotHistory  # noqa: E402
from transforms.analytics import build_analytics  # noqa: E402

AS_OF = date(2026, 6, 15)


def make_config() -> AppConfig:
    return AppConfig.model_validate({
        "sources": [{"type": "csv", "name": "crm", "path": "x.csv"}],
        "destinations": [{"type": "file", "path": "out.xlsx"}],
        "inputs": {"spend": {"2026-Q2": 1_000_000.0}},
        "targets": {"product_mix": {"A": 0.4, "B": 0.3, "C": 0.3}, "new_pipeline_per_day_per_owner": 100.0},
    })


def generate(n: int, seed: int, cfg: AppConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deals over two years before AS_OF (some after it), and their stage entries."""
    rng = np.random.default_rng(seed)
    stages = [s.name for s in cfg.pipeline.stages]
    n_open = len(cfg.pipeline.open_stages)
    base = np.datetime64(AS_OF, "D")
    created = base - rng.integers(-20, 730, n).astype("timedelta64[D]")
    # final stage index: open stages 0..n_open-1, then won, lost
    final = rng.choice(len(stages), n, p=[0.12, 0.12, 0.12, 0.12, 0.12, 0.2, 0.2])
    cycle = rng.integers(1, 200, n).astype("timedelta64[D]")
    close = created + cycle
    status = np.array([s.status for s in cfg.pipeline.stages], dtype=object)[final]
    amount = np.round(rng.gamma(2.0, 10_000.0, n), 2)
    amount[rng.random(n) < 0.03] = np.nan
    ids = pd.Series(np.arange(n)).map("O{:07d}".format).to_numpy(dtype=object)
    frame = {
        "opportunity_id": ids,
        "name": ids,
        "account_id": pd.Series(rng.integers(0, n // 3 + 1, n)).map("A{}".format).to_numpy(dtype=object),
        "account_name": None,
        "owner": pd.Series(rng.integers(0, 200, n)).map("rep{:03d}".format).to_numpy(dtype=object),
        "team": None,
        "product": np.array(["A", "B", "C", "D"], dtype=object)[rng.integers(0, 4, n)],
        "stage": np.array(stages, dtype=object)[final],
        "status": status,
        "amount": amount,
        "currency": "USD",
        "created_date": created.astype("datetime64[ns]"),
        "close_date": close.astype("datetime64[ns]"),
        "stage_entered_date": np.datetime64("NaT", "ns"),
        "last_activity_date": (base - rng.integers(0, 90, n).astype("timedelta64[D]")).astype("datetime64[ns]"),
        "next_step_date": (base + rng.integers(-30, 30, n).astype("timedelta64[D]")).astype("datetime64[ns]"),
        "deal_type": np.array(["new", "existing"], dtype=object)[(rng.random(n) < 0.3).astype(int)],
        "lead_source": None,
    }
    for f in ("budget", "authority", "need", "timeline"):
        frame[f] = rng.random(n) < 0.7
    opps = pd.DataFrame(frame)[[f.name for f in CANONICAL_FIELDS]]
    opps["source"] = "crm"
    opps["row_id"] = "crm:" + opps["opportunity_id"]
    # history: each deal walks open stages 0..k (k = its final open stage, or a random one if closed)
    reach = np.where(final < n_open, final, rng.integers(0, n_open, n))
    steps = np.minimum(reach + 1, 4)  # ~4 rows per deal at most, starting k-3
    first = reach + 1 - steps
    deal = np.repeat(np.arange(n), steps)
    offset = np.arange(len(deal)) - np.repeat(np.cumsum(steps) - steps, steps)
    stage_idx = np.repeat(first, steps) + offset
    gap = np.maximum(cycle.astype(np.int64) // 5, 1)
    entered = created[deal] + (offset * gap[deal]).astype("timedelta64[D]")
    closed = final >= n_open
    hist = pd.DataFrame({
        "opportunity_id": ids[deal], "stage": np.array(stages, dtype=object)[stage_idx],
        "entered_date": entered.astype("datetime64[ns]"), "source": "crm",
    })
    close_rows = pd.DataFrame({
        "opportunity_id": ids[closed], "stage": np.array(stages, dtype=object)[final[closed]],
        "entered_date": close[closed].astype("datetime64[ns]"), "source": "crm",
    })
    return opps, pd.concat([hist, close_rows], ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--deals", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    cfg = make_config()
    t0 = time.perf_counter()
    opps, hist = generate(args.deals, args.seed, cfg)
    t1 = time.perf_counter()
    print(f"generated {len(opps):,} deals and {len(hist):,} history rows in {t1 - t0:.1f} s")
    # a snapshot from a week earlier feeds Trends, Changes and M7 volume_over_value, as in a real run
    week = AS_OF - timedelta(days=7)
    prev = build_analytics(opps, hist, cfg, week).snapshot
    metrics = pd.DataFrame({"as_of": [week] * len(prev.metrics), "metric": list(prev.metrics),
                            "value": [np.nan if v is None else v for v in prev.metrics.values()]})
    snapshots = SnapshotHistory(metrics=metrics, previous_as_of=week, previous_deals=prev.deals)
    for _ in range(args.repeat):
        t1, c1 = time.perf_counter(), time.process_time()
        a = build_analytics(opps, hist, cfg, AS_OF, snapshots=snapshots)
        t2, c2 = time.perf_counter(), time.process_time()
        print(f"build_analytics: {t2 - t1:.2f} s wall, {c2 - c1:.2f} s CPU ({len(a.opportunities):,} deals at as_of, "
              f"{len(a.metrics):,} metric rows, {len(a.flags):,} flags, "
              f"{len(next(x for x in a.sheets if x.name == 'Changes').frame):,} changes)")


if __name__ == "__main__":
    main()
