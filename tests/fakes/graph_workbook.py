"""The fake Graph with the Excel workbook API (api-contracts.md section 6) on top of FakeGraph.

A workbook is built from the item's .xlsx bytes (openpyxl) on first use: sheets hold cells and
their number formats, tables have a name and a range. Supported: sessions (persistChanges,
`workbook-session-id`, expiry -> invalidSessionReCreatable), the long-running createSession
(`Prefer: respond-async` -> 202 + Location, then `notStarted` / `running` / `succeeded` / `failed`
with Retry-After, concepts/workbook-best-practice.md), worksheets list/add/delete, usedRange,
range GET / PATCH (values, numberFormat; shapes checked) / clear / delete (shift up), tables
list/add/rename/delete/range, rows/add, a request-size cap (413), and 429/504 from the base switches.

What a written value becomes (what Excel stores, not what the client meant):
  - Excel JavaScript API, Range.values (https://learn.microsoft.com/javascript/api/excel/excel.range,
    the API the Graph workbook resources mirror): "If the returned value starts with a plus ("+"),
    minus ("-"), or equal sign ("="), Excel interprets this value as a formula." Such a string is
    stored as a `Formula` here, unless the cell's number format is Text ("@"): a cell formatted as
    Text keeps what is entered as text ("Format numbers as text",
    https://support.microsoft.com/office/format-numbers-as-text-583160db-d0f3-4c21-b3b9-6d8d1e6d5ab0).
  - A string that reads as a number becomes a number (Excel drops leading zeros of what it takes
    for a number: "Keeping leading zeros and large numbers",
    https://support.microsoft.com/office/keeping-leading-zeros-and-large-numbers-1bf7b935-36e1-4985-842f-5dfa51f85fe7),
    again unless the cell is formatted as Text.
  - A leading apostrophe: no Microsoft page says the API treats it as Excel's quote prefix, so this
    fake keeps it as part of the text (code that relies on it shows the apostrophe here).
  - In one PATCH with both `values` and `numberFormat`, the order in which the service applies
    them is not documented; this fake interprets the values against the format the cells had
    before the request. Changing a format later does not re-read existing content.
  - A formula is not computed: its `values` entry reads 0 (`formulas` gives its text).

Calls that are not safe to repeat (range delete with shift, tables/add, worksheets/add, rows/add)
can be made to take effect and then answer 504 gatewayTimeout (`timeout_after_apply`, once per
kind): Microsoft's workbook error-handling guide (concepts/workbook-error-handling.md) says a
client "is not expected to resend the failed request" blindly. `fail_at(n)` makes the nth write
request answer 500 internalServerErrorUncategorized (after applying it with `applied=True`); the
guide: "not expected to resend the failed request ... further access to the session is not
expected either", so that session is closed.
"""

from __future__ import annotations

import io
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import unquote

import openpyxl
from openpyxl.utils import column_index_from_string, get_column_letter

from tests.fakes.graph import FakeGraph, Item, gerror
from tests.fakes.server import Request, Response

Cell = tuple[int, int]  # (row, col), 1-based
TEXT = "@"
NON_IDEMPOTENT = ("delete", "tables/add", "worksheets/add", "rows/add")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_EPOCH = datetime(1899, 12, 30)


class Formula(str):
    """A cell's formula (its text starts with '=')."""


def parse_address(address: str) -> tuple[str | None, int, int, int, int]:
    """`'My sheet'!A1:C3` -> (sheet, r1, c1, r2, c2)."""
    sheet = None
    if "!" in address:
        sheet, address = address.rsplit("!", 1)
        sheet = sheet.strip("'").replace("''", "'")
    parts = address.replace("$", "").split(":")
    cells = []
    for p in parts:
        m = re.fullmatch(r"([A-Za-z]+)(\d+)", p)
        if not m:
            raise ValueError(address)
        cells.append((int(m.group(2)), column_index_from_string(m.group(1).upper())))
    (r1, c1), (r2, c2) = cells[0], cells[-1]
    return sheet, r1, c1, r2, c2


