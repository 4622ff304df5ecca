"""Render-only benchmark: the flow's `render` step (excel_limits + About + write_workbook), repeated.

    .venv/bin/python bench/bench_render.py prepare --rows 100000      # once: real flow, pickled
    .venv/bin/python bench/bench_render.py time --rows 100000 --repeat 3 [--profile]

`prepare` runs the real scheduled flow (flows.pipeline prepare/extract_all/validate/analyze) on
N synthetic HubSpot deals served by the HubSpot fake (bench/bench_extract.py's machinery, the
example config with its 30-column raw sheet) and pickles the run's config, as_of, period and the
`Transformed` result into --work. `time` loads that pickle and times `flows.pipeline.render` on
it, one fresh process per repeat (median; peak RSS is VmHWM minus the frames' own load), and
with --profile writes a pyinstrument profile of one more render. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

WORK = Path(tempfile.gettempdir()) / "pipeline-sync-render-bench"


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def prepare(rows: int, work: Path) -> Path:
    """The flow's steps up to `analyze` against the fake; the result pickled (not timed)."""
    from bench_extract import Fake, load, write_config

    from flows import pipeline as pl

    folder = work / f"flow-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    fake = Fake(rows, folder)
    try:
        path = write_config(fake, folder)
        loaded = load(path)
        run = pl.prepare(path, loaded=loaded)
        extracted, failures = pl.extract_all(run)
        result = pl.analyze(run, pl.validate(run, extracted, failures))
    finally:
        fake.stop()
    out = work / f"render-{rows}.pkl"
    with open(out, "wb") as fh:
        pickle.dump({"loaded": run.loaded, "as_of": run.as_of, "period": run.period, "run_id": run.run_id,
                     "started": run.started, "result": result}, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return out


def _load(pkl: Path):
    from flows.pipeline import RunContext

    with open(pkl, "rb") as fh:
        d = pickle.load(fh)
    run = RunContext(loaded=d["loaded"], as_of=d["as_of"], period=d["period"], run_id=d["run_id"], started=d["started"])
    return run, d["result"]


def one(pkl: Path, profile: Path | None, chunk_rows: int | None = None) -> dict:
    """One render in this process: seconds, peak RSS above the loaded frames, file size."""
    import gc

    from connectors.workbook import xlsx_writer
    from flows.pipeline import render

    if chunk_rows:
        xlsx_writer.CHUNK_ROWS = chunk_rows

    run, result = _load(pkl)
    gc.collect()
    base = _rss_mb()
    staging = Path(tempfile.mkdtemp(prefix="bench-render-"))
    prof = None
    if profile is not None:
        from pyinstrument import Profiler

        prof = Profiler(interval=0.001)
        prof.start()
    t, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    staged, rows, _ = render(run, result, staging)
    seconds, cpu, main = time.perf_counter() - t, time.process_time() - cpu, time.thread_time() - main
    if prof is not None:
        prof.stop()
        profile.write_text(prof.output_text(unicode=False, color=False, show_all=False))
    size = staged.stat().st_size
    keep = WORK / f"last-{pkl.stem}.xlsx"
    staged.replace(keep)
    return {"seconds": seconds, "cpu_seconds": cpu, "main_thread_cpu_seconds": main, "peak_rss_mb": _vmhwm_mb(), "frames_rss_mb": base,
            "file_mb": size / 2**20, "rows": sum(rows.values()), "output": str(keep)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["prepare", "time", "one"])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", help="write a pyinstrument profile of one extra render to this file")
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--chunk-rows", type=int, help="the writer's rows per block (default: its own)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pkl = work / f"render-{args.rows}.pkl"
    if args.mode == "prepare":
        t = time.perf_counter()
        print(f"wrote {prepare(args.rows, work)} in {time.perf_counter() - t:.0f} s")
        return 0
    if args.mode == "one":
        print(json.dumps(one(pkl, Path(args.profile) if args.profile else None, args.chunk_rows)))
        return 0
    extra = ["--chunk-rows", str(args.chunk_rows)] if args.chunk_rows else []
    runs = []
    for _ in range(args.repeat):
        proc = subprocess.run([sys.executable, __file__, "one", "--rows", str(args.rows), "--work", str(work), *extra],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    res = {"rows": args.rows, "seconds": [round(r["seconds"], 2) for r in runs],
           "median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
           "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 2),
           "median_main_thread_cpu_seconds": round(statistics.median(r["main_thread_cpu_seconds"] for r in runs), 2),
           "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
           "frames_rss_mb": round(max(r["frames_rss_mb"] for r in runs)),
           "file_mb": round(runs[-1]["file_mb"], 1), "sheet_rows": runs[-1]["rows"]}
    print(json.dumps(res))
    if args.profile:
        subprocess.run([sys.executable, __file__, "one", "--rows", str(args.rows), "--work", str(work), *extra,
                        "--profile", args.profile], check=True, capture_output=True)
        print(f"profile: {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
