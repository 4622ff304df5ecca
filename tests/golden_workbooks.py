"""Golden workbooks: the demo and every config/examples/*.yaml (against tests/fakes), read back cell by cell.

    python -m tests.golden_workbooks dump OUT.json        # build every workbook, write their cells as JSON
    python -m tests.golden_workbooks compare A.json B.json  # list differing cells; exit 1 if any differ

Issue 16 ("behaviour unchanged"): dump before a refactor, dump after, compare. Every run uses a fixed
as_of, fresh temp folders (so CRM sources start without state) and the fakes' fixed seed data.
Each workbook is captured as: the sheet list; per sheet the tables (name -> ref), freeze panes,
autofilter, merged ranges, column widths, conditional-format ranges; and every cell holding a value
or a non-General number format (value with its type, number format).

What is masked (MASKED_ABOUT_KEYS, MASKED_ABOUT_PATTERN, CONFIG_SHA, `_normalise`), and why:
  - About "run id", "generated at (UTC)" and every "source <name>: extraction seconds" (the run's
    id, wall clock and timings: different on every run);
  - About "config sha256" of the examples only (a hash of the config file written for the run,
    which holds the temp folder and the fake's random port); the demo's config is copied verbatim,
    so its hash is kept;
  - text only: the temp folder is replaced by <TMP> and a fake's https://127.0.0.1:<port> by <FAKE>.
Nothing else is masked: a cell that differs between two dumps of the same commit is a bug to report.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import yaml

# ---- the ONE place naming project modules: update these lines when modules move ---------------
from flows.cli import main as cli_main
from tests.fakes.entra import FakeEntra
from tests.fakes.graph import FakeGraph
from tests.fakes.hubspot import TOKEN as HUBSPOT_TOKEN
from tests.fakes.hubspot import demo_server as hubspot_server
from tests.fakes.salesforce import running_fake as salesforce_server
from tests.fakes.server import FakeServer, Request, Response
from tests.fakes.tableau import FakeDatasource, FakeTableau

# ------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "config" / "examples"
DEMO_AS_OF = date(2026, 6, 30)
HUBSPOT_AS_OF = date(2026, 11, 27)  # as tests/sources/test_hubspot_flow.py
SALESFORCE_AS_OF = date(2025, 5, 2)  # as tests/sources/test_salesforce_flow.py
TABLEAU_AS_OF = date(2026, 3, 31)
ONEDRIVE_AS_OF = DEMO_AS_OF

# About-sheet rows (key in column A) whose value (column B) changes from run to run.
MASKED_ABOUT_KEYS = ("run id", "generated at (UTC)")
MASKED_ABOUT_PATTERN = re.compile(r"^source .+: extraction seconds$")  # wall-clock timing per source
CONFIG_SHA = "config sha256"  # masked only where the config written holds temp paths / fake ports
MASKED = "<MASKED>"
_FAKE_URL = re.compile(r"https?://127\.0\.0\.1:\d+")

Workbooks = dict[str, Path]


# ----------------------------------------------------------------------------- building


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cli(*args: str) -> None:
    """One `pipeline-sync` command (plain functions, no Prefect); its summary goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        code = cli_main(list(args))
    if code != 0:
        raise SystemExit(f"golden_workbooks: `pipeline-sync {' '.join(args)}` exited {code}")


def _run(cfg_path: Path, as_of: date) -> None:
    _cli("run", "--config", str(cfg_path), "--as-of", as_of.isoformat(), "--no-prefect")


def _example(name: str, folder: Path, edit: Callable[[dict], None]) -> Path:
    """config/examples/<name>.yaml with `edit` applied and a file destination in `folder/out`."""
    cfg = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    edit(cfg)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_demo(folder: Path) -> Workbooks:
    """`demo-data` + config/demo.yaml (its relative paths kept: config/ and out/demo/ side by side)."""
    (folder / "config").mkdir()
    cfg = folder / "config" / "demo.yaml"
    cfg.write_text((REPO / "config" / "demo.yaml").read_text())
    _cli("demo-data", "--out", str(folder / "out" / "demo"), "--as-of", DEMO_AS_OF.isoformat())
    _run(cfg, DEMO_AS_OF)
    return {"demo": folder / "out" / "pipeline.xlsx"}


def build_hubspot(folder: Path) -> Workbooks:
    with hubspot_server(folder) as (_hub, srv):
        def edit(cfg: dict) -> None:
            cfg["sources"][0].update(base_url=srv.url, ca_bundle=srv.ca_path)

        path = _example("hubspot", folder, edit)
        with _env(HUBSPOT_TOKEN=HUBSPOT_TOKEN):
            _run(path, HUBSPOT_AS_OF)
    return {"examples/hubspot": folder / "out" / f"pipeline-{HUBSPOT_AS_OF}.xlsx"}


