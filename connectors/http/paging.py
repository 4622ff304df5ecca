"""Cursor pagination as one small, tested function."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from connectors.errors import FatalAPIError

T = TypeVar("T")
Cursor = str | int | None


def paginate(fetch_page: Callable[[Cursor], tuple[list[T], Cursor]], first: Cursor = None) -> Iterator[list[T]]:
    """Yield pages from `fetch_page(cursor) -> (items, next_cursor)` until next_cursor is None.

    A cursor the server hands out twice would loop forever: that raises FatalAPIError.
    """
    seen: set[Cursor] = set()
    cursor = first
    while True:
        items, nxt = fetch_page(cursor)
        yield items
        if nxt is None or nxt == "":
            return
        if nxt in seen or nxt == cursor:
            raise FatalAPIError(f"the server returned the cursor {nxt!r} twice; stopping to avoid an endless loop")
        seen.add(nxt)
        cursor = nxt
