"""`mode: update_sheets`: refresh the managed sheets of a workbook in place (Graph Excel API, section 6).

The tool never replaces the file. In a persistChanges workbook session it rewrites only the
sheets the rendered workbook has (creating missing ones), resizes their tables in place so users'
structured references keep working, and never writes to any other sheet (users' pivots,
formulas, charts). A sheet's table has the name the xlsx writer gave it in the rendered file
(staged.py: never recomputed from the sheet name, so `tbl_2026` of sheet `2026` and
`tblRaw_CRM_2` of `Raw_CRM` are found); a managed table at A1 under another name (an older
version's `tbl2026`) is refreshed and renamed to it when that name is free. Values go in row blocks that fit the request limit, one request at a
time (workbook_session.py).

What a failure leaves. Each write of a persistChanges session is saved at once, so before the
first write every managed sheet is read back (the cells the refresh will write: values, formulas,
number formats; its tables). A failure at any step then undoes the refresh in a new session:
sheets it added are deleted, tables it added are deleted, resized tables get their old size, a
rebuilt table its old range and name, and the saved cells are written back. So after a failure
every managed sheet is as it was (all old), a finished refresh leaves every one all new, and
other sheets are never written either way. Only when the undo fails too (the service stays
unreachable, say) can managed sheets be left part-refreshed: the error says so and names them,
and the next successful run rewrites them.

Repeats. Every write is idempotent (a PATCH of fixed addresses, a clear, a rename, a delete by
name) or is sent with `repeat_safe=False`: rows/add, range delete with shift up, tables/add,
worksheets/add are never resent after an unknown outcome before the workbook is read back
(`Workbook.unsure`). The workbook calls are retried on 429/502/503/504 with Retry-After
honoured, never on 500 (workbook-error-handling.md: internalServerErrorUncategorized, "not
expected to resend"; msgraph-sdk-python-core's RetryHandler retries 429, 503 and 504).

Text cells get the Text number format "@" before their value, so Excel keeps them exactly (no
formula from "=...", no number from "00123", no apostrophe); every other cell gets the number format
the rendered workbook gives it (currency, %, dates, integer counts; per column and per row, as the
local file has them: the range's `numberFormat` grid, "Excel's number format code for the given
cell", https://learn.microsoft.com/graph/api/resources/range, set by PATCH,
https://learn.microsoft.com/graph/api/range-update); dates go as serial numbers with their format.
When the file does not exist yet, `update_sheets` returns None and the caller (the package's `deliver`) uploads the whole rendered workbook instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from config.models import OneDriveDestinationConfig
from connectors.destinations.onedrive.graph import (
    PublishResult,
    check_path,
    connect,
    ensure_folder,
    item_path,
    resolve_drive,
)
from connectors.destinations.onedrive.staged import StagedSheet, read_staged
from connectors.destinations.onedrive.workbook_session import (
    Workbook,
    blocks,
    is_text,
    parse,
    ref,
    sheet_path,
)
from connectors.errors import DestinationError, FatalAPIError, PipelineSyncError, RetriableAPIError
from connectors.http.msal_auth import GraphAuth

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 2_000_000  # Graph requests are capped near 4 MB; stay well below
MAX_BLOCK_ROWS = 5_000
SESSION_WAIT_MAX = 600.0  # seconds a long-running createSession may take
MAX_SAVED_CELLS = 5_000_000  # a managed sheet larger than this is not refreshed (it could not be undone)
WORKBOOK_RETRY_STATUSES = frozenset({429, 502, 503, 504})
Area = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- what a managed sheet holds


@dataclass
class _TableAt:
    id: str
    name: str
    area: Area

    @property
    def rows(self) -> int:  # data rows
        return self.area[2] - self.area[0]

    @property
    def width(self) -> int:
        return self.area[3] - self.area[1] + 1


@dataclass
class _Saved:
    """A managed sheet as it was before the refresh wrote to it (what the undo restores)."""

    name: str  # its name in the workbook (or the rendered one, when it did not exist)
    exists: bool
    table: _TableAt | None = None  # its managed table
    table_ids: set[str] = field(default_factory=set)  # every table on it
    box: Area | None = None  # the cells read back: everything the refresh may write
    values: list[list[Any]] = field(default_factory=list)
    formats: list[list[str]] = field(default_factory=list)
    touched: bool = False  # the refresh has started writing to it

    def format_at(self, r: int, c: int) -> str | None:
        if self.box is None or not (self.box[0] <= r <= self.box[2] and self.box[1] <= c <= self.box[3]):
            return None
        return self.formats[r - self.box[0]][c - self.box[1]]


def _table_rows(s: StagedSheet) -> list[list[Any]]:
    """Header and data rows (one blank data row when there is none: a table keeps at least one)."""
    return [s.rows[0], *(s.rows[1:] or [[""] * s.width])]


def _table_formats(s: StagedSheet, rows: list[list[Any]]) -> list[list[str | None]]:
    """Text cells "@"; the header's other cells General; data cells the rendered cell's format (else General)."""
    header = ["@" if is_text(v) else "General" for v in rows[0]]
    return [header] + [["@" if is_text(v) else (s.format_at(i, j) or "General") for j, v in enumerate(row)]
                       for i, row in enumerate(rows[1:], start=1)]


def _sheet_formats(s: StagedSheet, saved: _Saved) -> list[list[str | None]]:
    """A sheet without a managed table (Summary, forms): text cells "@", the others the rendered
    cell's format (else General); an empty cell keeps its format unless it was Text (then General)."""
    return [["@" if is_text(v) else (s.format_at(i, j) or "General") if v != "" else
             ("General" if saved.format_at(1 + i, 1 + j) == "@" else None)
             for j, v in enumerate(row)] for i, row in enumerate(s.rows)]


