"""`pipeline-sync`: run, validate and inspect syncs from the command line.

Exit codes: 0 ok, 2 config error, 1 run failure (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _quiet_prefect(verbose: bool) -> None:
    """Local runs on machines without internet: no telemetry, no analytics noise, warnings only."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")


class SecretRedactor(logging.Filter):
    """Replaces configured secret values (and URL passwords) in every log record with ***."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        from connectors.redact import redact

        try:
            msg = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: logging reports it itself
            return True
        clean = redact(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def install_redactor(secrets: tuple[str, ...]) -> None:
    redactor = SecretRedactor(secrets)
    for name in ("", "prefect", "pipeline_sync", "connectors", "flows"):
        logger = logging.getLogger(name)
        logger.addFilter(redactor)
        for h in logger.handlers:
            h.addFilter(redactor)


FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2200, 12, 31)  # the years validation accepts in data
OWN_LOGGERS = ("pipeline_sync", "flows", "connectors", "transforms", "config")


def configure_logging(verbosity: int) -> None:
    """0: warnings only; 1 (-v): our own steps at INFO, other libraries at WARNING; 2 (-vv): everything at INFO."""
    logging.basicConfig(level=logging.INFO if verbosity >= 2 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbosity == 1:
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)


def _as_of(text: str) -> date:
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--as-of must be YYYY-MM-DD, got {text!r}") from exc
    if not FIRST_DAY <= day <= LAST_DAY:
        raise argparse.ArgumentTypeError(f"--as-of {text} is out of range: use a date from {FIRST_DAY} to {LAST_DAY}")
    return day


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline-sync",
        description="Sync sales opportunities from CSV/Excel, HubSpot, Salesforce and Tableau into a "
        "formatted Excel workbook with pipeline metrics and mistake flags, in a local folder or on "
        "OneDrive/SharePoint.",
        epilog="Exit codes: 0 ok, 1 run failure, 2 config error.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: our own steps at INFO level; -vv: every library's log too (HTTP lines included)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the sync now, locally (Prefect's temporary local mode)",
                         description="Extract every source, compute the metrics and flags, write the workbook "
                         "to every destination. Runs as a Prefect flow without a Prefect server.")
    run.add_argument("--config", required=True, help="path to the YAML config")
    run.add_argument("--as-of", type=_as_of, help="compute as of this date (YYYY-MM-DD); default: today in the config's time zone")
    run.add_argument("--full-refresh", action="store_true", help="ignore incremental cursors and pull every record again")
    run.add_argument("--no-prefect", action="store_true", help="run the same steps as plain functions, without Prefect")

    val = sub.add_parser("validate", help="check the config and that file sources are readable; writes nothing",
                         description="Validate the config (every problem at once) and check that file sources exist "
                         "and are readable. CRM sources are not contacted: use check-source for them.")
    val.add_argument("--config", required=True, help="path to the YAML config")

    chk = sub.add_parser("check-source", help="pull one source and show how its rows map; writes nothing",
                         description="Prove credentials and mapping of one source: pulls it, validates its rows and "
                         "prints the counts, the rejection reasons and a sample of mapped rows. Writes no state and no workbook.")
    chk.add_argument("--config", required=True, help="path to the YAML config")
    chk.add_argument("--source", required=True, help="the source's name in the config")
    chk.add_argument("--sample", type=int, default=5, help="how many mapped rows to show (default 5)")

    demo = sub.add_parser("demo-data", help="write the bundled demo org's files (deals, stage history, partner export)",
                          description="Generate the demo data used by config/demo.yaml: deterministic, anchored to as_of "
                          "so the demo always looks current.")
    demo.add_argument("--out", default="out/demo", help="folder to write into (default out/demo)")
    demo.add_argument("--as-of", type=_as_of, help="anchor date (default: today)")
    demo.add_argument("--history-weeks", type=int, default=0, metavar="N",
                      help="also store the weekly snapshots of the N weeks before as_of (a backfill), so the first "
                      "run's Trends, Changes and Movement have history; dates already stored are skipped (default 0)")
    demo.add_argument("--config", help="with --history-weeks: the config whose state gets the snapshots; it must read "
                      "the files in --out (default: the demo.yaml written into --out)")

    login = sub.add_parser("login", help="sign in once (device code) for a delegated OneDrive destination",
                           description="Device-code sign-in for destinations with auth: delegated; the token cache is "
                           "saved owner-only so scheduled runs reuse the refresh token.")
    login.add_argument("--config", required=True, help="path to the YAML config")

    srv = sub.add_parser("serve", help="serve the configs' schedules as Prefect deployments (starts a local Prefect server if needed)",
                         description="Register one deployment per `schedule:` entry and run them on time until Ctrl-C. "
                         "Without PREFECT_API_URL a local Prefect server (UI included) is started on 127.0.0.1 and "
                         "stopped on exit; with PREFECT_API_URL set that server is used.")
    srv.add_argument("--config", required=True, action="append", help="path to a YAML config (repeat for several configs)")
    srv.add_argument("--port", type=int, help="port of the local Prefect server (default: a free port)")
    srv.add_argument("--no-ui", action="store_true", help="start the local Prefect server without its UI")

    trg = sub.add_parser("trigger", help="create a run of the config's deployment on the Prefect server (shows in the UI)",
                         description="Create a flow run of the deployment `pipeline-sync serve` (or prefect deploy) "
                         "registered for this config, on the server in PREFECT_API_URL.")
    trg.add_argument("--config", required=True, help="path to the YAML config")
    trg.add_argument("--report", help="a named report of `reports:` (its own deployment; default: the whole config)")
    trg.add_argument("--wait", action="store_true", help="wait until the run has finished")

    bf = sub.add_parser("backfill", help="compute (and store) every report as it stood on each past date",
                        description="One as-of computation per date (day, week end, month end or quarter end) over "
                        "--from..--to, from the stored source state (CRM) and the files; stores each date's snapshot "
                        "(Trends/Changes history) and, with backfill.write_workbooks: true, writes one workbook per "
                        "date. Completed dates are skipped unless --force. See docs/backfill.md.")
    bf.add_argument("--config", required=True, help="path to the YAML config")
    bf.add_argument("--from", dest="start", required=True, type=_as_of, help="first date (YYYY-MM-DD)")
    bf.add_argument("--to", dest="end", required=True, type=_as_of, help="last date (YYYY-MM-DD)")
    bf.add_argument("--every", required=True, choices=["day", "week", "month", "quarter"],
                    help="each day, or the last day of each week (Sunday), month or quarter in the range")
    bf.add_argument("--force", action="store_true", help="recompute dates already completed")
    bf.add_argument("--refetch", action="store_true", help="pull every source again instead of its stored state")
    bf.add_argument("--concurrency", type=int, help="workbooks rendered and published at once (default: backfill.concurrency)")
    bf.add_argument("--report", action="append", dest="reports", help="only this report (repeatable; default: all)")
    return p


def _load(path: str) -> Any:
    from config.loader import load_config

    loaded = load_config(path)
    install_redactor(loaded.secrets)
    return loaded


def _progress(kind: str, data: Any) -> None:
    if kind == "page":
        print(f"  {data.get('source', '')}: {data.get('records', 0):,} records, {data.get('pages', 0)} pages",
              file=sys.stderr)
    elif kind in ("retry", "wait"):  # retries after errors, and rate-limit pacing
        print(f"  waiting {data.get('wait', 0):.1f}s: {data.get('reason', '')}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    _preflight(loaded)
    if args.no_prefect:
        from flows.pipeline import result_summary, run_pipeline
        from flows.schedules import lock_path, report_lock

        report = loaded.config.report
        with report_lock(lock_path(loaded.base_dir / ".state", report), "wait", run_id="cli",
                         on_wait=lambda h: print(f"  waiting for run {h.get('run_id') or '?'} of report {report} "
                                                 f"(since {h.get('since', '?')}) to finish", file=sys.stderr)):
            summary = result_summary(run_pipeline(args.config, args.as_of, full_refresh=args.full_refresh,
                                                  on_event=_progress, loaded=loaded))
    else:
        server = _prefect_server_for_run(loaded)
        from flows.sync import run_manual

        if not args.verbose:  # failures end in one line from us, not Prefect's tracebacks
            for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        if server is not None:
            _wait_for(server)
        summary = run_manual(str(Path(args.config).resolve()), args.as_of, args.full_refresh)
    print_summary(summary, stages=args.verbose > 0)
    return EXIT_OK


def print_summary(summary: dict[str, Any], *, stages: bool = False) -> None:
    """The run's outcome; with `stages` (-v) also each step's time and peak memory."""
    print(f"pipeline-sync run {summary['run_id']}: as of {summary['as_of']} (period {summary['period']})")
    for s in summary["sources"]:
        stale = "  [STALE: failed or empty this run; M5 source_stale]" if s["stale"] else (
            "  (unchanged since the last run)" if s.get("unchanged") else "")
        print(f"  source {s['name']}: {s['read']:,} read, {s['loaded']:,} loaded, {s['rejected']:,} rejected{stale}")
    if summary.get("flags") is not None:
        print(f"  flags: {summary['flags']:,}")
    for out in summary["outputs"]:
        print(f"  wrote {out}")
    if stages and summary.get("stages"):
        print("  stages: " + ", ".join(f"{s['name']} {s['seconds']:.2f} s ({s['peak_mib']:,.0f} MiB peak)"
                                       for s in summary["stages"]))


def _preflight(loaded: Any) -> None:
    """Refuse, as a config error, a run whose source files cannot be read (before Prefect starts)."""
    from config.loader import ConfigError
    from flows.preflight import source_file_problems

    if problems := source_file_problems(loaded.config):
        raise ConfigError(loaded.path, problems)


def _prefect_server_for_run(loaded: Any) -> Any:
    """Point Prefect (before it is imported) at the server for this run: the one in PREFECT_API_URL, else
    the one `serve` left running for this config, else a temporary local one started now, whose start-up
    overlaps the run's imports (returned, to wait for; it stops when the process exits)."""
    from flows.server_record import find_server

    if os.environ.get("PREFECT_API_URL"):
        return None
    if url := find_server(loaded.base_dir / ".state"):
        os.environ["PREFECT_API_URL"] = url
        return None
    from flows.local_server import start_for_run

    server = start_for_run()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def _wait_for(server: Any) -> None:
    from connectors.errors import PipelineSyncError

    try:
        server.wait_healthy(step=0.05)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise PipelineSyncError(f"{first}; its log: {server.log_path}") from None


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    cfg = loaded.config
    _preflight(loaded)
    print(f"{loaded.path}: valid ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations)")
    from connectors import registry
    from flows.preflight import source_files

    empty = {name for _, name, path in source_files(cfg) if Path(path).stat().st_size == 0}
    for src in cfg.sources:
        kind = ("file empty (0 bytes): the run will treat it as returning nothing" if src.name in empty
                else "file readable" if registry.source_type(src.type).local else "not contacted (use check-source)")
        print(f"  source {src.name} ({src.type}): {kind}")
    return EXIT_OK


