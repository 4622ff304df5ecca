"""paginate(): follows cursors, stops on None or "", refuses a cursor it has already seen."""

from __future__ import annotations

import pytest

from connectors.errors import FatalAPIError
from connectors.http.paging import Cursor, paginate


def pages_from(table: dict[Cursor, tuple[list[int], Cursor]]):
    calls: list[Cursor] = []

    def fetch(cursor: Cursor) -> tuple[list[int], Cursor]:
        calls.append(cursor)
        return table[cursor]

    return fetch, calls


@pytest.mark.parametrize("end", [None, ""])
def test_follows_cursors_until_the_end(end):
    fetch, calls = pages_from({None: ([1, 2], "c1"), "c1": ([3, 4], "c2"), "c2": ([5], end)})
    assert list(paginate(fetch)) == [[1, 2], [3, 4], [5]]
    assert calls == [None, "c1", "c2"]


def test_integer_offsets_and_a_first_cursor():
    fetch, calls = pages_from({100: ([1], 200), 200: ([2], 300), 300: ([], None)})
    assert list(paginate(fetch, first=100)) == [[1], [2], []]
    assert calls == [100, 200, 300]


def test_single_page():
    fetch, calls = pages_from({None: ([], None)})
    assert list(paginate(fetch)) == [[]]
    assert calls == [None]


@pytest.mark.parametrize(
    ("table", "repeated", "pages_before"),
    [
        ({None: ([1], "a"), "a": ([2], "a")}, "a", 2),  # the same cursor again at once
        ({None: ([1], "a"), "a": ([2], "b"), "b": ([3], "a")}, "a", 3),  # a loop back
        ({0: ([1], 50), 50: ([2], 50)}, 50, 2),
    ],
)
def test_repeated_cursor_raises(table, repeated, pages_before):
    first = 0 if 0 in table else None
    fetch, _ = pages_from(table)
    got: list[list[int]] = []
    with pytest.raises(FatalAPIError) as info:
        for page in paginate(fetch, first=first):
            got.append(page)
    assert str(info.value) == (
        f"the server returned the cursor {repeated!r} twice; stopping to avoid an endless loop"
    )
    assert len(got) == pages_before  # pages already read were handed over


def test_is_lazy():
    fetch, calls = pages_from({None: ([1], "a"), "a": ([2], None)})
    it = paginate(fetch)
    assert calls == []
    assert next(it) == [1] and calls == [None]