def address(sheet: str, r1: int, c1: int, r2: int, c2: int) -> str:
    """`Sheet!A1:B2`, the sheet name quoted when it is not a plain name (`'2026'!A1`, `'Raw-CRM'!A1`)."""
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sheet)
    name = sheet if plain else "'" + sheet.replace("'", "''") + "'"
    return f"{name}!{get_column_letter(c1)}{r1}:{get_column_letter(c2)}{r2}"


def stored(value: Any, fmt: str | None) -> Any:
    """What Excel keeps when `value` is written into a cell whose number format is `fmt`."""
    if not isinstance(value, str) or value == "" or fmt == TEXT:
        return value
    if _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    if value[0] == "=" or (value[0] in "+-" and len(value) > 1):
        return Formula(value if value[0] == "=" else "=" + value)
    return value


@dataclass
class Sheet:
    name: str
    id: str = field(default_factory=lambda: "{" + str(uuid.uuid4()).upper() + "}")
    cells: dict[Cell, Any] = field(default_factory=dict)
    formats: dict[Cell, str] = field(default_factory=dict)  # absent = General

    def used(self, values_only: bool = True) -> tuple[int, int, int, int]:
        keys = [k for k, v in self.cells.items() if v not in (None, "")]
        if not values_only:
            keys += [k for k, f in self.formats.items() if f != "General"]
        if not keys:
            return 1, 1, 1, 1
        rows, cols = [k[0] for k in keys], [k[1] for k in keys]
        return min(rows), min(cols), max(rows), max(cols)

    def put(self, r: int, c: int, value: Any) -> None:
        v = stored(value, self.formats.get((r, c)))
        if v is None or v == "":
            self.cells.pop((r, c), None)
        else:
            self.cells[(r, c)] = v


@dataclass
class Table:
    id: str
    name: str
    sheet: Sheet
    r1: int
    c1: int
    r2: int
    c2: int


@dataclass
class Workbook:
    sheets: list[Sheet] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    next_table: int = 1

    @classmethod
    def from_xlsx(cls, data: bytes) -> Workbook:
        book = openpyxl.load_workbook(io.BytesIO(data))
        wb = cls()
        for ws in book.worksheets:
            sheet = Sheet(ws.title)
            for row in ws.iter_rows():
                for c in row:
                    if c.number_format and c.number_format != "General":
                        sheet.formats[(c.row, c.column)] = c.number_format
                    v = c.value
                    if v is None:
                        continue
                    if c.data_type == "f":
                        v = Formula(v)
                    elif isinstance(v, datetime):
                        v = (v - _EPOCH).total_seconds() / 86400
                    elif isinstance(v, date):
                        v = (datetime(v.year, v.month, v.day) - _EPOCH).days
                    sheet.cells[(c.row, c.column)] = v
            wb.sheets.append(sheet)
            for name, ref in ws.tables.items():
                _, r1, c1, r2, c2 = parse_address(ref)
                wb.tables.append(Table(str(wb.next_table), name, sheet, r1, c1, r2, c2))
                wb.next_table += 1
        return wb

    def sheet(self, key: str) -> Sheet | None:
        for s in self.sheets:
            if s.name.lower() == key.lower() or s.id == key:
                return s
        return None

    def table(self, key: str) -> Table | None:
        for t in self.tables:
            if t.name.lower() == key.lower() or t.id == key:
                return t
        return None

    # helpers for tests
    def values(self, sheet: str, ref: str) -> list[list[Any]]:
        s = self.sheet(sheet)
        _, r1, c1, r2, c2 = parse_address(ref)
        return [[s.cells.get((r, c)) for c in range(c1, c2 + 1)] for r in range(r1, r2 + 1)]

    def table_rows(self, name: str) -> list[list[Any]]:
        t = self.table(name)
        return [[t.sheet.cells.get((r, c)) for c in range(t.c1, t.c2 + 1)] for r in range(t.r1, t.r2 + 1)]

    def state(self) -> dict[str, Any]:
        """Everything a refresh may change, to compare before and after (sheet order, cells, formats, tables)."""
        return {
            "sheets": [s.name for s in self.sheets],
            "cells": {s.name: {k: (type(v).__name__, v) for k, v in s.cells.items()} for s in self.sheets},
            "formats": {s.name: dict(s.formats) for s in self.sheets},
            "tables": sorted((t.name, t.sheet.name, t.r1, t.c1, t.r2, t.c2) for t in self.tables),
        }

    def sheet_state(self, name: str) -> dict[str, Any]:
        s = self.sheet(name)
        if s is None:
            return {}
        return {"cells": {k: (type(v).__name__, v) for k, v in s.cells.items()}, "formats": dict(s.formats),
                "tables": sorted((t.name, t.r1, t.c1, t.r2, t.c2) for t in self.tables if t.sheet is s)}


