"""`mode: update_sheets`: refresh the managed sheets of a workbook in place (Graph Excel API, section 6).

The tool never replaces the file. In one persistChanges workbook session it rewrites only the
sheets the rendered workbook has (creating missing ones), resizes their tables `tbl<Sheet>` in
place (rows deleted with a shift up, rows appended with rows/add) so users' structured references
keep working, and leaves every other sheet (users' pivots, formulas, charts) untouched. Values go in
row blocks that fit the request limit, one request at a time, and each request is saved as it
goes: there is no rollback, so a failure part way leaves the sheets written before it refreshed
and the rest as they were. When the file does not exist yet, `update_sheets` returns None and
the caller (the package's `deliver`) uploads the whole rendered workbook instead.

Besides the shared retry policy (every request), two waits of its own: createSession answered
202 is polled every `poll_interval` seconds, at most SESSION_POLLS times; a session the service
dropped (invalidSession) is opened again once.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openpyxl
import requests
from openpyxl.utils import get_column_letter

from config.models import OneDriveDestinationConfig
from config.workbook import table_name
from connectors.destinations.onedrive.graph import (
    GraphApi,
    PublishResult,
    check_path,
    connect,
    ensure_folder,
    item_path,
    resolve_drive,
)
from connectors.errors import DestinationError, FatalAPIError
from connectors.http.msal_auth import GraphAuth
from connectors.http.session import default_error_message

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 2_000_000  # Graph requests are capped near 4 MB; stay well below
MAX_BLOCK_ROWS = 5_000
SESSION_POLLS = 40
_EXCEL_EPOCH = datetime(1899, 12, 30)


@dataclass
class StagedSheet:
    """One sheet of the rendered workbook: its rows (header first when it has a table)."""

    name: str
    rows: list[list[Any]]
    formats: list[str | None]  # per column; None = General
    table: str | None  # tbl<Sheet> when the sheet's data is an Excel table

    @property
    def width(self) -> int:
        return max((len(r) for r in self.rows), default=1) or 1


def _cell_value(cell: Any) -> Any:
    """A value the Graph `values` array takes: dates as serial numbers, text never parsed or a formula."""
    v = cell.value
    if v is None:
        return ""
    if getattr(cell, "data_type", None) == "f":
        return v  # a formula of the rendered workbook
    if isinstance(v, datetime):
        return (v.replace(tzinfo=None) - _EXCEL_EPOCH).total_seconds() / 86400
    if isinstance(v, date):
        return (datetime(v.year, v.month, v.day) - _EXCEL_EPOCH).days
    if isinstance(v, str):
        return "'" + v  # a leading apostrophe keeps text as text (no '=' formulas, no '00123' -> 123)
    return v


def _format(cell: Any) -> str | None:
    fmt = getattr(cell, "number_format", None)
    return None if not fmt or fmt == "General" else fmt


def read_staged(path: Path) -> list[StagedSheet]:
    """Read the rendered workbook's sheets (values, formats, which ones are tables)."""
    with zipfile.ZipFile(path) as z:
        tables = set()
        for name in z.namelist():
            if name.startswith("xl/tables/") and name.endswith(".xml"):
                m = re.search(rb'\sdisplayName="([^"]+)"', z.read(name))
                if m:
                    tables.add(m.group(1).decode())
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        sheets = []
        for ws in book.worksheets:
            rows: list[list[Any]] = []
            formats: list[str | None] = []
            for row in ws.iter_rows():
                values = [_cell_value(c) for c in row]
                while values and values[-1] == "":
                    values.pop()
                rows.append(values)
                if len(rows) == 2:  # the first data row carries the column formats
                    formats = [_format(c) for c in row]
            while rows and not rows[-1]:
                rows.pop()
            tbl = table_name(ws.title)
            width = max((len(r) for r in rows), default=1) or 1
            rows = [r + [""] * (width - len(r)) for r in rows] or [[""]]
            sheets.append(StagedSheet(ws.title, rows, (formats + [None] * width)[:width], tbl if tbl in tables else None))
        return sheets
    finally:
        book.close()