def build_salesforce(folder: Path) -> Workbooks:
    with salesforce_server(folder) as sf:
        def edit(cfg: dict) -> None:  # as tests/sources/test_salesforce_flow.py: the fake has no Region__c
            src = cfg["sources"][0]
            src.update(domain=sf.server.url, ca_bundle=sf.server.ca_path, next_step_field="Next_Step_Date__c")
            del src["where"]

        path = _example("salesforce", folder, edit)
        with _env(SF_CLIENT_ID=sf.client_id, SF_CLIENT_SECRET=sf.client_secret):
            _run(path, SALESFORCE_AS_OF)
    return {"examples/salesforce": folder / "out" / f"pipeline-{SALESFORCE_AS_OF}.xlsx"}


TABLEAU_VIEW = "9f1c2d3e-4b5a-4c6d-8e7f-00112233aa01"
TABLEAU_TOKENS = {"etl-bot": "pat-secret-view", "vds-bot": "pat-secret-vds"}


def tableau_view_csv() -> bytes:
    """The example view's export: every header its `columns:` names, plus Region and Fiscal Year (filtered on)."""
    stages = ["Prospecting", "Qualification", "Contact", "Proposal", "Closing", "Closed Won", "Closed Lost"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Opportunity ID", "Opportunity Name", "Account Name", "Owner", "Team", "Product", "Stage",
                "Amount", "Currency", "Created Date", "Close Date", "Last Activity", "Type", "Region", "Fiscal Year"])
    for i in range(1, 61):
        created = date(2025, 7, 1) + timedelta(days=(i * 5) % 240)
        w.writerow([f"OPP-{i:04d}", f"Deal {i}", f"Account {i % 9}", ["Ana", "Ben", "Cy"][i % 3],
                    ["North", "South"][i % 2], ["Platform", "Analytics", "Services"][i % 3], stages[i % 7],
                    f"${(i * 1237) % 90_000 + 500:,}", "USD", f"{created.month}/{created.day}/{created.year}",
                    (created + timedelta(days=30 + i)).strftime("%m/%d/%Y"), created.strftime("%m/%d/%Y"),
                    ["New Business", "Existing Business"][i % 2], ["East", "West", "Central"][i % 3], "2026"])
    return buf.getvalue().encode()


def build_tableau(folder: Path) -> Workbooks:
    """Both example sources: the view (REST CSV) and the published data source (VizQL Data Service)."""
    fake = FakeTableau(tokens=dict(TABLEAU_TOKENS), sites={"SalesOps": "5b1c0a9e-0000-4000-8000-00000000a001"})
    fake.add_view(TABLEAU_VIEW, "Sales Pipeline", "Opportunities", tableau_view_csv())
    ds_luid = yaml.safe_load((EXAMPLES / "tableau.yaml").read_text())["sources"][1]["datasource_luid"]
    fake.datasources[ds_luid] = FakeDatasource([
        {"Opportunity ID": f"DS-{i:03d}", "Stage": ["Proposal", "Closed Won", "Closed Lost", "Contact"][i % 4],
         "Amount": 750.0 * i, "Created Date": (date(2025, 3, 1) + timedelta(days=7 * i)).isoformat(),
         "Region": ["East", "West", "Central"][i % 3]} for i in range(1, 41)])
    with FakeServer(fake, folder) as srv:
        def edit(cfg: dict) -> None:
            for src in cfg["sources"]:
                src.update(server_url=srv.url, ca_bundle=srv.ca_path)

        path = _example("tableau", folder, edit)
        with _env(TABLEAU_PAT_NAME="etl-bot", TABLEAU_PAT_SECRET=TABLEAU_TOKENS["etl-bot"],
                  TABLEAU_VDS_PAT_NAME="vds-bot", TABLEAU_VDS_PAT_SECRET=TABLEAU_TOKENS["vds-bot"]):
            _run(path, TABLEAU_AS_OF)
    return {"examples/tableau": folder / "out" / f"pipeline-{TABLEAU_AS_OF}.xlsx"}


class _GraphRouter:
    """Entra (sign-in) and Graph (drives) on one fake server, as tests/destinations/test_onedrive.py does."""

    def __init__(self, entra: FakeEntra, graph: FakeGraph):
        self.entra, self.graph = entra, graph

    def __call__(self, req: Request) -> Response:
        return self.graph(req) if req.path.startswith(("/v1.0/", "/up/")) else self.entra(req)


