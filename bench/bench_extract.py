"""Extraction benchmark: the real HubSpot connector against the HubSpot fake, N synthetic deals.

    .venv/bin/python bench/bench_extract.py --rows 10000 100000 [--flow-rows 100000] [--profile]

Per N, with the fake (tests/fakes/hubspot.py on tests/fakes/server.py, HTTPS on 127.0.0.1) in a
child process so it does not share the connector's GIL:
1. a FULL extraction (connectors.sources.hubspot.extract.extract, state DB on): wall time, requests counted by
   the fake, checked against the pages needed (+ pipelines + owners); the state commit timed (cursor,
   records and the rows' version, as flows.pipeline.commit_state commits them);
2. 1% of the deals changed on the fake, then an INCREMENTAL extraction: its requests.
Then at `--flow-rows` deals, the scheduled run through flows.pipeline (plain functions, HubSpot
source at the fake, a file destination): one full run, then runs with NOTHING changed, timed
step by step (and, with --profile, a pyinstrument profile of one). Prints JSON lines and
writes bench/extract_results.json. Never run by the test suite.

The fake's rate window is opened wide (the connector would otherwise pause 10 s every ~185
calls, as on HubSpot): the seconds measured are this machine's work, and the report adds the
floor HubSpot's 190 calls / 10 s would impose.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

EXAMPLE = ROOT / "config" / "examples" / "hubspot.yaml"
TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"  # the fake's token (tests/fakes/hubspot.TOKEN)
DEFAULT_STAGES = ["appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
                  "contractsent", "closedwon", "closedlost"]
N_OWNERS = 40


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- synthetic deals


def synthetic_deals(n: int, modified_before: datetime, seed: int = 11) -> list[tuple[str, str, dict]]:
    """N HubSpot deals (id, ISO modified, properties) built column-wise with numpy.

    85% in the default pipeline spread over its stages, 15% renewals; each deal entered every
    stage up to its own (about 3 stage-entered dates each), 40 owners, 6 products, 5 lead sources.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    end = np.datetime64(modified_before.replace(tzinfo=None), "ms")
    created = end - np.timedelta64(730, "D") + (rng.random(n) * 700 * 86_400_000).astype("timedelta64[ms]")
    modified = created + ((end - np.timedelta64(1, "D") - created).astype(np.int64)
                          * rng.random(n)).astype("timedelta64[ms]")
    close = (created + (rng.integers(20, 240, n)).astype("timedelta64[D]")).astype("datetime64[D]")
    renewal = rng.random(n) < 0.15
    stage_ix = rng.choice(7, n, p=[0.2, 0.18, 0.14, 0.1, 0.08, 0.15, 0.15])
    step_days = rng.integers(3, 25, (n, 5)).astype("timedelta64[D]")

    def iso(a: Any) -> list[str]:
        return [s + "Z" for s in np.datetime_as_string(a.astype("datetime64[ms]"), unit="ms")]

    created_s, modified_s = iso(created), iso(modified)
    close_s = [s + "T00:00:00Z" for s in np.datetime_as_string(close, unit="D")]
    activity_s = iso(modified - np.timedelta64(2, "h"))
    entered = [iso(created + step_days[:, :j].sum(axis=1)) for j in range(6)]
    amount = np.round(rng.lognormal(9, 1.1, n), 2).astype(str)
    owners = [str(70_000_000 + k) for k in rng.integers(0, N_OWNERS, n)]
    products = np.array(["Widgets", "Gadgets", "Gizmos", "Doohickeys", "Sprockets", "Services"])[rng.integers(0, 6, n)]
    sources = np.array(["ORGANIC_SEARCH", "PAID_SEARCH", "REFERRALS", "DIRECT_TRAFFIC", "OFFLINE"])[rng.integers(0, 5, n)]
    dealtype = np.where(rng.random(n) < 0.6, "newbusiness", "existingbusiness")
    won_renewal = rng.random(n) < 0.5

    rows: list[tuple[str, str, dict]] = []
    for i in range(n):
        p = {"dealname": f"Deal {i + 1}", "amount": amount[i], "closedate": close_s[i], "createdate": created_s[i],
             "hubspot_owner_id": owners[i], "dealtype": dealtype[i], "deal_currency_code": "USD",
             "notes_last_updated": activity_s[i], "product_line": products[i], "hs_analytics_source": sources[i]}
        if i % 7 == 0:
            p["notes_next_activity_date"] = close_s[i]
        if renewal[i]:
            p["pipeline"], p["dealstage"] = "75e28846", "1002" if won_renewal[i] else "1001"
            p["hs_date_entered_1001"] = created_s[i]
            if won_renewal[i]:
                p["hs_date_entered_1002"] = entered[1][i]
        else:
            k = int(stage_ix[i])
            p["pipeline"], p["dealstage"] = "default", DEFAULT_STAGES[k]
            reached = k if k < 5 else i % 5
            for j in range(reached + 1):
                p[f"hs_date_entered_{DEFAULT_STAGES[j]}"] = entered[j][i]
            if k >= 5:
                p[f"hs_date_entered_{DEFAULT_STAGES[k]}"] = entered[min(reached + 1, 5)][i]
        rows.append((str(i + 1), modified_s[i], p))
    return rows