def _bbox(*areas: Area | None) -> Area:
    real = [a for a in areas if a is not None]
    return (min(a[0] for a in real), min(a[1] for a in real), max(a[2] for a in real), max(a[3] for a in real))


class _Refresh:
    def __init__(self, wb: Workbook):
        self.wb = wb
        self.notes: list[str] = []

    # ------------------------------------------------------------------ reading
    def sheets(self) -> dict[str, str]:
        return {w["name"].lower(): w["name"] for w in self.wb.call("GET", "worksheets").json()["value"]}

    def tables_on(self, sheet: str) -> list[_TableAt]:
        found = []
        for t in self.wb.call("GET", f"{sheet_path(sheet)}/tables").json()["value"]:
            area = parse(self.wb.call("GET", f"tables('{t['name']}')/range").json()["address"])
            found.append(_TableAt(str(t["id"]), t["name"], area))
        return found

    def table_area(self, name: str) -> Area:
        return parse(self.wb.call("GET", f"tables('{name}')/range").json()["address"])

    def save(self, s: StagedSheet, existing: dict[str, str]) -> _Saved:
        """Read back what the refresh of `s` may overwrite."""
        name = existing.get(s.name.lower())
        if name is None:
            return _Saved(s.name, exists=False)
        tables = self.tables_on(name)
        table = next((t for t in tables if s.table and t.name.lower() == s.table.lower()), None)
        if table is None and s.table:  # the same table under another name (an older writer's, or a user's)
            table = next((t for t in tables if t.area[:2] == (1, 1)), None)
        at = (table.area[0], table.area[1]) if table else (1, 1)
        new_area = (at[0], at[1], at[0] + len(s.rows) - 1, at[1] + s.width - 1)
        box = _bbox(self.wb.used(name, values_only=False), table.area if table else None, new_area)
        cells = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        if cells > MAX_SAVED_CELLS:
            raise DestinationError(f"the managed sheet '{name}' uses {ref(*box)} ({cells:,} cells, values or "
                                   f"formats): more than the {MAX_SAVED_CELLS:,} this tool saves to be able to undo "
                                   "a failed refresh; nothing was changed. Clear the formats below or right of its "
                                   "data, or use mode: replace")
        values, formats = self.wb.read(name, *box)
        return _Saved(name, True, table, {t.id for t in tables}, box, values, formats)

    # ------------------------------------------------------------------ structure (each step read back when unsure)
    def add_sheet(self, name: str) -> None:
        self.wb.unsure(f"adding the worksheet '{name}'",
                       lambda: self.wb.call("POST", "worksheets/add", json={"name": name}, repeat_safe=False),
                       lambda: True if name.lower() in self.sheets() else None)

    def delete_sheet(self, name: str) -> None:
        self.wb.call("DELETE", sheet_path(name), allow=frozenset({404}))

    def add_table(self, sheet: str, area: Area) -> dict[str, Any]:
        before = {t.id for t in self.tables_on(sheet)}

        def applied() -> dict[str, Any] | None:
            new = [t for t in self.tables_on(sheet) if t.id not in before and t.area == area]
            return {"id": new[0].id, "name": new[0].name} if new else None

        return self.wb.unsure(f"adding a table at {sheet}!{ref(*area)}", lambda: self.wb.call(
            "POST", f"{sheet_path(sheet)}/tables/add", json={"address": ref(*area), "hasHeaders": True},
            repeat_safe=False).json(), applied)

    def delete_table(self, name: str) -> None:
        self.wb.call("DELETE", f"tables('{name}')", allow=frozenset({404}))

    def resize(self, sheet: str, table: str, want: int) -> None:
        """Give `table` `want` data rows: blank rows appended (rows/add) or rows deleted with a shift up."""
        r1, c1, r2, c2 = self.table_area(table)
        have, width = r2 - r1, c2 - c1 + 1
        first, stop = blocks([[""] * width] * self.wb.max_rows, self.wb.max_bytes, self.wb.max_rows)[0]
        per_add = stop - first
        while have < want:
            n, before = min(want - have, per_add), have
            self.wb.unsure(f"adding {n} rows to {table}",
                           lambda n=n: self.wb.call("POST", f"tables('{table}')/rows/add", repeat_safe=False,
                                                    json={"index": None, "values": [[""] * width] * n}),
                           lambda n=n, before=before: self._rows_now(table, before + n, before))
            have += n
        if have > want:
            area = (r1 + 1 + want, c1, r2, c2)
            self.wb.unsure(f"deleting rows {ref(*area)} of {table}",
                           lambda: self.wb.call("POST", f"{sheet_path(sheet)}/range(address='{ref(*area)}')/delete",
                                                json={"shift": "Up"}, repeat_safe=False),
                           lambda: self._rows_now(table, want, have))

    def _rows_now(self, table: str, goal: int, before: int) -> bool | None:
        """True when `table` has `goal` data rows, None when it still has `before`; anything else is an error."""
        r1, _, r2, _ = self.table_area(table)
        if r2 - r1 == goal:
            return True
        if r2 - r1 == before:
            return None
        raise FatalAPIError(f"{table} has {r2 - r1} rows; expected {before} or {goal}: the workbook changed "
                            "under the refresh")

    # ------------------------------------------------------------------ the refresh of one sheet
    def refresh(self, s: StagedSheet, saved: _Saved) -> None:
        saved.touched = True
        name = saved.name
        if not saved.exists:
            self.add_sheet(name)
            self.notes.append(f"sheet '{s.name}' was missing from the workbook (deleted or renamed); recreated it")
        if s.table is None:
            self.wb.clear(name, self.wb.used(name, values_only=True))
            self.wb.write(name, 1, 1, s.rows, _sheet_formats(s, saved))  # each cell's format, as rendered
            return
        table = saved.table
        if table is not None and table.width != s.width:
            self.delete_table(table.name)
            self.wb.clear(name, table.area)
            self.notes.append(f"{s.table} on '{name}' changed its columns; the table was rebuilt (formulas that "
                              "named removed columns need fixing)")
            self.new_table(s, name, at=table.area[:2])
            return
        if table is None:
            self.new_table(s, name, at=(1, 1))
            return
        rows = _table_rows(s)
        self.resize(name, self.rename(table, s.table, name), len(rows) - 1)
        self.wb.write(name, table.area[0], table.area[1], rows, _table_formats(s, rows))

    def rename(self, table: _TableAt, wanted: str, sheet: str) -> str:
        """Give the managed `table` the name the writer gave it (`wanted`) when it has another and that
        name is free; the name it has now."""
        if table.name.lower() == wanted.lower():
            return table.name
        if wanted.lower() in {t["name"].lower() for t in self.wb.call("GET", "tables").json()["value"]}:
            self.notes.append(f"the table on '{sheet}' is refreshed as {table.name}: the name {wanted} is used by "
                              "another table")
            return table.name
        self.wb.call("PATCH", f"tables('{table.name}')", json={"name": wanted})  # idempotent: a rename by name
        self.notes.append(f"the table {table.name} on '{sheet}' is now named {wanted}, as the workbook names it")
        return wanted

    def new_table(self, s: StagedSheet, sheet: str, at: tuple[int, int]) -> None:
        r1, c1 = at
        if at == (1, 1):
            self.wb.clear(sheet, self.wb.used(sheet, values_only=True))
        rows = _table_rows(s)
        self.wb.write(sheet, r1, c1, rows, _table_formats(s, rows))
        made = self.add_table(sheet, (r1, c1, r1 + len(rows) - 1, c1 + s.width - 1))
        taken = {t["name"].lower() for t in self.wb.call("GET", "tables").json()["value"]}
        name, k = s.table, 1
        while name.lower() in taken and name.lower() != made["name"].lower():
            k += 1
            name = f"{s.table}_{k}"
        self.wb.call("PATCH", f"tables('{made['name']}')", json={"name": name})
        if name != s.table:
            self.notes.append(f"'{sheet}' got a new table {name}: the name {s.table} is still used by a table on a "
                              "renamed copy of the sheet, which was left as it is")
        else:
            self.notes.append(f"table {name} on '{sheet}' was missing; recreated it")

    # ------------------------------------------------------------------ the undo of one sheet
    def undo(self, saved: _Saved) -> None:
        """Bring a managed sheet back to `saved` (all old), from whatever state the refresh left."""
        if not saved.exists:
            if saved.name.lower() in self.sheets():
                self.delete_sheet(saved.name)  # its tables go with it
            return
        tables = self.tables_on(saved.name)
        for t in tables:
            if t.id not in saved.table_ids:
                self.delete_table(t.name)  # added by the refresh
        old = saved.table
        current = next((t for t in tables if old is not None and t.id == old.id), None)
        if old is not None and current is not None:
            if current.name != old.name:  # renamed by the refresh
                self.wb.call("PATCH", f"tables('{current.name}')", json={"name": old.name})
            self.resize(saved.name, old.name, old.rows)
        assert saved.box is not None
        self.wb.write(saved.name, saved.box[0], saved.box[1], saved.values, saved.formats)
        if old is not None and current is None:  # rebuilt: put the old table back, with its name
            made = self.add_table(saved.name, old.area)
            self.wb.call("PATCH", f"tables('{made['name']}')", json={"name": old.name})


