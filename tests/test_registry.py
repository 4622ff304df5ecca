"""A source and a destination registered from this module alone run the whole flow.

Nothing outside this file knows the `memory` source or the `inbox` destination: each test
registers them (connectors.registry), runs the pipeline or the CLI, and removes them again.
"""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path
from typing import Any, Literal

import openpyxl
import pandas as pd
import pytest
import yaml

from config.loader import ConfigError, load_config
from config.models.base import StrictModel
from config.models.sources import SourceBase
from connectors import registry
from connectors.errors import FatalAPIError
from connectors.extracted import ExtractContext, Extracted, PendingState
from flows.cli import main
from flows.pipeline import run_pipeline, validation_digest
from transforms.canonical import ROW_COLUMN

AS_OF = date(2026, 6, 30)
DEALS = [
    {"opportunity_id": "M-1", "name": "Alpha", "owner": "Ana", "stage": "Qualification", "amount": "1200",
     "currency": "USD", "created_date": "2026-01-10", "close_date": "2026-09-30"},
    {"opportunity_id": "M-2", "name": "Beta", "owner": "Ben", "stage": "Proposal", "amount": "5000",
     "currency": "USD", "created_date": "2026-02-01", "close_date": "2026-08-15"},
    {"opportunity_id": "M-3", "name": "Gamma", "owner": "Ana", "stage": "Won", "amount": "800",
     "currency": "USD", "created_date": "2026-03-05", "close_date": "2026-05-20"},
    {"opportunity_id": "M-4", "name": "Delta", "owner": "Ben", "stage": "Nowhere", "amount": "100",
     "currency": "USD", "created_date": "2026-04-01", "close_date": "2026-07-01"},
]
INBOX: dict[str, list[bytes]] = {}  # box -> every workbook delivered there, in order
SEEN: dict[str, Any] = {}  # what the extractor was handed
BUILTIN_SOURCES = ("csv", "excel", "hubspot", "salesforce", "tableau")
BUILTIN_DESTINATIONS = ("file", "onedrive")


class MemorySourceConfig(SourceBase):
    type: Literal["memory"]
    deals: int = 4  # the first this many of DEALS
    fail: bool = False


class InboxDestinationConfig(StrictModel):
    type: Literal["inbox"]
    box: str


def extract_memory(cfg: MemorySourceConfig, ctx: ExtractContext) -> Extracted:
    SEEN["engine"] = ctx.engine
    if cfg.fail:
        raise FatalAPIError(f"source '{cfg.name}': the memory is gone")
    deals = DEALS[: cfg.deals]
    records = pd.DataFrame(deals).assign(**{ROW_COLUMN: range(1, len(deals) + 1)})
    return Extracted(cfg.name, records, pending_state=PendingState(
        cursor="c1", upserts=[(d["opportunity_id"], d) for d in deals], replace_all=True))


def memory_from_state(cfg: MemorySourceConfig, payloads: list[dict]) -> Extracted:
    records = pd.DataFrame(payloads).assign(**{ROW_COLUMN: range(1, len(payloads) + 1)})
    return Extracted(cfg.name, records)


def deliver(dest: InboxDestinationConfig, staged: Path, ctx: registry.PublishContext) -> str:
    INBOX.setdefault(dest.box, []).append(staged.read_bytes())
    return f"inbox://{dest.box}/{ctx.period}/{ctx.as_of.isoformat()}"


@pytest.fixture
def memory_types():
    """Registers `memory` and `inbox` for one test (keeps_state and rebuilds_history on), then removes them."""
    INBOX.clear()
    SEEN.clear()
    registry.register_source(registry.SourceType(
        "memory", MemorySourceConfig, f"{__name__}:extract_memory", keeps_state=True,
        rebuilds_history=f"{__name__}:memory_from_state", shapes_rows=(__name__,)))
    registry.register_destination(registry.DestinationType("inbox", InboxDestinationConfig, f"{__name__}:deliver"))
    yield
    registry.unregister_source("memory")
    registry.unregister_destination("inbox")