def _blocks(rows: list[list[Any]], max_bytes: int, max_rows: int) -> list[tuple[int, int]]:
    """(start, stop) row slices whose JSON stays under `max_bytes` (fmt matrix included) and `max_rows`."""
    out, start, size = [], 0, 0
    for i, row in enumerate(rows):
        n = 2 * len(json.dumps(row, default=str)) + 8
        if i > start and (size + n > max_bytes or i - start >= max_rows):
            out.append((start, i))
            start, size = i, 0
        size += n
    if start < len(rows):
        out.append((start, len(rows)))
    return out


def _ref(r1: int, c1: int, r2: int, c2: int) -> str:
    return f"{get_column_letter(c1)}{r1}:{get_column_letter(c2)}{r2}"


def _parse(address: str) -> tuple[int, int, int, int]:
    cells = address.rsplit("!", 1)[-1].replace("$", "").split(":")
    parsed = []
    for c in cells:
        m = re.fullmatch(r"([A-Z]+)(\d+)", c.upper())
        if not m:
            raise FatalAPIError(f"Microsoft Graph returned an address this tool cannot read: {address!r}")
        col = 0
        for ch in m.group(1):
            col = col * 26 + ord(ch) - 64
        parsed.append((int(m.group(2)), col))
    (r1, c1), (r2, c2) = parsed[0], parsed[-1]
    return r1, c1, r2, c2


def _sheet(name: str) -> str:
    return f"worksheets('{quote(name.replace(chr(39), chr(39) * 2), safe='')}')"


class _WorkbookSession:
    """Workbook calls inside one persistChanges session; a session the service dropped is re-created once."""

    def __init__(self, g: GraphApi, base: str, sleep: Callable[[float], None], poll: float):
        self.g, self.base, self.sleep, self.poll = g, base, sleep, poll
        self.id: str | None = None

    def open(self) -> None:
        resp = self.g.call("POST", f"{self.base}/createSession", json={"persistChanges": True},
                           headers={"Prefer": "respond-async"})
        if resp.status_code in (200, 201):
            self.id = resp.json()["id"]
            return
        location = resp.headers.get("Location")
        if resp.status_code != 202 or not location:
            raise FatalAPIError(f"Microsoft Graph answered HTTP {resp.status_code} to createSession without a session")
        for _ in range(SESSION_POLLS):
            self.sleep(self.poll)
            status = self.g.call("GET", location).json()
            if status.get("status") == "succeeded":
                self.id = self.g.call("GET", status["resourceLocation"]).json()["id"]
                return
            if status.get("status") == "failed":
                raise DestinationError(f"the workbook session could not be created: {status.get('error', status)}")
        raise DestinationError(f"the workbook session was still not ready after {SESSION_POLLS} polls")

    def close(self) -> None:
        if self.id is None:
            return
        try:
            self.call("POST", "closeSession", json={}, retry_session=False)
        except Exception as exc:  # best effort: the session times out by itself
            log.warning("onedrive: could not close the workbook session (%s)", type(exc).__name__)
        self.id = None

    def call(self, method: str, rest: str, *, retry_session: bool = True, **kwargs: Any) -> requests.Response:
        for attempt in (1, 2):
            headers = {"workbook-session-id": self.id} if self.id else {}
            resp = self.g.call(method, f"{self.base}/{rest}", headers=headers, allow=frozenset({400, 404, 409}),
                               **kwargs)
            if resp.status_code < 400:
                return resp
            if attempt == 1 and retry_session and _inner_code(resp).startswith("invalidSession"):
                log.info("onedrive: the workbook session expired; opening a new one")
                self.open()
                continue
            raise FatalAPIError(f"Microsoft Graph refused {method} workbook/{rest.split('(')[0]} with HTTP "
                                f"{resp.status_code}: {default_error_message(resp)}")
        raise AssertionError("unreachable")