def synthetic_owners() -> list[dict]:
    teams = ["West", "East", "Central", "EMEA"]
    return [{"id": str(70_000_000 + k), "email": f"rep{k}@example.com", "firstName": "Rep", "lastName": f"{k:02d}",
             "userId": 500 + k, "type": "PERSON", "archived": False,
             "teams": [{"id": str(k % 4), "name": teams[k % 4], "primary": True}]} for k in range(N_OWNERS)]


# ----------------------------------------------------------------------------- the fake, in a child process


def _warm(hub: Any) -> None:
    """Build the fake's lazy caches (search index by modification time, property names, id order)
    now, outside any measured run. HubSpot keeps its indexes; the fake builds them on the first
    request after a change, which put ~8 s of the fake's own work at 1M into the timed run."""
    hub._query([], [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}])
    hub.property_names()
    hub._ordered(False)
    hub._ordered(True)


def _fake_main(conn: Any, n: int, tmp: str) -> None:
    """Serve a seeded fake; answer commands on `conn` until 'stop'."""
    from tests.fakes.hubspot import FakeHubSpot
    from tests.fakes.server import FakeServer

    hub = FakeHubSpot(clock=time.monotonic, rate_max=10**9, daily=10**9)
    hub.owners = synthetic_owners()
    t = time.perf_counter()
    rows = synthetic_deals(n, datetime.now(UTC) - timedelta(hours=1))
    hub.add_deals(rows)
    del rows
    _warm(hub)
    seeded = time.perf_counter() - t
    with FakeServer(hub, Path(tmp)) as srv:
        conn.send({"url": srv.url, "ca_path": srv.ca_path, "seed_seconds": seeded})
        while True:
            cmd, *args = conn.recv()
            if cmd == "stop":
                conn.send({"peak_rss_mb": peak_rss_mb()})
                return
            if cmd == "requests":  # counts by kind since the last call
                kinds: dict[str, int] = {}
                for r in srv.requests:
                    kind = r.path
                    if r.path == "/crm/v3/objects/deals":
                        kind += "?archived=" + (r.q("archived") or "false")
                    kinds[kind] = kinds.get(kind, 0) + 1
                srv.requests.clear()
                conn.send(kinds)
            elif cmd == "change":  # every `step`-th deal: amount + 1, modified at start + (i % span) ms
                step, start_iso, span_ms = args
                start = datetime.fromisoformat(start_iso)
                changed = 0
                with hub._lock:
                    for k in range(1, n + 1, step):
                        hub.update(str(k), start + timedelta(milliseconds=changed % span_ms),
                                   amount=str(float(hub.deals[str(k)]["properties"]["amount"]) + 1))
                        changed += 1
                    _warm(hub)
                conn.send(changed)