class FakeGraphWorkbook(FakeGraph):
    """FakeGraph + `/items/{id}/workbook/...`. Switches: `session_504`, `async_polls`, `async_retry_after`,
    `async_fail`, `timeout_after_apply`, `fail_at(n)`, `max_body` (bytes, else 413), `expire_sessions()`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.books: dict[str, tuple[int, Workbook]] = {}
        self.sessions_wb: dict[str, bool] = {}  # id -> open
        self.operations: dict[str, dict] = {}
        self.session_504 = 0
        self.async_polls = 1  # createSession answers 202; the operation is notStarted, then running
        self.async_retry_after: str | None = None  # Retry-After on the 202 and on each unfinished poll
        self.async_fail = False  # the operation ends "failed"
        self.timeout_after_apply: set[str] = set()  # kinds of NON_IDEMPOTENT: apply, then 504 (once each)
        self.max_body = 4 * 1024 * 1024
        self.sessionless = 0  # workbook calls sent without workbook-session-id
        self.workbook_calls: list[str] = []
        self.writes = 0  # write requests (not GET, not session calls) that reached a workbook
        self._fail: tuple[int, bool] | None = None
        self.inflight = 0
        self.max_inflight = 0
        self._count = threading.Lock()

    def fail_at(self, n: int, applied: bool = False) -> None:
        """The nth write request from now answers 500 internalServerErrorUncategorized (applied first or not)."""
        self._fail = (self.writes + n, applied)

    def book(self, drive_id: str, path: str) -> Workbook:
        item = self.file(drive_id, path)
        return self._book(item)

    def _book(self, item: Item) -> Workbook:
        version, wb = self.books.get(item.id, (-1, None))  # keyed on the content (cTag)
        if wb is None or version != item.content_version:
            wb = Workbook.from_xlsx(item.content)
            self.books[item.id] = (item.content_version, wb)
        return wb

    def _touch(self, item: Item, wb: Workbook) -> None:
        item.version += 1  # autosave: new content, a new eTag and cTag
        item.content_version += 1
        self.books[item.id] = (item.content_version, wb)

    def expire_sessions(self) -> None:
        for k in self.sessions_wb:
            self.sessions_wb[k] = False

    def __call__(self, req: Request) -> Response:
        with self._count:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return super().__call__(req)
        finally:
            with self._count:
                self.inflight -= 1

    def _api(self, req: Request) -> Response:
        p = unquote(req.path)
        m = re.fullmatch(r"/v1\.0/drives/([^/]+)/items/([^/:]+)/workbook/(.+)", p)
        if not m:
            return super()._api(req)
        drive = self.drives.get(m.group(1))
        item = drive.items.get(m.group(2)) if drive else None
        if item is None or item.folder:
            return gerror(404, "itemNotFound", "The resource could not be found.")
        if not item.name.lower().endswith(".xlsx"):
            return gerror(400, "invalidRequest", "unsupportedWorkbook", "unsupportedWorkbook")
        rest = m.group(3)
        self.workbook_calls.append(f"{req.method} {rest}")
        if len(req.body) > self.max_body:
            return gerror(413, "requestSizeExceeded", "The request payload is too large", "payloadTooLargeUncategorized")
        base = f"{self.base}/v1.0/drives/{drive.id}/items/{item.id}/workbook"
        if rest == "createSession" and req.method == "POST":
            return self._create(req, base)
        if rest.startswith("operations/") and req.method == "GET":
            return self._operation(rest.split("/", 1)[1], base)
        m2 = re.fullmatch(r"sessionInfoResource\(key='([^']+)'\)", rest)
        if m2 and req.method == "GET":
            return Response(200, {"id": m2.group(1), "persistChanges": True})
        sid = req.headers.get("workbook-session-id")
        if sid is None:
            self.sessionless += 1
        elif not self.sessions_wb.get(sid, False):
            return gerror(400, "invalidRequest", "The session has expired", "invalidSessionReCreatable")
        if rest == "closeSession" and req.method == "POST":
            self.sessions_wb[sid or ""] = False
            return Response(204)
        if rest == "refreshSession" and req.method == "POST":
            return Response(204)
        wb = self._book(item)
        failing = False
        if req.method != "GET":
            self.writes += 1
            if self._fail is not None and self._fail[0] == self.writes:
                failing, applied = True, self._fail[1]
                self._fail = None
                if sid is not None:
                    self.sessions_wb[sid] = False
                if not applied:
                    return gerror(500, "internalServerError", "An internal server error occurred.",
                                  "internalServerErrorUncategorized")
        resp = self._workbook_op(req, wb, rest)
        if req.method != "GET" and resp.status < 300:
            self._touch(item, wb)
        if failing:
            return gerror(500, "internalServerError", "An internal server error occurred.",
                          "internalServerErrorUncategorized")
        kind = self._kind(req.method, rest)
        if kind in self.timeout_after_apply and resp.status < 300:
            self.timeout_after_apply.discard(kind)
            return gerror(504, "gatewayTimeout", "The operation timed out", "gatewayTimeoutUncategorized",
                          {"Retry-After": "3"})
        return resp

    @staticmethod
    def _kind(method: str, rest: str) -> str | None:
        if method != "POST":
            return None
        for kind in NON_IDEMPOTENT:
            if rest == kind or rest.endswith("/" + kind):
                return kind
        return None

    def _create(self, req: Request, base: str) -> Response:
        if self.session_504 > 0:
            self.session_504 -= 1
            return gerror(504, "gatewayTimeout", "The operation timed out", "gatewayTimeoutUncategorized")
        body = req.json() or {}
        sid = "cluster=PUS3&session=" + secrets.token_hex(8)
        if "respond-async" in req.headers.get("prefer", "") and (self.async_polls > 0 or self.async_fail):
            op = secrets.token_hex(6)
            self.operations[op] = {"id": op, "polls": self.async_polls, "session": sid, "seen": 0}
            headers = {"Location": f"{base}/operations/{op}"}
            if self.async_retry_after:
                headers["Retry-After"] = self.async_retry_after
            return Response(202, {}, headers=headers)
        self.sessions_wb[sid] = True
        return Response(201, {"id": sid, "persistChanges": bool(body.get("persistChanges"))})

    def _operation(self, op_id: str, base: str) -> Response:
        op = self.operations.get(op_id)
        if op is None:
            return gerror(404, "itemNotFound", "operation not found")
        headers = {"Retry-After": self.async_retry_after} if self.async_retry_after else {}
        if op["polls"] > 0:
            op["polls"] -= 1
            op["seen"] += 1
            return Response(200, {"id": op["id"], "status": "notStarted" if op["seen"] == 1 else "running"},
                            headers=headers)
        if self.async_fail:
            return Response(200, {"id": op["id"], "status": "failed", "error": {
                "code": "internalServerError", "message": "An internal server error occurred.",
                "innerError": {"code": "internalServerErrorUncategorized", "message": "An unspecified error has "
                               "occurred.", "innerError": {"code": "GenericFileOpenError",
                                                           "message": "The workbook cannot be opened."}}}})
        self.sessions_wb[op["session"]] = True
        return Response(200, {"id": op["id"], "status": "succeeded",
                              "resourceLocation": f"{base}/sessionInfoResource(key='{op['session']}')"})

    # ------------------------------------------------------------------ worksheets, ranges, tables
    def _workbook_op(self, req: Request, wb: Workbook, rest: str) -> Response:
        if rest == "worksheets" and req.method == "GET":
            return Response(200, {"value": [self._ws_json(wb, s) for s in wb.sheets]})
        if rest == "worksheets/add" and req.method == "POST":
            name = (req.json() or {}).get("name", "")
            if not name or wb.sheet(name):
                return gerror(400, "invalidRequest", "A worksheet with that name already exists", "itemAlreadyExists")
            wb.sheets.append(Sheet(name))
            return Response(200, self._ws_json(wb, wb.sheets[-1]))
        if rest == "tables" and req.method == "GET":
            return Response(200, {"value": [self._table_json(t) for t in wb.tables]})
        m = re.fullmatch(r"worksheets(?:/([^/(]+)|\('([^']+)'\))(?:/(.*))?", rest)
        if m:
            sheet = wb.sheet((m.group(1) or m.group(2)).replace("''", "'"))
            if sheet is None:
                return gerror(404, "itemNotFound", "The requested resource doesn't exist.", "itemNotFound")
            return self._sheet_op(req, wb, sheet, m.group(3) or "")
        m = re.fullmatch(r"tables(?:/([^/(]+)|\('([^']+)'\))(?:/(.*))?", rest)
        if m:
            table = wb.table(m.group(1) or m.group(2))
            if table is None:
                return gerror(404, "itemNotFound", "The requested resource doesn't exist.", "itemNotFound")
            return self._table_op(req, wb, table, m.group(3) or "")
        return gerror(400, "invalidRequest", f"Unsupported workbook call {req.method} {rest}")

    def _sheet_op(self, req: Request, wb: Workbook, sheet: Sheet, rest: str) -> Response:
        if rest == "" and req.method == "DELETE":  # worksheet-delete: its tables go with it
            wb.sheets.remove(sheet)
            wb.tables = [t for t in wb.tables if t.sheet is not sheet]
            return Response(204)
        if rest.startswith("usedRange") and req.method == "GET":
            return Response(200, self._range_json(sheet, *sheet.used("valuesOnly=true" in rest)))
        if rest == "tables" and req.method == "GET":
            return Response(200, {"value": [self._table_json(t) for t in wb.tables if t.sheet is sheet]})
        if rest == "tables/add" and req.method == "POST":
            return self._add_table(wb, sheet, req.json() or {})
        m = re.fullmatch(r"range\(address='([^']+)'\)(?:/(\w+))?", rest)
        if not m:
            return gerror(400, "invalidRequest", f"Unsupported {req.method} {rest}")
        try:
            _, r1, c1, r2, c2 = parse_address(m.group(1))
        except ValueError:
            return gerror(400, "invalidRequest", "The address is not valid", "invalidArgument")
        action = m.group(2) or ""
        if req.method == "PATCH" and not action:
            return self._patch(sheet, r1, c1, r2, c2, req.json() or {})
        if req.method == "POST" and action == "clear":
            apply_to = (req.json() or {}).get("applyTo", "All")
            for r in range(r1, r2 + 1):
                for c in range(c1, c2 + 1):
                    if apply_to in ("All", "Contents"):
                        sheet.cells.pop((r, c), None)
                    if apply_to in ("All", "Formats"):
                        sheet.formats.pop((r, c), None)
            return Response(204)
        if req.method == "POST" and action == "delete":
            return self._delete_up(wb, sheet, r1, c1, r2, c2, req.json() or {})
        if req.method == "GET" and not action:
            return Response(200, self._range_json(sheet, r1, c1, r2, c2, with_values=True))
        return gerror(400, "invalidRequest", f"Unsupported {req.method} {rest}")

    def _patch(self, sheet: Sheet, r1: int, c1: int, r2: int, c2: int, body: dict) -> Response:
        """PATCH range (https://learn.microsoft.com/graph/api/range-update): `values` and `numberFormat`
        are grids of the range's shape; numberFormat holds "Excel's number format code for the given
        cell" (workbookRange, https://learn.microsoft.com/graph/api/resources/range), one per cell, so a
        column or a single row may differ from the next. A null entry: this fake leaves that cell as it is."""
        grids = {k: body[k] for k in ("values", "numberFormat") if k in body}
        if not grids:
            return gerror(400, "invalidRequest", "Nothing to update", "invalidArgument")
        for grid in grids.values():
            if not isinstance(grid, list) or len(grid) != r2 - r1 + 1 or any(
                    not isinstance(row, list) or len(row) != c2 - c1 + 1 for row in grid):
                return gerror(400, "invalidRequest", "The number of rows or columns in the input array doesn't "
                              "match the size or dimensions of the range.", "invalidArgument")
        for i, row in enumerate(grids.get("values", [])):  # read against the formats from before this request
            for j, v in enumerate(row):
                if v is not None:  # null leaves the cell unchanged
                    sheet.put(r1 + i, c1 + j, v)
        for i, row in enumerate(grids.get("numberFormat", [])):
            for j, f in enumerate(row):
                if f is None:
                    continue
                if f == "General":
                    sheet.formats.pop((r1 + i, c1 + j), None)
                else:
                    sheet.formats[(r1 + i, c1 + j)] = f
        return Response(200, self._range_json(sheet, r1, c1, r2, c2))

    def _delete_up(self, wb: Workbook, sheet: Sheet, r1: int, c1: int, r2: int, c2: int, body: dict) -> Response:
        if body.get("shift") != "Up":
            return gerror(400, "invalidRequest", "only shift Up is supported by this fake")
        n = r2 - r1 + 1
        for t in wb.tables:
            if t.sheet is not sheet or t.c2 < c1 or t.c1 > c2:
                continue
            inside = t.r1 < r1 and r2 <= t.r2
            if (t.c1, t.c2) != (c1, c2) or not (inside or r1 > t.r2):
                return gerror(400, "invalidRequest", "This operation is not allowed. It would shift cells in a table.",
                              "invalidOperation")
            if inside:
                t.r2 -= n
        for store in (sheet.cells, sheet.formats):
            moved = {}
            for (r, c), v in store.items():
                if c1 <= c <= c2 and r >= r1:
                    if r > r2:
                        moved[(r - n, c)] = v
                else:
                    moved[(r, c)] = v
            store.clear()
            store.update(moved)
        return Response(204)

    def _add_table(self, wb: Workbook, sheet: Sheet, body: dict) -> Response:
        try:
            sname, r1, c1, r2, c2 = parse_address(body.get("address", ""))
        except ValueError:
            return gerror(400, "invalidRequest", "The address is not valid", "invalidArgument")
        if sname and sname.lower() != sheet.name.lower():
            return gerror(400, "invalidRequest", "The address is on another sheet")
        for t in wb.tables:
            if t.sheet is sheet and not (t.r2 < r1 or t.r1 > r2 or t.c2 < c1 or t.c1 > c2):
                return gerror(400, "invalidRequest", "A table can't overlap another table.", "invalidOperation")
        name = f"Table{wb.next_table}"
        t = Table(str(wb.next_table), name, sheet, r1, c1, r2, c2)
        wb.next_table += 1
        wb.tables.append(t)
        return Response(200, self._table_json(t))

    def _table_op(self, req: Request, wb: Workbook, t: Table, rest: str) -> Response:
        if req.method == "GET" and rest == "":
            return Response(200, self._table_json(t))
        if req.method == "PATCH" and rest == "":
            name = (req.json() or {}).get("name")
            if name:
                other = wb.table(name)
                if (other is not None and other is not t) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
                    return gerror(400, "invalidRequest", "The table name is invalid or already used", "invalidArgument")
                t.name = name
            return Response(200, self._table_json(t))
        if req.method == "DELETE" and rest == "":
            wb.tables.remove(t)
            return Response(204)
        if req.method == "GET" and rest in ("range", "headerRowRange", "dataBodyRange"):
            r1 = t.r1 + (1 if rest == "dataBodyRange" else 0)
            r2 = t.r1 if rest == "headerRowRange" else t.r2
            return Response(200, self._range_json(t.sheet, r1, t.c1, r2, t.c2))
        if req.method == "POST" and rest == "rows/add":
            values = (req.json() or {}).get("values") or []
            width = t.c2 - t.c1 + 1
            if any(len(row) != width for row in values):
                return gerror(400, "invalidRequest", "The values must have the table's column count",
                              "invalidArgument")
            index = t.r2 - t.r1
            self._append_rows(t, values)
            return Response(200, {"index": index, "values": values})
        return gerror(400, "invalidRequest", f"Unsupported {req.method} tables/{rest}")

    def _append_rows(self, t: Table, values: list[list[Any]]) -> None:
        n = len(values)
        for store in (t.sheet.cells, t.sheet.formats):  # cells below the table, in its columns, move down
            shifted = {((r + n, c) if (t.c1 <= c <= t.c2 and r > t.r2) else (r, c)): v for (r, c), v in store.items()}
            store.clear()
            store.update(shifted)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                t.sheet.put(t.r2 + 1 + i, t.c1 + j, v)
        t.r2 += n

    # ------------------------------------------------------------------ JSON shapes
    def _ws_json(self, wb: Workbook, s: Sheet) -> dict:
        return {"id": s.id, "name": s.name, "position": wb.sheets.index(s), "visibility": "Visible"}

    def _table_json(self, t: Table) -> dict:
        return {"id": t.id, "name": t.name, "showHeaders": True, "showTotals": False, "style": "TableStyleMedium2"}

    def _range_json(self, s: Sheet, r1: int, c1: int, r2: int, c2: int, with_values: bool = False) -> dict:
        body = {"address": address(s.name, r1, c1, r2, c2), "rowCount": r2 - r1 + 1, "columnCount": c2 - c1 + 1,
                "rowIndex": r1 - 1, "columnIndex": c1 - 1, "cellCount": (r2 - r1 + 1) * (c2 - c1 + 1)}
        if with_values:
            rows = [[s.cells.get((r, c)) for c in range(c1, c2 + 1)] for r in range(r1, r2 + 1)]
            body["values"] = [[0 if isinstance(v, Formula) else ("" if v is None else v) for v in row] for row in rows]
            body["formulas"] = [[str(v) if isinstance(v, Formula) else ("" if v is None else v) for v in row]
                                for row in rows]
            body["valueTypes"] = [[_value_type(v) for v in row] for row in rows]
            body["numberFormat"] = [[s.formats.get((r, c), "General") for c in range(c1, c2 + 1)]
                                    for r in range(r1, r2 + 1)]
        return body


def _value_type(v: Any) -> str:
    if v is None or v == "":
        return "Empty"
    if isinstance(v, Formula):
        return "Double"
    if isinstance(v, bool):
        return "Boolean"
    if isinstance(v, int | float):
        return "Double"
    return "String"