def _inner_code(resp: requests.Response) -> str:
    try:
        return str(resp.json()["error"]["innerError"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


class _Refresher:
    def __init__(self, wb: _WorkbookSession, max_bytes: int, max_rows: int):
        self.wb, self.max_bytes, self.max_rows = wb, max_bytes, max_rows
        self.notes: list[str] = []

    def write(self, sheet: str, rows: list[list[Any]], formats: list[str | None], r1: int, c1: int) -> None:
        """PATCH `rows` at (r1, c1) in row blocks, with number formats where the column has one."""
        for a, b in _blocks(rows, self.max_bytes, self.max_rows):
            block = rows[a:b]
            body: dict[str, Any] = {"values": block}
            if any(formats):  # data rows of a table: their column formats (dates would show as serials)
                body["numberFormat"] = [[f or "General" for f in formats] for _ in block]
            ref = _ref(r1 + a, c1, r1 + b - 1, c1 + len(block[0]) - 1)
            self.wb.call("PATCH", f"{_sheet(sheet)}/range(address='{ref}')", json=body)

    def sheet(self, s: StagedSheet, existing: dict[str, str]) -> None:
        name = existing.get(s.name.lower())
        if name is None:
            self.wb.call("POST", "worksheets/add", json={"name": s.name})
            self.notes.append(f"sheet '{s.name}' was missing from the workbook (deleted or renamed); recreated it")
            existing[s.name.lower()] = name = s.name
        if s.table is None:
            used = self.wb.call("GET", f"{_sheet(name)}/usedRange(valuesOnly=true)").json()["address"]
            self.wb.call("POST", f"{_sheet(name)}/range(address='{_ref(*_parse(used))}')/clear",
                         json={"applyTo": "Contents"})
            self.write(name, s.rows, [None] * s.width, 1, 1)  # the sheet keeps its own formats
            return
        here = [t["name"] for t in self.wb.call("GET", f"{_sheet(name)}/tables").json()["value"]]
        match = next((t for t in here if t.lower() == s.table.lower()), None)
        if match is None:
            self._new_table(s, name)
            return
        r1, c1, r2, c2 = _parse(self.wb.call("GET", f"tables('{match}')/range").json()["address"])
        if c2 - c1 + 1 != s.width:
            self.wb.call("DELETE", f"tables('{match}')")
            self.wb.call("POST", f"{_sheet(name)}/range(address='{_ref(r1, c1, r2, c2)}')/clear",
                         json={"applyTo": "Contents"})
            self.notes.append(f"{s.table} on '{name}' changed its columns; the table was rebuilt (formulas that "
                              "named removed columns need fixing)")
            self._new_table(s, name, at=(r1, c1))
            return
        header, data = s.rows[0], s.rows[1:] or [[""] * s.width]
        old_n, new_n = r2 - r1, len(data)
        self.write(name, [header], [None] * s.width, r1, c1)
        if new_n < old_n:
            self.wb.call("POST", f"{_sheet(name)}/range(address='{_ref(r1 + 1 + new_n, c1, r2, c2)}')/delete",
                         json={"shift": "Up"})
        keep = min(old_n, new_n)
        self.write(name, data[:keep], s.formats, r1 + 1, c1)
        extra = data[keep:]
        for a, b in _blocks(extra, self.max_bytes, self.max_rows):
            self.wb.call("POST", f"tables('{match}')/rows/add", json={"index": None, "values": extra[a:b]})
        if extra:
            self._check_rows(name, match, r1, c1, c2, new_n, extra, s.formats)

    def _check_rows(self, sheet: str, table: str, r1: int, c1: int, c2: int, want: int, extra: list[list[Any]],
                    formats: list[str | None]) -> None:
        """After appending: a rows/add retried after a 504 may have landed twice; trim and rewrite."""
        got = _parse(self.wb.call("GET", f"tables('{table}')/range").json()["address"])[2] - r1
        start = r1 + 1 + want - len(extra)
        if got > want:
            log.warning("onedrive: %s has %d rows instead of %d after appending; fixing", table, got, want)
            self.wb.call("POST", f"{_sheet(sheet)}/range(address='{_ref(r1 + 1 + want, c1, r1 + got, c2)}')/delete",
                         json={"shift": "Up"})
            self.write(sheet, extra, formats, start, c1)
        elif got < want:
            raise FatalAPIError(f"{table} has {got} rows after appending {want}; the workbook was not fully refreshed")
        elif any(formats):
            self.write(sheet, [[None] * len(formats) for _ in extra], formats, start, c1)

    def _new_table(self, s: StagedSheet, sheet: str, at: tuple[int, int] = (1, 1)) -> None:
        r1, c1 = at
        if at == (1, 1):
            used = self.wb.call("GET", f"{_sheet(sheet)}/usedRange(valuesOnly=true)").json()["address"]
            self.wb.call("POST", f"{_sheet(sheet)}/range(address='{_ref(*_parse(used))}')/clear",
                         json={"applyTo": "Contents"})
        rows = s.rows if len(s.rows) > 1 else [s.rows[0], [""] * s.width]
        self.write(sheet, rows[:1], [None] * s.width, r1, c1)
        self.write(sheet, rows[1:], s.formats, r1 + 1, c1)
        ref = _ref(r1, c1, r1 + len(rows) - 1, c1 + s.width - 1)
        made = self.wb.call("POST", f"{_sheet(sheet)}/tables/add", json={"address": ref, "hasHeaders": True}).json()
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


def update_sheets(cfg: OneDriveDestinationConfig, workbook: Path, *, remote_path: str,
                  session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                  auth: GraphAuth | None = None, config_dir: Path | None = None,
                  max_request_bytes: int = MAX_REQUEST_BYTES, max_block_rows: int = MAX_BLOCK_ROWS,
                  poll_interval: float = 2.0) -> PublishResult | None:
    """Refresh the managed sheets of `remote_path` in place; other sheets stay as users left them.

    None when `remote_path` does not exist yet (nothing was written). A failure part way leaves
    the managed sheets partly refreshed (no rollback); the users' sheets are never touched.
    """
    check_path(remote_path)
    if cfg.auth != "delegated":
        raise DestinationError("mode update_sheets needs auth: delegated (the Graph Excel API does not take "
                               "app-only tokens); sign in once with `pipeline-sync login --config PATH`")
    staged = read_staged(Path(workbook))
    g = connect(cfg, session=session, sleep=sleep, auth=auth, config_dir=config_dir)
    drive_id = resolve_drive(g, cfg)
    *folders, name = remote_path.strip("/").split("/")
    parent_id = ensure_folder(g, drive_id, folders)
    found = g.call("GET", item_path(drive_id, parent_id, name), allow=frozenset({404}))
    if found.status_code == 404:
        return None
    item_id = found.json()["id"]
    wb = _WorkbookSession(g, f"/drives/{drive_id}/items/{item_id}/workbook", sleep, poll_interval)
    wb.open()
    refresher = _Refresher(wb, max_request_bytes, max_block_rows)
    try:
        existing = {w["name"].lower(): w["name"] for w in wb.call("GET", "worksheets").json()["value"]}
        for s in staged:
            refresher.sheet(s, existing)
    finally:
        wb.close()
    item = g.call("GET", f"/drives/{drive_id}/items/{item_id}").json()
    note = "; ".join(refresher.notes) or None
    result = PublishResult(web_url=item.get("webUrl", ""), item_id=item_id, etag=item.get("eTag", ""),
                           size=int(item.get("size", 0)), path=remote_path, note=note)
    log.info("onedrive: refreshed %d sheets of %s in place%s", len(staged), remote_path, f" ({note})" if note else "")
    return result