def update_sheets(cfg: OneDriveDestinationConfig, workbook: Path, *, remote_path: str,
                  session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                  auth: GraphAuth | None = None, config_dir: Path | None = None,
                  max_request_bytes: int = MAX_REQUEST_BYTES, max_block_rows: int = MAX_BLOCK_ROWS,
                  poll_interval: float = 30.0, wait_max: float = SESSION_WAIT_MAX) -> PublishResult | None:
    """Refresh the managed sheets of `remote_path` in place; other sheets are never written.

    None when `remote_path` does not exist yet (nothing was written). A failure at any step is
    undone: every managed sheet is left as it was before the refresh, and the error says so; when
    the undo fails as well, the error names the managed sheets that may be part-refreshed.
    """
    check_path(remote_path)
    if cfg.auth != "delegated":
        raise DestinationError("mode update_sheets needs auth: delegated (the Graph Excel API does not take "
                               "app-only tokens); sign in once with `pipeline-sync login --config PATH`")
    staged = read_staged(Path(workbook))
    g = connect(cfg, session=session, sleep=sleep, auth=auth, config_dir=config_dir,
                retry_statuses=WORKBOOK_RETRY_STATUSES)
    drive_id = resolve_drive(g, cfg)
    *folders, name = remote_path.strip("/").split("/")
    parent_id = ensure_folder(g, drive_id, folders)
    found = g.call("GET", item_path(drive_id, parent_id, name), allow=frozenset({404}))
    if found.status_code == 404:
        return None
    item_id = found.json()["id"]

    def workbook_session() -> Workbook:
        wb = Workbook(g, f"/drives/{drive_id}/items/{item_id}/workbook", sleep, poll_interval, wait_max,
                      max_request_bytes, max_block_rows)
        wb.open()
        return wb

    wb = workbook_session()
    refresh = _Refresh(wb)
    saved: list[_Saved] = []
    try:
        existing = refresh.sheets()
        saved = [refresh.save(s, existing) for s in staged]
        for s, before in zip(staged, saved, strict=True):
            refresh.refresh(s, before)
    except Exception as exc:
        wb.close()
        if not any(s.touched for s in saved):
            raise
        raise _undone(exc, saved, remote_path, workbook_session) from exc
    finally:
        wb.close()
    item = g.call("GET", f"/drives/{drive_id}/items/{item_id}").json()
    note = "; ".join(refresh.notes) or None
    result = PublishResult(web_url=item.get("webUrl", ""), item_id=item_id, etag=item.get("eTag", ""),
                           size=int(item.get("size", 0)), path=remote_path, note=note)
    log.info("onedrive: refreshed %d sheets of %s in place%s", len(staged), remote_path, f" ({note})" if note else "")
    return result


def _undone(exc: Exception, saved: list[_Saved], remote_path: str,
            workbook_session: Callable[[], Workbook]) -> PipelineSyncError:
    """Undo the refresh in a new session (the failed one may be dead); the error to raise."""
    touched = [s for s in saved if s.touched]
    log.warning("onedrive: refreshing %s failed (%s); undoing the refresh of %s", remote_path, exc,
                ", ".join(f"'{s.name}'" for s in touched))
    undo: Workbook | None = None
    try:
        undo = workbook_session()
        for s in reversed(touched):
            _Refresh(undo).undo(s)
    except Exception as again:
        names = ", ".join(f"'{s.name}'" for s in touched)
        return DestinationError(f"refreshing {remote_path} failed ({exc}) and undoing it failed too ({again}): the "
                                f"managed sheets {names} may be part-refreshed (other sheets were not written); "
                                "the next successful run rewrites them")
    finally:
        if undo is not None:
            undo.close()
    message = f"{exc}; the refresh of {remote_path} was undone: every managed sheet is as it was before"
    if isinstance(exc, RetriableAPIError):
        return RetriableAPIError(message)
    if isinstance(exc, FatalAPIError):
        return FatalAPIError(message)
    return DestinationError(message)
