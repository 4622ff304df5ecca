"""The Graph workbook API calls `workbook_api` is built from: a session, safe writes and reads of cells.

`Workbook` holds one persistChanges session: `open()` creates it (long-running pattern: a 202 is
polled at its Location every Retry-After seconds, else every `poll_interval`, never more than 4
minutes apart, for at most `wait_max` seconds; concepts/workbook-best-practice.md suggests about
30 s), `call()` sends inside it (a session the service dropped, `invalidSession*`, is opened again
once), `unsure()` sends a request that is not safe to repeat: when its outcome is unknown (a 5xx
or a dropped connection, `OutcomeUnknown`) it waits out the cooldown, reads the workbook back, and
sends it again only when it was not applied (workbook-error-handling.md: a client "is not
expected to resend the failed request" blindly).

`write()` puts values in row blocks: every text cell gets the Text number format "@" before its
value, so Excel keeps it as text (the Excel API reads a string starting with "=", "+" or "-" as a
formula: https://learn.microsoft.com/javascript/api/excel/excel.range values; a cell formatted as
Text keeps what is entered as text:
https://support.microsoft.com/office/format-numbers-as-text-583160db-d0f3-4c21-b3b9-6d8d1e6d5ab0).
`read()` returns cells as `write()` takes them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from openpyxl.utils import get_column_letter

from connectors.destinations.onedrive.graph import GraphApi
from connectors.errors import DestinationError, FatalAPIError, RetriableAPIError
from connectors.http.session import OutcomeUnknown, default_error_message, retry_after_seconds

log = logging.getLogger("connectors.destinations.onedrive.workbook_api")

TEXT_FORMAT = "@"
POLL_MAX_INTERVAL = 240.0  # "The maximum interval should be no more than 4 minutes" (workbook-best-practice.md)
UNSURE_TRIES = 3  # sends of one non-repeatable request whose earlier sends were read back as not applied
READ_BLOCK_CELLS = 20_000
T = TypeVar("T")


class Formula(str):
    """A formula (its text starts with '='): written as such, never as text."""


def is_text(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, Formula) and value != ""


def ref(r1: int, c1: int, r2: int, c2: int) -> str:
    return f"{get_column_letter(c1)}{r1}:{get_column_letter(c2)}{r2}"


def parse(address: str) -> tuple[int, int, int, int]:
    """`Sheet1!B2:D9` -> (r1, c1, r2, c2)."""
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


def sheet_path(name: str) -> str:
    return f"worksheets('{quote(name.replace(chr(39), chr(39) * 2), safe='')}')"


def blocks(rows: list[list[Any]], max_bytes: int, max_rows: int,
           formats: list[list[str | None]] | None = None) -> list[tuple[int, int]]:
    """(start, stop) row slices whose JSON stays under `max_bytes` (format matrix included: `formats`,
    else counted as large as the values) and `max_rows`."""
    out, start, size = [], 0, 0
    for i, row in enumerate(rows):
        values = len(json.dumps(row, default=str))
        n = values + (len(json.dumps(formats[i])) if formats is not None else values) + 8
        if i > start and (size + n > max_bytes or i - start >= max_rows):
            out.append((start, i))
            start, size = i, 0
        size += n
    if start < len(rows):
        out.append((start, len(rows)))
    return out


def inner_code(resp: requests.Response) -> str:
    try:
        return str(resp.json()["error"]["innerError"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


class Workbook:
    """Workbook calls inside one persistChanges session."""

    def __init__(self, g: GraphApi, base: str, sleep: Callable[[float], None], poll_interval: float,
                 wait_max: float, max_bytes: int, max_rows: int):
        self.g, self.base, self.sleep = g, base, sleep
        self.poll_interval, self.wait_max = poll_interval, wait_max
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self.id: str | None = None

    # ------------------------------------------------------------------ session
    def open(self) -> None:
        resp = self.g.call("POST", f"{self.base}/createSession", json={"persistChanges": True},
                           headers={"Prefer": "respond-async"})
        if resp.status_code in (200, 201):
            self.id = resp.json()["id"]
            return
        location = resp.headers.get("Location")
        if resp.status_code != 202 or not location:
            raise FatalAPIError(f"Microsoft Graph answered HTTP {resp.status_code} to createSession without a session")
        self.id = self.g.call("GET", self._wait_for(location, retry_after_seconds(resp))).json()["id"]

    def _wait_for(self, location: str, wait: float | None) -> str:
        """Poll a long-running operation until it succeeds; its resourceLocation."""
        waited = 0.0
        while True:
            delay = min(POLL_MAX_INTERVAL, self.poll_interval if wait is None else wait)
            if waited + delay > self.wait_max:
                raise RetriableAPIError(f"Microsoft Graph was still opening the workbook after {waited:.0f}s "
                                        "(createSession); try again later")
            self.sleep(delay)
            waited += delay
            resp = self.g.call("GET", location)
            body = resp.json()
            status = body.get("status")
            if status == "succeeded":
                return body["resourceLocation"]
            if status == "failed":
                err = body.get("error") or {}
                codes = []
                while isinstance(err, dict) and err.get("code"):
                    codes.append(f"{err.get('code')}: {err.get('message', '')}".strip(": "))
                    err = err.get("innerError")
                raise DestinationError("Microsoft Graph could not open the workbook for editing (createSession "
                                       f"failed: {'; '.join(codes) or 'no reason given'}); nothing was changed")
            wait = retry_after_seconds(resp)

    def close(self) -> None:
        if self.id is None:
            return
        try:
            self.call("POST", "closeSession", json={}, retry_session=False)
        except Exception as exc:  # best effort: the session times out by itself
            log.warning("onedrive: could not close the workbook session (%s)", type(exc).__name__)
        self.id = None

    def call(self, method: str, rest: str, *, retry_session: bool = True, repeat_safe: bool = True,
             allow: frozenset[int] = frozenset(), **kwargs: Any) -> requests.Response:
        """Send inside the session; statuses in `allow` come back, any other error raises."""
        for attempt in (1, 2):
            headers = {"workbook-session-id": self.id} if self.id else {}
            resp = self.g.call(method, f"{self.base}/{rest}", headers=headers, repeat_safe=repeat_safe,
                               allow=frozenset({400, 404, 409}) | allow, **kwargs)
            if resp.status_code < 400 or resp.status_code in allow:
                return resp
            if attempt == 1 and retry_session and inner_code(resp).startswith("invalidSession"):
                log.info("onedrive: the workbook session expired; opening a new one")  # nothing was applied
                self.open()
                continue
            raise FatalAPIError(f"Microsoft Graph refused {method} workbook/{rest.split('(')[0]} with HTTP "
                                f"{resp.status_code}: {default_error_message(resp)}")
        raise AssertionError("unreachable")

    def unsure(self, what: str, send: Callable[[], T], applied: Callable[[], T | None]) -> T:
        """Send a non-repeatable request; after an unknown outcome, read back and resend only if not applied."""
        for attempt in range(1, UNSURE_TRIES + 1):
            try:
                return send()
            except OutcomeUnknown as exc:
                wait = exc.wait if exc.wait is not None else self.g.policy.backoff(attempt)
                log.warning("onedrive: %s: %s; reading the workbook back in %.0fs", what, exc, wait)
                self.sleep(min(wait, self.g.policy.retry_after_max))  # the cooldown before any follow-up
                done = applied()
                if done is not None:
                    log.info("onedrive: %s had been applied", what)
                    return done
                log.info("onedrive: %s had not been applied; sending it again", what)
        raise RetriableAPIError(f"Microsoft Graph: {what} failed {UNSURE_TRIES} times without being applied")

    # ------------------------------------------------------------------ cells
    def write(self, sheet: str, r1: int, c1: int, values: list[list[Any]], formats: list[list[str | None]]) -> None:
        """Write `values` at (r1, c1) with the final number `formats` (None: leave the cell's format).

        Per block: formats first (text cells "@"), then values, then the final format of text cells
        that must not stay "@" (restoring a saved cell). Every request is a PATCH of fixed addresses.
        """
        for a, b in blocks(values, self.max_bytes, self.max_rows, formats):
            vals, fmts = values[a:b], formats[a:b]
            where = f"{sheet_path(sheet)}/range(address='{ref(r1 + a, c1, r1 + b - 1, c1 + len(vals[0]) - 1)}')"
            first = [[TEXT_FORMAT if is_text(v) else f for v, f in zip(row, frow, strict=True)]
                     for row, frow in zip(vals, fmts, strict=True)]
            if any(f is not None for row in first for f in row):
                self.call("PATCH", where, json={"numberFormat": first})
            self.call("PATCH", where, json={"values": [[str(v) if isinstance(v, Formula) else v for v in row]
                                                       for row in vals]})
            last = [[f if is_text(v) and f not in (None, TEXT_FORMAT) else None for v, f in zip(row, frow, strict=True)]
                    for row, frow in zip(vals, fmts, strict=True)]
            if any(f is not None for row in last for f in row):
                self.call("PATCH", where, json={"numberFormat": last})

    def read(self, sheet: str, r1: int, c1: int, r2: int, c2: int) -> tuple[list[list[Any]], list[list[str]]]:
        """The cells of a range as `write` takes them (text, Formula, numbers, "" for empty) and their formats."""
        values: list[list[Any]] = []
        formats: list[list[str]] = []
        step = max(1, min(self.max_rows, READ_BLOCK_CELLS // (c2 - c1 + 1)))
        for top in range(r1, r2 + 1, step):
            bottom = min(r2, top + step - 1)
            body = self.call("GET", f"{sheet_path(sheet)}/range(address='{ref(top, c1, bottom, c2)}')",
                             params={"$select": "address,values,formulas,numberFormat,valueTypes"}).json()
            for vrow, frow, trow, nrow in zip(body["values"], body["formulas"], body["valueTypes"],
                                              body["numberFormat"], strict=True):
                values.append([_cell(v, f, t) for v, f, t in zip(vrow, frow, trow, strict=True)])
                formats.append([n if isinstance(n, str) and n else "General" for n in nrow])
        return values, formats

    def used(self, sheet: str, values_only: bool) -> tuple[int, int, int, int]:
        flag = "true" if values_only else "false"
        return parse(self.call("GET", f"{sheet_path(sheet)}/usedRange(valuesOnly={flag})").json()["address"])

    def clear(self, sheet: str, area: tuple[int, int, int, int]) -> None:
        self.call("POST", f"{sheet_path(sheet)}/range(address='{ref(*area)}')/clear", json={"applyTo": "Contents"})


def _cell(value: Any, formula: Any, kind: str) -> Any:
    if isinstance(formula, str) and formula.startswith("=") and formula != value:
        return Formula(formula)
    if kind == "Empty" or value is None:
        return ""
    return value