class Fake:
    def __init__(self, n: int, tmp: Path):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fake_main, args=(child, n, str(tmp)), daemon=True)
        self.proc.start()
        info = self.conn.recv()
        self.url, self.ca_path, self.seed_seconds = info["url"], info["ca_path"], info["seed_seconds"]

    def call(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def stop(self) -> float:
        rss = self.call("stop")["peak_rss_mb"]
        self.proc.join(10)
        return rss


# ----------------------------------------------------------------------------- config


def write_config(fake: Fake, folder: Path, raw_sheet: bool = True) -> Path:
    """config/examples/hubspot.yaml at the fake, a file destination and a state DB in `folder`."""
    import yaml

    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["sources"][0].update(base_url=fake.url, ca_bundle=fake.ca_path)
    if not raw_sheet:
        cfg["sources"][0].pop("raw_sheet", None)
    cfg["destinations"] = [{"type": "file", "path": str(folder / "out" / "pipeline-{as_of}.xlsx")}]
    cfg["state"] = {"url": f"sqlite:///{folder / 'state.db'}"}
    path = folder / ("hubspot.yaml" if raw_sheet else "hubspot-no-raw.yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load(path: Path):
    from config.loader import load_config

    return load_config(path, env={"HUBSPOT_TOKEN": TOKEN})


# ----------------------------------------------------------------------------- 1-3: extraction


def extract_case(n: int, work: Path, profile: bool = False, with_version: bool = True) -> dict:
    from connectors.extracted import ExtractContext
    from connectors.http.session import Observer
    from connectors.sources.hubspot.extract import OWNER_PAGE, extract
    from connectors.state.db import make_engine
    from connectors.state.source_state import save_state

    folder = work / f"extract-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    fake = Fake(n, folder)
    out: dict[str, Any] = {"n": n, "fake_seed_seconds": round(fake.seed_seconds, 2), "version_committed": with_version}
    try:
        loaded = load(write_config(fake, folder))
        cfg = loaded.config.sources[0]
        engine = make_engine(f"sqlite:///{folder / 'extract-state.db'}")

        def run(started: datetime, prof: Any = None) -> tuple[Any, float, dict]:
            obs = Observer()
            ctx = ExtractContext(engine=engine, observer=obs, as_of=date.today(), run_started=started, tz=UTC)
            if prof is not None:
                prof.start()
            t = time.perf_counter()
            ex = extract(cfg, ctx)
            seconds = time.perf_counter() - t
            if prof is not None:
                prof.stop()
            return ex, seconds, fake.call("requests")

        fake.call("requests")
        started1 = datetime.now(UTC)
        ex, seconds, kinds = run(started1)
        pages = math.ceil(n / cfg.page_size)
        expected = pages + 3 + math.ceil(N_OWNERS / OWNER_PAGE)  # deal pages + pipelines + properties + account details (record_url) + active owners
        out["full"] = {"seconds": round(seconds, 2), "requests": sum(kinds.values()), "by_path": kinds,
                       "expected_requests": expected, "rows": ex.rows_read,
                       "requests_per_10k": round(sum(kinds.values()) * 10_000 / n, 1),
                       "seconds_per_10k": round(seconds * 10_000 / n, 3),
                       "hubspot_rate_floor_seconds": round(sum(kinds.values()) / 19.0, 1)}
        assert ex.rows_read == n, (ex.rows_read, n)
        assert sum(kinds.values()) == expected, (kinds, expected)
        t = time.perf_counter()
        ps = ex.pending_state
        with engine.begin() as conn:
            save_state(conn, ex.source, ps.cursor, ps.upserts, ps.deletes, ps.replace_all,
                       version=ps.version if with_version else None)
        out["full"]["commit_seconds"] = round(time.perf_counter() - t, 2)
        del ex, ps

        # 3: 1% of the deals change after run 1's signpost; run 2's signpost is after them all
        changed_at = started1 + timedelta(milliseconds=5)
        changed = fake.call("change", 100, changed_at.isoformat(), 1000)
        started2 = max(datetime.now(UTC), changed_at + timedelta(seconds=1, milliseconds=10))
        time.sleep(max(0.0, (started2 - datetime.now(UTC)).total_seconds()))
        prof = None
        if profile:  # the incremental run under pyinstrument (its seconds then include the profiler's)
            from pyinstrument import Profiler

            prof = Profiler(interval=0.002)
        ex2, seconds2, kinds2 = run(started2, prof)
        if prof is not None:
            (HERE / "extract_profile_incremental.txt").write_text(prof.output_text(unicode=False, color=False))
        assert ex2.rows_read == n
        out["incremental"] = {"changed": changed, "seconds": round(seconds2, 2), "requests": sum(kinds2.values()),
                              "by_path": kinds2, "upserts": len(ex2.pending_state.upserts),
                              "search_pages_floor": math.ceil(changed / cfg.search_page_size)}
        t = time.perf_counter()
        ps = ex2.pending_state
        with engine.begin() as conn:
            save_state(conn, ex2.source, ps.cursor, ps.upserts, ps.deletes, ps.replace_all,
                       version=ps.version if with_version else None)
        out["incremental"]["commit_seconds"] = round(time.perf_counter() - t, 2)
    finally:
        out["fake_peak_rss_mb"] = round(fake.stop())
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


# ----------------------------------------------------------------------------- 4: nothing changed, whole flow


def timed_steps(path: Path, loaded: Any) -> dict[str, float]:
    """flows.pipeline.run_pipeline's steps called one by one (same order, same functions), timed."""
    import shutil

    from connectors.state.source_state import load_records
    from flows import pipeline as pl

    times: dict[str, float] = {}

    def step(name: str, fn: Any, *a: Any) -> Any:
        t = time.perf_counter()
        res = fn(*a)
        times[name] = round(time.perf_counter() - t, 3)
        return res

    t0 = time.perf_counter()
    run = step("prepare", lambda: pl.prepare(path, loaded=loaded))
    step("load_records (inside extract)", lambda: load_records(run.engine, run.config.sources[0].name))
    extracted, failures = step("extract", pl.extract_all, run)
    validated = step("validate", pl.validate, run, extracted, failures)
    result = step("analyze", pl.analyze, run, validated)
    staging = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        staged, _, _ = step("render", pl.render, run, result, staging)
        step("publish", pl.publish, run, 0, staged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    step("commit", pl.commit_state, run, extracted, result)
    step("keep validated rows", pl.keep_validated, run, extracted, validated)
    times["total (without the separate load_records)"] = round(
        time.perf_counter() - t0 - times["load_records (inside extract)"], 3)
    times["requests"] = extracted[0].requests
    times["upserts"] = len(extracted[0].pending_state.upserts)
    return times


def cli_runs(path: Path, repeat: int) -> dict[str, list[float]]:
    """Wall seconds of the scheduled command in a fresh process, nothing changed: `pipeline-sync run`
    without and with Prefect (a temporary local API, as a run without PREFECT_API_URL gets)."""
    import os
    import subprocess

    exe = str(Path(sys.executable).with_name("pipeline-sync"))
    env = {**os.environ, "HUBSPOT_TOKEN": TOKEN}
    env.pop("PREFECT_API_URL", None)
    out: dict[str, list[float]] = {}
    for label, extra in (("no_prefect", ["--no-prefect"]), ("prefect", [])):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([exe, "run", "--config", str(path), *extra], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(round(time.perf_counter() - t, 2))
        out[label] = times
    return out


def flow_case(n: int, work: Path, repeat: int, profile: bool, variants: bool = True) -> dict:
    from flows.pipeline import run_pipeline

    folder = work / f"flow-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    fake = Fake(n, folder)
    out: dict[str, Any] = {"n": n}
    try:
        path = write_config(fake, folder)
        loaded = load(path)
        t = time.perf_counter()
        first = run_pipeline(path, loaded=loaded)
        out["first_run_seconds"] = round(time.perf_counter() - t, 2)
        out["first_run_rows"] = first.sources[0].rows_loaded
        fake.call("requests")
        totals = []
        for _ in range(repeat):
            t = time.perf_counter()
            res = run_pipeline(path, loaded=loaded)
            totals.append(time.perf_counter() - t)
            assert res.sources[0].rows_loaded == first.sources[0].rows_loaded
            out.setdefault("nothing_changed_stages", []).append({st.name: round(st.seconds, 2) for st in res.stages})
        out["nothing_changed_run_pipeline_seconds"] = [round(x, 2) for x in totals]
        out["nothing_changed_median_seconds"] = round(statistics.median(totals), 2)
        out["nothing_changed_requests_per_run"] = sum(fake.call("requests").values()) / repeat
        if variants:
            out["steps"] = [timed_steps(path, loaded) for _ in range(repeat)]
            out["cli"] = cli_runs(path, repeat)
        # 1% of the deals change: the run validates only those and merges them into the kept rows
        incremental = []
        for _ in range(repeat):
            changed_at = datetime.now(UTC) + timedelta(milliseconds=5)
            changed = fake.call("change", 100, changed_at.isoformat(), 1000)
            time.sleep(1.1)
            t = time.perf_counter()
            res = run_pipeline(path, loaded=loaded)
            incremental.append({"seconds": round(time.perf_counter() - t, 2), "changed": changed,
                                "validated_rows": res.sources[0].validated_rows,
                                "rows_loaded": res.sources[0].rows_loaded,
                                "stages": {st.name: round(st.seconds, 2) for st in res.stages}})
        out["incremental_1pct_run_pipeline"] = incremental
        out["incremental_1pct_median_seconds"] = round(statistics.median(r["seconds"] for r in incremental), 2)
        out["incremental_1pct_vs_nothing_changed"] = round(
            out["incremental_1pct_median_seconds"] / out["nothing_changed_median_seconds"], 2)
        if variants:  # once each: without the example's raw sheet; with the cyclic GC off (its share)
            no_raw = write_config(fake, folder, raw_sheet=False)
            out["steps_without_raw_sheet"] = timed_steps(no_raw, load(no_raw))
            gc.disable()
            try:
                out["steps_gc_disabled"] = timed_steps(path, loaded)
            finally:
                gc.enable()
        if profile:  # one run with nothing changed (for comparison), then one with 1% of the deals changed
            from pyinstrument import Profiler

            prof = Profiler(interval=0.002)
            prof.start()
            run_pipeline(path, loaded=loaded)
            prof.stop()
            (HERE / "extract_profile_unchanged.txt").write_text(prof.output_text(unicode=False, color=False,
                                                                                 show_all=False))
            changed_at = datetime.now(UTC) + timedelta(milliseconds=5)
            fake.call("change", 100, changed_at.isoformat(), 1000)
            time.sleep(1.1)
            prof = Profiler(interval=0.002)
            prof.start()
            run_pipeline(path, loaded=loaded)
            prof.stop()
            (HERE / "extract_profile.txt").write_text(prof.output_text(unicode=False, color=False, show_all=False))
            out["profile"] = str(HERE / "extract_profile.txt")
    finally:
        out["fake_peak_rss_mb"] = round(fake.stop())
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def machine() -> dict:
    import importlib.metadata as md

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), "0")
    vers = {p: md.version(p) for p in ("pandas", "requests", "SQLAlchemy", "urllib3")}
    return {"cpu": cpu, "cores": mp.cpu_count(), "mem_gib": round(int(mem) / 1024**2, 1),
            "python": platform.python_version(), **vers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000], help="N for the extraction cases")
    ap.add_argument("--flow-rows", type=int, default=100_000, help="N for the nothing-changed flow run (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="nothing-changed runs (median)")
    ap.add_argument("--profile", action="store_true", help="pyinstrument profile of one flow run with 1%% changed (with --flow-rows 0: of the "
                    "extract case's incremental run, bench/extract_profile_incremental.txt)")
    ap.add_argument("--no-variants", action="store_true", help="skip the step-by-step, CLI, no-raw-sheet and GC-off runs")
    ap.add_argument("--extract-without-version", action="store_true",
                    help="the extract case commits no version (as before 2026-12-07): the incremental run "
                         "cannot tell that owners, stages and pipelines resolve as for the stored deals")
    ap.add_argument("--out", default=str(HERE / "extract_results.json"))
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "extract": [], "flow": None}
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for n in args.rows:
            res = extract_case(n, Path(tmp), args.profile and not args.flow_rows, not args.extract_without_version)
            print(json.dumps(res), flush=True)
            results["extract"].append(res)
        if args.flow_rows:
            results["flow"] = flow_case(args.flow_rows, Path(tmp), args.repeat, args.profile, not args.no_variants)
            print(json.dumps(results["flow"]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