def write_config(tmp: Path, source: dict | None = None, dest: dict | None = None) -> Path:
    cfg = {"timezone": "Europe/Berlin",
           "sources": [{"name": "mem", "type": "memory", **(source or {})}],
           "destinations": [dest or {"type": "inbox", "box": "sales"}]}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sheet_rows(data: bytes, sheet: str) -> list[dict[str, Any]]:
    ws = openpyxl.load_workbook(io.BytesIO(data), read_only=True)[sheet]
    header, *rows = ws.iter_rows(values_only=True)
    return [dict(zip(header, r, strict=False)) for r in rows]


# ----------------------------------------------------------------------------- the flow


def test_registered_source_and_destination_run_the_flow(memory_types, tmp_path):
    result = run_pipeline(write_config(tmp_path), AS_OF)

    [src] = result.sources
    assert (src.name, src.type, src.rows_read, src.rows_loaded, src.rows_rejected) == ("mem", "memory", 4, 3, 1)
    assert result.outputs == ["inbox://sales/2026-Q2/2026-06-30"]
    [workbook] = INBOX["sales"]
    opportunities = sheet_rows(workbook, "Opportunities")
    assert [(r["opportunity_id"], r["stage"], r["amount"]) for r in opportunities] == [
        ("M-1", "Qualification", 1200), ("M-2", "Proposal", 5000), ("M-3", "Won", 800)]
    [rejected] = sheet_rows(workbook, "Rejected")
    assert (rejected["source"], rejected["row"], rejected["opportunity_id"]) == ("mem", 4, "M-4")
    assert "Nowhere" in rejected["reason"]
    about = {r["key"]: r["value"] for r in sheet_rows(workbook, "About")}
    assert (about["as_of"], about["source mem: type"], about["source mem: rows loaded"]) == ("2026-06-30", "memory", "3")
    assert openpyxl.load_workbook(io.BytesIO(workbook), read_only=True).sheetnames[-6:] == [
        "Opportunities", "Rejected", "Definitions", "Won by month", "Flags by mistake", "About"]  # SHEET_ORDER


def test_the_cli_runs_a_registered_type(memory_types, tmp_path, capsys):
    path = write_config(tmp_path, {"deals": 2})
    assert main(["run", "--config", str(path), "--as-of", AS_OF.isoformat(), "--no-prefect"]) == 0
    assert "inbox://sales/2026-Q2/2026-06-30" in capsys.readouterr().out
    assert [r["opportunity_id"] for r in sheet_rows(INBOX["sales"][0], "Opportunities")] == ["M-1", "M-2"]


@pytest.mark.parametrize("keeps_state", [True, False])
def test_only_a_type_that_keeps_state_gets_the_state_database(memory_types, tmp_path, keeps_state):
    entry = registry.source_type("memory")
    registry.register_source(registry.SourceType(entry.name, entry.config, entry.extractor, keeps_state=keeps_state),
                             replace=True)
    run_pipeline(write_config(tmp_path), AS_OF)
    assert (SEEN["engine"] is not None) == keeps_state