def cmd_check_source(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from connectors.extracted import ExtractContext
    from connectors.http.session import Observer
    from connectors.registry import extractor_for
    from transforms.canonical import canonicalize
    from transforms.currency import rate_table

    loaded = _load(args.config)
    cfg = loaded.config
    matches = [s for s in cfg.sources if s.name == args.source]
    if not matches:
        names = ", ".join(s.name for s in cfg.sources)
        print(f"no source named {args.source!r} in {loaded.path}; sources: {names}", file=sys.stderr)
        return EXIT_CONFIG
    src = matches[0]
    now = datetime.now(UTC)
    ctx = ExtractContext(engine=None, observer=Observer(on_event=_progress), as_of=now.astimezone(cfg.tz).date(),
                         run_started=now, tz=cfg.tz, full_refresh=True, state_dir=loaded.base_dir / ".state")
    extracted = extractor_for(src.type)(src, ctx)
    res = canonicalize(extracted.records, source=src.name, stages=cfg.pipeline.stages, stage_map=src.stage_map,
                       tz=cfg.tz, date_format=getattr(src, "date_format", None),
                       reporting_currency=cfg.inputs.currency, as_of=ctx.as_of,
                       rates=rate_table(cfg.inputs.currency, cfg.inputs.rates, extracted.rates),
                       decimal=getattr(src, "decimal", None))
    print(f"source {src.name} ({src.type}): {res.rows_read:,} read, {len(res.loaded):,} would load, "
          f"{len(res.rejected):,} would be rejected")
    if extracted.history is not None:
        print(f"  stage history rows: {len(extracted.history):,}")
    for note in extracted.notes:
        print(f"  note: {note}")
    for line in rejection_summary(res.rejected):
        print(line)
    if len(res.loaded) and args.sample > 0:
        import pandas as pd

        cols = ["opportunity_id", "name", "owner", "stage", "status", "amount", "created_date", "close_date"]
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(res.loaded[cols].head(args.sample).to_string(index=False))
    return EXIT_OK


def rejection_summary(rejected, reasons: int = 10, rows: int = 5) -> list[str]:
    """The check-source lines for rejected rows: each kind of reason (values masked) with its count, the
    file rows it was found on (header = row 1) and the first such row's reason in full."""
    if not len(rejected):
        return []
    each = rejected[["row", "reason"]].assign(reason=rejected["reason"].str.split("; ")).explode("reason")
    each["kind"] = each["reason"].str.replace(r"'[^']*'", "'…'", regex=True)
    lines = ["  rejection reasons (row = the line in the source, header = row 1):"]
    groups = sorted(each.groupby("kind", sort=False), key=lambda kv: (-len(kv[1]), kv[0]))
    for kind, group in groups[:reasons]:
        shown = ", ".join(str(r) for r in group["row"].head(rows))
        more = f" and {len(group) - rows:,} more" if len(group) > rows else ""
        lines.append(f"    {len(group):>6,}  {kind}  ({'row' if len(group) == 1 else 'rows'} {shown}{more})")
        lines.append(f"            e.g. row {group['row'].iloc[0]}: {group['reason'].iloc[0]}")
    return lines


def cmd_login(args: argparse.Namespace) -> int:
    from config.models import OneDriveDestinationConfig
    from connectors.http.msal_auth import device_code_login

    loaded = _load(args.config)
    dests = [d for d in loaded.config.destinations if isinstance(d, OneDriveDestinationConfig) and d.auth == "delegated"]
    if not dests:
        print("no onedrive destination with auth: delegated in this config; nothing to sign in to", file=sys.stderr)
        return EXIT_CONFIG
    for d in dests:
        account = device_code_login(d, echo=print)
        print(f"signed in as {account}; scheduled runs will reuse this sign-in")
    return EXIT_OK


MAX_HISTORY_WEEKS = 104  # the demo's deals span 18 months: older snapshots would be empty


def cmd_demo_data(args: argparse.Namespace) -> int:
    import openpyxl

    from transforms.demo_data import generate_demo, generate_partner_deals

    if not 0 <= args.history_weeks <= MAX_HISTORY_WEEKS:
        print(f"pipeline-sync: demo-data: --history-weeks must be 0 to {MAX_HISTORY_WEEKS} "
              f"(got {args.history_weeks})", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    anchor = args.as_of or date.today()
    deals, history = generate_demo(anchor)
    deals.to_csv(out / "deals.csv", index=False)
    history.to_csv(out / "stage_history.csv", index=False)
    partner = generate_partner_deals(anchor)
    wb = openpyxl.Workbook()  # the partner team's weekly export
    ws = wb.active
    ws.title = "Deals"
    ws.append(list(partner.columns))
    for row in partner.itertuples(index=False):
        ws.append(list(row))
    wb.save(out / "partner-deals.xlsx")
    config_path = write_demo_config(out)
    print(f"demo data: {len(deals):,} deals, {len(history):,} stage history rows -> {out}/")
    print(f"demo config: {config_path} (pipeline-sync run --config {config_path})")
    if args.history_weeks:
        return demo_history(Path(args.config) if args.config else config_path, out, args.history_weeks, args.as_of)
    return EXIT_OK


def demo_history(config_path: Path, folder: Path, weeks: int, as_of: date | None) -> int:
    """The weekly snapshots of the `weeks` weeks before as_of (default: today in the config's time
    zone, as a run takes it) in the state of `config_path`, whose sources must read `folder`.

    A backfill of snapshots only (flows.backfill): the week ends (Sundays) strictly before as_of,
    so the run on as_of compares with the last of them; dates already stored are skipped.
    """
    from datetime import UTC, datetime, timedelta

    from config.loader import ConfigError
    from flows.backfill import backfill, outcome_table
    from flows.preflight import source_files

    loaded = _load(str(config_path))
    here = folder.resolve()
    if elsewhere := [f"{key} ({name}): {path} is not in {here}" for key, name, path in source_files(loaded.config)
                     if not Path(path).resolve().is_relative_to(here)]:
        raise ConfigError(loaded.path, [*elsewhere, "--history-weeks: give a --config that reads the demo files "
                                        "in --out, or leave --config out to use the demo.yaml written there"])
    end = (as_of or datetime.now(UTC).astimezone(loaded.config.tz).date()) - timedelta(days=1)
    start = end - timedelta(weeks=weeks) + timedelta(days=1)
    result = backfill(config_path, start, end, "week", loaded=loaded)
    if result.failed:
        print(outcome_table(result), file=sys.stderr)
        return EXIT_FAILURE
    done = sum(o.status == "done" for o in result.outcomes)
    print(f"demo history: {len(result.outcomes)} weekly snapshots {result.dates[0].isoformat()} .. "
          f"{result.dates[-1].isoformat()} in the state of {loaded.path} ({done} computed, "
          f"{len(result.outcomes) - done} already there) in {result.seconds:.1f}s")
    return EXIT_OK


def write_demo_config(folder: Path) -> Path:
    """The bundled config/demo.yaml, its paths pointed at the demo files in `folder`, as folder/demo.yaml.

    The installed package carries config/demo.yaml, whose paths (../out/demo/...) only fit a
    checkout; this copy reads the files beside it and writes the workbook there too.
    """
    import config

    text = (Path(config.__file__).parent / "demo.yaml").read_text(encoding="utf-8")
    text = text.replace("../out/demo/", "").replace("../out/pipeline.xlsx", "pipeline.xlsx")
    path = folder / "demo.yaml"
    path.write_text("# Written by `pipeline-sync demo-data`: config/demo.yaml reading the files in this folder.\n"
                    + text, encoding="utf-8")
    return path


def _echo(message: str) -> None:
    print(message, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve

    loaded = [_load(path) for path in args.config]
    try:
        serve(loaded, ui=not args.no_ui, port=args.port, echo=_echo)
    except (RuntimeError, ValueError) as exc:
        print(f"pipeline-sync: serve failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    from flows.serve import trigger

    loaded = _load(args.config)
    try:
        trigger(loaded, report=args.report, wait=args.wait, echo=_echo)
    except RuntimeError as exc:
        print(f"pipeline-sync: trigger failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    from flows.backfill import backfill, outcome_table

    loaded = _load(args.config)
    try:
        result = backfill(args.config, args.start, args.end, args.every, force=args.force, refetch=args.refetch,
                          concurrency=args.concurrency, reports=args.reports, loaded=loaded,
                          echo=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"pipeline-sync: backfill: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(outcome_table(result))
    return EXIT_FAILURE if result.failed else EXIT_OK


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "check-source": cmd_check_source, "login": cmd_login,
            "demo-data": cmd_demo_data, "serve": cmd_serve, "trigger": cmd_trigger, "backfill": cmd_backfill}


def main(argv: list[str] | None = None) -> int:
    from connectors.redact import RedactingStream

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(out), RedactingStream(err)  # every line printed is redacted
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_prefect(args.verbose >= 2)
    configure_logging(args.verbose)
    from sqlalchemy.exc import SQLAlchemyError

    from config.loader import ConfigError
    from connectors.errors import PipelineSyncError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    except PipelineSyncError as exc:
        print(f"pipeline-sync: {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except SQLAlchemyError as exc:  # e.g. the state database locked by another program
        from connectors.redact import redact

        detail = " ".join(redact(str(getattr(exc, "orig", None) or exc)).split())[:300]  # redacted before the cut
        print(f"pipeline-sync: {args.command} failed: state database: {detail}; nothing was committed",
              file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("pipeline-sync: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. a full TMPDIR while staging the workbook
        import errno
        import tempfile

        where = f": {exc.filename}" if getattr(exc, "filename", None) else (
            f" (the workbook is staged in {tempfile.gettempdir()}; set TMPDIR to a folder with room)"
            if exc.errno == errno.ENOSPC else "")
        print(f"pipeline-sync: {args.command} failed: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
