"""Whole-command timings of `pipeline-sync run`, side by side (issue 21). Never run by the tests.

    python bench/bench_cli.py --rows 300000 --repeat 3

Cases, each a fresh process, run in turn (A B C ... A B C ...) so machine drift hits all alike:
- `naive`: `pandas.read_csv(deals.csv).to_excel(out, engine="openpyxl")` of the same file;
- `no_prefect`: `pipeline-sync run --no-prefect`;
- `prefect_temporary`: `pipeline-sync run` with no server (Prefect's temporary API server);
- `prefect_served`: `pipeline-sync run` against the local server a `serve` left running (found
  through `.state/prefect-server.json`).
Also the demo (bench size `--demo`): the same three run variants. Prints a Markdown table and
writes it to bench/cli_results.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable
CLI = [PY, "-m", "flows.cli"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1"})
    return env | (extra or {})


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the largest child) of one run; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def prepare(rows: int, folder: Path) -> Path:
    """The synthetic org of `rows` deals as CSV files and a config writing to `folder`."""
    from datetime import date

    from transforms.demo_data import generate_demo

    folder.mkdir(parents=True, exist_ok=True)
    deals, history = generate_demo(date(2026, 6, 30), n_deals=rows)
    deals.to_csv(folder / "deals.csv", index=False)
    history.to_csv(folder / "stage_history.csv", index=False)
    demo = (ROOT / "config" / "demo.yaml").read_text()
    demo = demo.replace("../out/demo/deals.csv", str(folder / "deals.csv"))
    demo = demo.replace("../out/demo/stage_history.csv", str(folder / "stage_history.csv"))
    demo = demo.replace("../out/pipeline.xlsx", str(folder / "pipeline.xlsx"))
    (folder / "bench.yaml").write_text(_drop_partner_source(demo))
    return folder / "bench.yaml"


def _drop_partner_source(original: str) -> str:
    """The demo config without its second (partner Excel) source: one CSV source, as the naive path reads."""
    import yaml

    cfg = yaml.safe_load(original)
    cfg["sources"] = [s for s in cfg["sources"] if s.get("type") == "csv"]
    return yaml.safe_dump(cfg, sort_keys=False)


def start_served(config: Path) -> subprocess.Popen:
    """`pipeline-sync serve` on the config (its own local server); returns once the record exists."""
    record = config.parent / ".state" / "prefect-server.json"
    record.unlink(missing_ok=True)
    proc = subprocess.Popen([*CLI, "serve", "--config", str(config), "--no-ui"], env=_env(), cwd=config.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while not record.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("serve did not record its server")
        time.sleep(0.5)
    return proc


def measure(config: Path, repeat: int, naive: bool) -> dict[str, list[float]]:
    cases: dict[str, list[str]] = {
        "no_prefect": [*CLI, "run", "--no-prefect", "--config", str(config), "--as-of", "2026-06-30"],
        "prefect_temporary": [*CLI, "run", "--config", str(config), "--as-of", "2026-06-30"],
    }
    if naive:
        code = (f"import pandas as pd; pd.read_csv({str(config.parent / 'deals.csv')!r})"
                f".to_excel({str(config.parent / 'naive.xlsx')!r}, engine='openpyxl', index=False)")
        cases = {"naive": [PY, "-c", code], **cases}
    walls: dict[str, list[float]] = {k: [] for k in [*cases, "prefect_served"]}
    for _ in range(repeat):
        for name, cmd in cases.items():
            walls[name].append(timed(cmd, _env(), config.parent)[0])
    served = start_served(config)
    try:
        for _ in range(repeat):
            walls["prefect_served"].append(timed(cases["prefect_temporary"], _env(), config.parent)[0])
    finally:
        os.killpg(served.pid, 15)
        served.wait(timeout=60)
    return walls


def table(title: str, walls: dict[str, list[float]]) -> list[str]:
    med = {k: statistics.median(v) for k, v in walls.items() if v}
    lines = [f"### {title}", "", "| case | median s | runs | vs no_prefect | naive / case |", "|---|---|---|---|---|"]
    for k, m in med.items():
        vs = f"+{m - med['no_prefect']:.2f} s" if k != "no_prefect" else ""
        ratio = f"{med['naive'] / m:.1f}x" if "naive" in med and k != "naive" else ""
        lines.append(f"| {k} | {m:.2f} | {', '.join(f'{x:.2f}' for x in walls[k])} | {vs} | {ratio} |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "cli_results.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        out = ["# Manual runs: Prefect start-up and the whole command (bench/bench_cli.py)", "",
               f"Median of {args.repeat} fresh processes per case, cases interleaved; python {sys.version.split()[0]}, "
               f"{os.cpu_count()} cores. `naive` = pandas.read_csv + DataFrame.to_excel(engine='openpyxl') "
               "of the same deals.csv.", ""]
        demo_dir = work / "demo"
        demo_dir.mkdir()
        subprocess.run([*CLI, "demo-data", "--out", str(demo_dir / "out" / "demo"), "--as-of", "2026-06-30"],
                       env=_env(), cwd=ROOT, check=True, capture_output=True)
        shutil.copytree(ROOT / "config", demo_dir / "config", ignore=shutil.ignore_patterns(".state"))
        out += table("The bundled demo", measure(demo_dir / "config" / "demo.yaml", args.repeat, naive=False))
        config = prepare(args.rows, work / f"n{args.rows}")
        out += table(f"{args.rows:,} deals from CSV", measure(config, args.repeat, naive=True))
        args.out.write_text("\n".join(out))
        print("\n".join(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