def test_a_failed_source_falls_back_to_the_records_its_type_rebuilds(memory_types, tmp_path):
    run_pipeline(write_config(tmp_path, {"deals": 3}), AS_OF)  # commits the three records
    result = run_pipeline(write_config(tmp_path, {"deals": 3, "fail": True}), AS_OF)
    [src] = result.sources
    assert (src.stale, src.rows_loaded, src.error) == (True, 3, "source 'mem': the memory is gone")
    assert [r["opportunity_id"] for r in sheet_rows(INBOX["sales"][1], "Opportunities")] == ["M-1", "M-2", "M-3"]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("source", "sources[0]: unknown type 'pipedrive'; use one of "
                   "'csv', 'excel', 'hubspot', 'salesforce', 'tableau', 'memory'"),
        ("destination", "destinations[0]: unknown type 'gdrive'; use one of 'file', 'onedrive', 'inbox'"),
    ],
)
def test_an_unknown_type_is_a_config_error_naming_the_known_ones(memory_types, tmp_path, capsys, where, expected):
    path = (write_config(tmp_path, {"type": "pipedrive"}) if where == "source"
            else write_config(tmp_path, dest={"type": "gdrive", "path": "/x.xlsx"}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [expected]
    assert main(["validate", "--config", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_a_removed_type_is_unknown_again(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path))
    assert err.value.problems == [
        "sources[0]: unknown type 'memory'; use one of 'csv', 'excel', 'hubspot', 'salesforce', 'tableau'",
        "destinations[0]: unknown type 'inbox'; use one of 'file', 'onedrive'",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"dels": 2}, "sources[0].dels: unknown key; did you mean 'deals'?"),
        ({"deals": "many"}, "sources[0].deals: Input should be a valid integer, unable to parse string as an integer"),
        ({"type": None}, "sources[0]: unknown type None; use one of "
                         "'csv', 'excel', 'hubspot', 'salesforce', 'tableau', 'memory'"),
    ],
)
def test_a_registered_model_reports_errors_at_its_keys(memory_types, tmp_path, source, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, source))
    assert err.value.problems == [expected]


def test_a_block_without_type_names_the_key_and_the_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "a", "path": "d.csv"}],
                                    "destinations": [{"type": "file", "path": "o.xlsx"}]}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        "sources[0].type: required key is missing; use one of 'csv', 'excel', 'hubspot', 'salesforce', 'tableau'"]


def test_registering_a_taken_name_needs_replace():
    with pytest.raises(ValueError, match="'csv' is already registered"):
        registry.register_source(registry.SourceType("csv", MemorySourceConfig, f"{__name__}:extract_memory"))
    assert registry.source_types() == BUILTIN_SOURCES
    assert registry.destination_types() == BUILTIN_DESTINATIONS


# ----------------------------------------------------------------------------- validated-rows digest


@pytest.mark.parametrize(
    ("source_type", "files"),
    [
        ("csv", ["connectors/sources/files.py"]),
        ("excel", ["connectors/sources/files.py"]),
        ("hubspot", [*(f"connectors/sources/hubspot/{m}.py" for m in (
            "extract", "__init__", "client", "deals", "history", "incremental", "links", "rates", "resolve", "rows",
            "table")),
            "connectors/sources/incremental.py", "connectors/state/field_history.py"]),
        ("salesforce", [*(f"connectors/sources/salesforce/{m}.py" for m in (
            "__init__", "client", "extractor", "query", "rates", "rows")),
            "connectors/sources/incremental.py", "config/soql.py"]),
        ("tableau", [f"connectors/sources/tableau/{m}.py" for m in (
            "__init__", "connector", "filters", "pulled", "session", "token_lock", "values", "vds")]),
    ],
)
def test_the_digest_reads_every_module_that_shapes_a_types_rows(source_type, files):
    root = Path(__file__).resolve().parents[1]
    got = registry.row_code_files(source_type)
    assert [p.relative_to(root).as_posix() for p in got] == files
    assert all(p.is_file() for p in got)


def test_a_change_in_a_module_that_shapes_rows_changes_the_digest(memory_types, tmp_path, monkeypatch):
    module = tmp_path / "lib" / "memory_rows_shape.py"
    module.parent.mkdir()
    module.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(module.parent))
    entry = registry.source_type("memory")
    registry.register_source(registry.SourceType(entry.name, entry.config, entry.extractor,
                                                 shapes_rows=("memory_rows_shape",)), replace=True)
    cfg = load_config(write_config(tmp_path)).config
    before = validation_digest(cfg, 0)
    assert validation_digest(cfg, 0) == before
    module.write_text("SCALE = 2\n")
    assert validation_digest(cfg, 0) != before
