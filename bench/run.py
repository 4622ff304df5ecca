"""Benchmark harness: each stage of a sync at N deals, one process per case, median of R runs.

    python bench/run.py --rows 10000 100000 1000000 --repeat 3

Stages: canonicalise (read CSV + validate), analytics (metrics + flags), render (the whole
workbook), and the two references on the same Opportunities frame: the naive path
(`DataFrame.to_excel(engine="openpyxl")`) and the fastest raw writer on this machine
(rustpy-xlsxwriter, if installed). Writes bench/results.md. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

AS_OF = date(2026, 6, 30)
CASES = ("canonicalize", "analytics", "render", "naive", "raw", "e2e", "e2e_unchanged", "e2e_unchanged_analysed")


def _config_yaml(folder: Path) -> str:
    demo = (ROOT / "config" / "demo.yaml").read_text()
    demo = demo.replace("../out/demo/deals.csv", str(folder / "deals.csv"))
    demo = demo.replace("../out/demo/stage_history.csv", str(folder / "stage_history.csv"))
    demo = demo.replace("../out/demo/partner-deals.xlsx", str(folder / "partner-deals.xlsx"))
    return demo.replace("../out/pipeline.xlsx", str(folder / "pipeline.xlsx"))


def prepare(rows: int, work: Path) -> Path:
    """Generate the synthetic org once per N (not timed); returns its folder."""
    import openpyxl

    from transforms.demo_data import generate_demo

    folder = work / f"n{rows}"
    if (folder / "ready").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    deals, history = generate_demo(AS_OF, n_deals=rows)
    deals.to_csv(folder / "deals.csv", index=False)
    history.to_csv(folder / "stage_history.csv", index=False)
    wb = openpyxl.Workbook()
    wb.active.title = "Deals"
    wb.active.append(list(deals.columns))
    wb.save(folder / "partner-deals.xlsx")
    (folder / "bench.yaml").write_text(_config_yaml(folder))
    _canonical(folder, save=True)
    (folder / "ready").write_text("ok")
    return folder


def _canonical(folder: Path, save: bool = False):
    from config.loader import load_config
    from connectors.sources.files import extract_csv
    from transforms.canonical import canonicalize, canonicalize_history

    cfg = load_config(folder / "bench.yaml").config
    src = cfg.sources[0]
    ext = extract_csv(src)
    res = canonicalize(ext.records, source=src.name, stages=cfg.pipeline.stages, stage_map=src.stage_map, tz=cfg.tz)
    hist = canonicalize_history(ext.history, source=src.name, tz=cfg.tz, stages=cfg.pipeline.stages, stage_map={})
    if save:
        with open(folder / "canonical.pkl", "wb") as fh:
            pickle.dump((res.loaded, res.rejected, hist), fh)
    return cfg, res, hist


def _load_canonical(folder: Path):
    from config.loader import load_config

    with open(folder / "canonical.pkl", "rb") as fh:
        loaded, rejected, hist = pickle.load(fh)
    return load_config(folder / "bench.yaml").config, loaded, rejected, hist


def run_case(case: str, folder: Path) -> dict:
    """One measurement in this process; returns seconds and peak RSS."""
    if case == "canonicalize":
        t = time.perf_counter()
        _canonical(folder)
        seconds = time.perf_counter() - t
    elif case == "analytics":
        from transforms.analytics import build_analytics

        cfg, loaded, _, hist = _load_canonical(folder)
        t = time.perf_counter()
        build_analytics(loaded, hist, cfg, AS_OF)
        seconds = time.perf_counter() - t
    elif case == "render":
        from connectors.workbook.xlsx_writer import write_workbook
        from transforms.analytics import build_analytics
        from transforms.workbook_layout import opportunities_sheet, rejected_sheet

        cfg, loaded, rejected, hist = _load_canonical(folder)
        a = build_analytics(loaded, hist, cfg, AS_OF)
        sheets = [*a.sheets, opportunities_sheet(a.opportunities), rejected_sheet(rejected)]
        t = time.perf_counter()
        write_workbook(folder / "render.xlsx", sheets=sheets, summary=a.summary)
        seconds = time.perf_counter() - t
    elif case == "naive":
        from transforms.workbook_layout import opportunities_sheet

        _, loaded, _, _ = _load_canonical(folder)
        frame = opportunities_sheet(loaded).frame
        t = time.perf_counter()
        frame.to_excel(folder / "naive.xlsx", engine="openpyxl", index=False, sheet_name="Opportunities")
        seconds = time.perf_counter() - t
    elif case == "raw":
        import rustpy_xlsxwriter

        from transforms.workbook_layout import opportunities_sheet

        _, loaded, _, _ = _load_canonical(folder)
        frame = opportunities_sheet(loaded).frame
        for c in frame.columns:  # rustpy refuses NaT: hand it None (not timed)
            if str(frame[c].dtype).startswith("datetime64"):
                frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
        t = time.perf_counter()
        rustpy_xlsxwriter.FastExcel(str(folder / "raw.xlsx")).sheet("Opportunities", frame).save()
        seconds = time.perf_counter() - t
    elif case in ("e2e", "e2e_unchanged", "e2e_unchanged_analysed"):
        # the whole run in one process (CSV source, validation, analytics, workbook, local file, state
        # commit); e2e starts from an empty state, e2e_unchanged runs again on e2e's state (nothing changed:
        # the kept workbook is written again), e2e_unchanged_analysed too but analyses and renders as a
        # run whose as_of moved on would (the validated rows reused)
        import shutil

        from flows.pipeline import run_pipeline

        state = folder / ".state"
        if case == "e2e":
            shutil.rmtree(state, ignore_errors=True)
        t = time.perf_counter()
        result = run_pipeline(folder / "bench.yaml", AS_OF, reuse_workbook=case != "e2e_unchanged_analysed")
        seconds = time.perf_counter() - t
        assert result.sources[0].reused is (case != "e2e"), result.sources[0]
        assert result.workbook_reused is (case == "e2e_unchanged"), case
    else:
        raise SystemExit(f"unknown case {case}")
    return {"case": case, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM). ru_maxrss would include the parent's at fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(case: str, folder: Path, repeat: int) -> dict | None:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--folder", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"  {case}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            return None
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {"case": case, "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def _versions() -> str:
    from importlib.metadata import version

    out = []
    for pkg in ("pandas", "numpy", "xlsxwriter", "openpyxl", "prefect", "rustpy-xlsxwriter"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except Exception:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--naive-max-rows", type=int, default=1_000_000,
                    help="skip the naive reference above this N (it takes minutes and GBs)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "pipeline-sync-bench"))
    ap.add_argument("--out", default=str(HERE / "results.md"))
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.folder))))
        return 0
    work = Path(args.work)
    results: dict[int, dict[str, dict]] = {}
    for n in args.rows:
        print(f"N = {n:,}: preparing data")
        folder = prepare(n, work)
        results[n] = {}
        for case in args.cases:
            if case == "naive" and n > args.naive_max_rows:
                continue
            repeat = 1 if case == "naive" and n >= 1_000_000 else args.repeat
            r = measure(case, folder, repeat)
            if r:
                results[n][case] = r
                print(f"  {case:<13} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   (median of {r['runs']})")
    write_results(Path(args.out), results)
    print(f"wrote {args.out}")
    return 0


def _table_rows(text: str) -> dict[int, dict[str, dict]]:
    """The (N, case) rows of an earlier results table, so a partial run keeps the others."""
    out: dict[int, dict[str, dict]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].replace(",", "").isdigit():
            continue
        try:
            seconds, rss = float(cells[2]), float(cells[3].rstrip(" *"))
        except ValueError:
            continue
        out.setdefault(int(cells[0].replace(",", "")), {})[cells[1]] = {"seconds": seconds, "peak_rss_mb": rss}
    return out


def write_results(path: Path, results: dict[int, dict[str, dict]]) -> None:
    """Replace the generated table at the top of `path`; the sections after it (from the first
    `## ` heading) are kept."""
    kept = ""
    if path.exists():
        text = path.read_text()
        cut = text.find("\n## ")
        kept = text[cut:] if cut >= 0 else ""
        merged = _table_rows(text[:cut] if cut >= 0 else text)
        for n, cases in results.items():
            merged.setdefault(n, {}).update(cases)
        results = dict(sorted(merged.items()))
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}; {_versions()}.",
        f"Generated by `bench/run.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Seconds are medians"
        " (the naive reference at 1M runs once); peak RSS is the whole process's.",
        "",
        "| N | case | seconds | peak RSS MB | vs naive (x faster) | vs raw writer (x slower) |",
        "|---|---|---|---|---|---|",
    ]
    for n, cases in results.items():
        naive = cases.get("naive", {}).get("seconds")
        raw = cases.get("raw", {}).get("seconds")
        for case, r in cases.items():
            vs_naive = f"{naive / r['seconds']:.1f}" if naive and case == "render" else ""
            vs_raw = f"{r['seconds'] / raw:.2f}" if raw and case == "render" else ""
            lines.append(f"| {n:,} | {case} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {vs_naive} | {vs_raw} |")
    path.write_text("\n".join(lines) + "\n" + kept)


if __name__ == "__main__":
    sys.exit(main())
