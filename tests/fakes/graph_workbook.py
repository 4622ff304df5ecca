"""The fake Graph with the Excel workbook API (api-contracts.md section 6) on top of FakeGraph.

A workbook is built from the item's .xlsx bytes (openpyxl) on first use: sheets hold cells
(formulas are strings starting with '='), tables have a name and a range. Supported: sessions
(persistChanges, `workbook-session-id`, 202 + Location with `Prefer: respond-async`, 504 switch,
expiry -> invalidSessionReCreatable), worksheets list/add by name or id, usedRange, range PATCH
with shape checks, clear, delete (shift up, shrinking a table), tables list/add/rename/range/
rows add/delete, a request-size cap (413), and 429/504 from the base switches.
"""

from __future__ import annotations

import io
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import openpyxl
from openpyxl.utils import column_index_from_string, get_column_letter

from tests.fakes.graph import FakeGraph, Item, gerror
from tests.fakes.server import Request, Response

Cell = tuple[int, int]  # (row, col), 1-based


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
    name = f"'{sheet}'" if not sheet.isalnum() else sheet
    return f"{name}!{get_column_letter(c1)}{r1}:{get_column_letter(c2)}{r2}"


@dataclass
class Sheet:
    name: str
    id: str = field(default_factory=lambda: "{" + str(uuid.uuid4()).upper() + "}")
    cells: dict[Cell, Any] = field(default_factory=dict)

    def used(self) -> tuple[int, int, int, int]:
        keys = [k for k, v in self.cells.items() if v not in (None, "")]
        if not keys:
            return 1, 1, 1, 1
        rows, cols = [k[0] for k in keys], [k[1] for k in keys]
        return min(rows), min(cols), max(rows), max(cols)


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
                    if c.value is not None:
                        sheet.cells[(c.row, c.column)] = c.value
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


class FakeGraphWorkbook(FakeGraph):
    """FakeGraph + `/items/{id}/workbook/...`. Switches: `session_504`, `rows_504`, `async_polls`,
    `max_body` (bytes, else 413), `expire_sessions()`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.books: dict[str, tuple[int, Workbook]] = {}
        self.sessions_wb: dict[str, bool] = {}  # id -> open
        self.operations: dict[str, dict] = {}
        self.session_504 = 0
        self.rows_504 = 0
        self.rows_504_applied = False
        self.async_polls = 1
        self.max_body = 4 * 1024 * 1024
        self.sessionless = 0  # workbook calls sent without workbook-session-id
        self.workbook_calls: list[str] = []
        self.inflight = 0
        self.max_inflight = 0
        self._count = threading.Lock()

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
            op = self.operations.get(rest.split("/", 1)[1])
            if op is None:
                return gerror(404, "itemNotFound", "operation not found")
            if op["polls"] > 0:
                op["polls"] -= 1
                return Response(200, {"id": op["id"], "status": "running"})
            return Response(200, {"id": op["id"], "status": "succeeded",
                                  "resourceLocation": f"{base}/sessionInfoResource(key='{op['session']}')"})
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
        resp = self._workbook_op(req, wb, rest)
        if req.method != "GET" and resp.status < 300:
            self._touch(item, wb)
        return resp

    def _create(self, req: Request, base: str) -> Response:
        if self.session_504 > 0:
            self.session_504 -= 1
            return gerror(504, "gatewayTimeout", "The operation timed out", "gatewayTimeoutUncategorized")
        body = req.json() or {}
        sid = "cluster=PUS3&session=" + secrets.token_hex(8)
        self.sessions_wb[sid] = True
        if "respond-async" in req.headers.get("prefer", ""):
            op = secrets.token_hex(6)
            self.operations[op] = {"id": op, "polls": self.async_polls, "session": sid}
            return Response(202, b"", headers={"Location": f"{base}/operations/{op}"})
        return Response(201, {"id": sid, "persistChanges": bool(body.get("persistChanges"))})

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
            sheet = wb.sheet(m.group(1) or m.group(2))
            if sheet is None:
                return gerror(404, "itemNotFound", "The requested resource doesn't exist.")
            return self._sheet_op(req, wb, sheet, m.group(3) or "")
        m = re.fullmatch(r"tables(?:/([^/(]+)|\('([^']+)'\))(?:/(.*))?", rest)
        if m:
            table = wb.table(m.group(1) or m.group(2))
            if table is None:
                return gerror(404, "itemNotFound", "The requested resource doesn't exist.")
            return self._table_op(req, wb, table, m.group(3) or "")
        return gerror(400, "invalidRequest", f"Unsupported workbook call {req.method} {rest}")

    def _sheet_op(self, req: Request, wb: Workbook, sheet: Sheet, rest: str) -> Response:
        if rest.startswith("usedRange") and req.method == "GET":
            return Response(200, self._range_json(sheet, *sheet.used()))
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
            for r in range(r1, r2 + 1):
                for c in range(c1, c2 + 1):
                    sheet.cells.pop((r, c), None)
            return Response(204)
        if req.method == "POST" and action == "delete":
            return self._delete_up(wb, sheet, r1, c1, r2, c2, req.json() or {})
        if req.method == "GET" and not action:
            return Response(200, self._range_json(sheet, r1, c1, r2, c2, with_values=True))
        return gerror(400, "invalidRequest", f"Unsupported {req.method} {rest}")

    def _patch(self, sheet: Sheet, r1: int, c1: int, r2: int, c2: int, body: dict) -> Response:
        values = body.get("values")
        if not isinstance(values, list) or len(values) != r2 - r1 + 1 or any(
                not isinstance(row, list) or len(row) != c2 - c1 + 1 for row in values):
            return gerror(400, "invalidRequest", "The number of rows or columns in the input array doesn't match "
                          "the size or dimensions of the range.", "invalidArgument")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v is None:
                    continue  # null leaves the cell unchanged
                if isinstance(v, str) and v.startswith("'"):
                    v = v[1:]
                sheet.cells[(r1 + i, c1 + j)] = v if v != "" else None
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
        moved = {}
        for (r, c), v in sheet.cells.items():
            if c1 <= c <= c2 and r >= r1:
                if r > r2:
                    moved[(r - n, c)] = v
            else:
                moved[(r, c)] = v
        sheet.cells = moved
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
            if self.rows_504 > 0:
                self.rows_504 -= 1
                if self.rows_504_applied:  # the rows went in, but the answer was a timeout
                    self._append_rows(t, values)
                return gerror(504, "gatewayTimeout", "The operation timed out", "gatewayTimeoutUncategorized")
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
        shifted = {}
        for (r, c), v in t.sheet.cells.items():
            shifted[(r + n, c) if (t.c1 <= c <= t.c2 and r > t.r2) else (r, c)] = v
        t.sheet.cells = shifted
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if isinstance(v, str) and v.startswith("'"):
                    v = v[1:]
                t.sheet.cells[(t.r2 + 1 + i, t.c1 + j)] = v
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
            body["values"] = [[s.cells.get((r, c), "") for c in range(c1, c2 + 1)] for r in range(r1, r2 + 1)]
        return body