def build_onedrive(folder: Path) -> Workbooks:
    """Both example destinations (app -> a site's drive, delegated -> me); the bytes each upload stored."""
    deals = folder / "demo"
    _cli("demo-data", "--out", str(deals), "--as-of", ONEDRIVE_AS_OF.isoformat())
    mapping = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["sources"][0]["columns"]
    with open(deals / "deals.csv", newline="") as fh:  # the example's csv source has no `columns:`
        rows = list(csv.reader(fh))
    with open(folder / "opportunities.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([[mapping.get(h, h) for h in rows[0]], *rows[1:]])

    entra = FakeEntra()
    graph = FakeGraph(entra.valid)
    example = yaml.safe_load((EXAMPLES / "onedrive.yaml").read_text())
    app_dest, me_dest = example["destinations"]
    site_drive, me_drive = "b!goldenSITE0001", "b!goldenME00001"
    graph.add_drive(site_drive, site=app_dest["site"])
    graph.add_drive(me_drive, user="adele@contoso.com", me=True)
    with FakeServer(_GraphRouter(entra, graph), folder) as srv:
        cfg = yaml.safe_load((EXAMPLES / "onedrive.yaml").read_text())
        for dest in cfg["destinations"]:
            dest.update(tenant_id=entra.tenant, client_id=entra.client_id, authority=srv.url,
                        graph_url=srv.url + "/v1.0", ca_bundle=srv.ca_path)
        cfg["destinations"][1]["token_cache"] = str(folder / ".state" / "msal-token-cache.json")
        path = folder / "onedrive.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with _env(ONEDRIVE_CLIENT_SECRET=entra.client_secret):
            _cli("login", "--config", str(path))
            _run(path, ONEDRIVE_AS_OF)
    period = f"{ONEDRIVE_AS_OF.year}-Q{(ONEDRIVE_AS_OF.month - 1) // 3 + 1}"
    out: Workbooks = {}
    for key, drive, remote in (("examples/onedrive app", site_drive, app_dest["path"].format(period=period)),
                               ("examples/onedrive delegated", me_drive, me_dest["path"].format(as_of=ONEDRIVE_AS_OF))):
        item = graph.file(drive, remote)
        if item is None:
            raise SystemExit(f"golden_workbooks: the fake Graph holds no {remote} on {drive}")
        out[key] = folder / f"{key.split()[-1]}.xlsx"
        out[key].write_bytes(item.content)
    return out


BUILDERS: dict[str, Callable[[Path], Workbooks]] = {
    "demo": build_demo, "hubspot": build_hubspot, "salesforce": build_salesforce, "tableau": build_tableau,
    "onedrive": build_onedrive,
}


# ----------------------------------------------------------------------------- reading back


def _normalise(value: Any, tmp: str) -> Any:
    """A cell value as JSON: [type, value]; text loses the temp folder and the fakes' ports."""
    if isinstance(value, str):
        return ["str", _FAKE_URL.sub("<FAKE>", value.replace(tmp, "<TMP>"))]
    if isinstance(value, datetime | date | time):
        return [type(value).__name__, value.isoformat()]
    if isinstance(value, timedelta):
        return ["timedelta", value.total_seconds()]
    if isinstance(value, bool | int | float):
        return [type(value).__name__, repr(value)]
    return [type(value).__name__, str(value)]


def _masked_key(key: Any, config_volatile: bool) -> bool:
    key = str(key)
    return key in MASKED_ABOUT_KEYS or bool(MASKED_ABOUT_PATTERN.match(key)) or (config_volatile and key == CONFIG_SHA)


def read_workbook(path: Path, tmp: str, config_volatile: bool = True) -> dict[str, Any]:
    """Sheets, their tables and layout, and every non-empty or formatted cell (value, number format)."""
    wb = openpyxl.load_workbook(path)  # not read_only: tables, widths and merged ranges need the full model
    sheets: dict[str, Any] = {}
    masked: list[str] = []
    for ws in wb.worksheets:
        cells: dict[str, Any] = {}
        about = ws.title == "About"
        for row in ws.iter_rows():
            for c in row:
                if c.value is None and c.number_format == "General":
                    continue
                value = _normalise(c.value, tmp)
                if about and c.column == 2 and _masked_key(ws.cell(c.row, 1).value, config_volatile):
                    value = ["masked", MASKED]
                    masked.append(f"{ws.title}!{c.coordinate} ({ws.cell(c.row, 1).value})")
                cells[c.coordinate] = [value, c.number_format]
        sheets[ws.title] = {
            "dimensions": ws.dimensions,
            "tables": dict(sorted(ws.tables.items())),  # name -> ref
            "freeze_panes": ws.freeze_panes,
            "auto_filter": ws.auto_filter.ref,
            "merged": sorted(str(r) for r in ws.merged_cells.ranges),
            "widths": {k: d.width for k, d in sorted(ws.column_dimensions.items()) if d.customWidth},
            "conditional_formats": sorted(str(r.sqref) for r in ws.conditional_formatting),
            "cells": cells,
        }
    return {"sheets": wb.sheetnames, "defined_names": sorted(wb.defined_names), "masked": masked,
            "sheet_data": sheets}


def capture(only: list[str] | None = None) -> dict[str, Any]:
    """Build every workbook (or those of `only`, names of BUILDERS) in temp folders and read them back."""
    unbuilt = sorted({p.stem for p in EXAMPLES.glob("*.yaml")} - set(BUILDERS))
    if unbuilt:  # every example must be in the golden set
        raise SystemExit(f"golden_workbooks: no builder for config/examples/{', '.join(unbuilt)}.yaml")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    result: dict[str, Any] = {}
    for name, build in BUILDERS.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as tmp:
            folder = Path(tmp)
            for key, path in build(folder).items():
                result[key] = read_workbook(path, str(folder), config_volatile=name != "demo")
    return result


def dump(out: Path, only: list[str] | None = None) -> dict[str, Any]:
    result = capture(only)
    out.write_text(json.dumps(result, indent=1, sort_keys=True, ensure_ascii=False))
    for key, book in result.items():
        n = sum(len(s["cells"]) for s in book["sheet_data"].values())
        print(f"{key}: {len(book['sheets'])} sheets, {n:,} cells, masked: {', '.join(book['masked']) or 'none'}")
    return result


# ----------------------------------------------------------------------------- comparing


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """One line per difference: `workbook: sheet!cell old -> new`, or a sheet-level property."""
    lines: list[str] = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            lines.append(f"{key}: workbook {'added' if key in b else 'missing'}")
            continue
        wa, wb = a[key], b[key]
        if wa["sheets"] != wb["sheets"]:
            lines.append(f"{key}: sheets {wa['sheets']} -> {wb['sheets']}")
        if wa["defined_names"] != wb["defined_names"]:
            lines.append(f"{key}: defined names {wa['defined_names']} -> {wb['defined_names']}")
        for sheet in [s for s in wa["sheets"] if s in wb["sheet_data"]]:
            sa, sb = wa["sheet_data"][sheet], wb["sheet_data"][sheet]
            for prop in sorted((set(sa) | set(sb)) - {"cells"}):
                if sa.get(prop) != sb.get(prop):
                    lines.append(f"{key}: {sheet} {prop} {sa.get(prop)!r} -> {sb.get(prop)!r}")
            ca, cb = sa["cells"], sb["cells"]
            for coord in sorted(set(ca) | set(cb), key=_cell_order):
                if ca.get(coord) != cb.get(coord):
                    lines.append(f"{key}: {sheet}!{coord} {_show(ca.get(coord))} -> {_show(cb.get(coord))}")
    return lines


def _cell_order(coord: str) -> tuple[int, int]:
    col, row = openpyxl.utils.cell.coordinate_from_string(coord)
    return row, openpyxl.utils.cell.column_index_from_string(col)


def _show(cell: list | None) -> str:
    if cell is None:
        return "(empty)"
    (kind, value), fmt = cell
    return f"{value!r}" + ("" if fmt == "General" else f" [{fmt}]") + ("" if kind in ("str", "masked") else f" ({kind})")


def compare(a_path: Path, b_path: Path, limit: int = 200) -> int:
    lines = differences(json.loads(a_path.read_text()), json.loads(b_path.read_text()))
    for line in lines[:limit]:
        print(line)
    if len(lines) > limit:
        print(f"... and {len(lines) - limit:,} more")
    print(f"{len(lines):,} difference(s)" if lines else "no differences", file=sys.stderr)
    return 1 if lines else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.golden_workbooks", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="build the workbooks and write their cells as JSON")
    d.add_argument("out", type=Path)
    d.add_argument("--only", action="append", choices=list(BUILDERS), help="just this one (repeatable)")
    c = sub.add_parser("compare", help="list differing cells; exit 1 if any differ")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--limit", type=int, default=200, help="print at most this many differences")
    args = p.parse_args(argv)
    if args.command == "dump":
        dump(args.out, args.only)
        return 0
    return compare(args.a, args.b, args.limit)


if __name__ == "__main__":
    sys.exit(main())
