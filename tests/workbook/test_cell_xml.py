"""Cell XML of the writer's fast paths equals its general path: a (nearly) distinct text column is
written value by value without looking for repeats, and HYPERLINK() cells are escaped in one pass."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.workbook.xlsx_writer import WriteStats, _formula_cells, _text_table


def _cells(values: list[object], distinct: bool) -> list[str]:
    codes, table = _text_table(np.array(values, dtype=object), ' s="4"', WriteStats(), None, distinct=distinct)
    return table[codes].tolist()


@pytest.mark.parametrize("values", [
    ["a", "b & c", "<d>", " e", "f\r"],  # every value present: joined as it is
    ["a", None, "b", float("nan"), ""],  # missing and empty values: no cell
    ["a", 7, 2.5, None, "x"],  # numbers in a text column: their text
])
def test_distinct_path_writes_what_the_general_path_writes(values: list[object]) -> None:
    fast = _cells(values, distinct=True)
    assert fast == _cells(values, distinct=False)
    present = [v for v in values if isinstance(v, str | int | float) and v == v and v != ""]
    assert sum(c != "" for c in fast) == len(present)


def test_distinct_path_cells() -> None:
    assert _cells(["a&b", None, " c"], distinct=True) == [
        '<c s="4" t="inlineStr"><is><t>a&amp;b</t></is></c>', "",
        '<c s="4" t="inlineStr"><is><t xml:space="preserve"> c</t></is></c>']


def test_formula_cells_escape_the_url_in_the_formula_and_the_cached_value() -> None:
    urls = np.array(["https://a.example/?x=1&y=2", 'https://b.example/<q>"'], dtype=object)
    assert _formula_cells(urls, "3") == [
        '<c s="3" t="str"><f>HYPERLINK("https://a.example/?x=1&amp;y=2")</f><v>https://a.example/?x=1&amp;y=2</v></c>',
        '<c s="3" t="str"><f>HYPERLINK("https://b.example/&lt;q&gt;""")</f><v>https://b.example/&lt;q&gt;"</v></c>',
    ]
    assert _formula_cells(urls[:1], "0") == [
        '<c t="str"><f>HYPERLINK("https://a.example/?x=1&amp;y=2")</f><v>https://a.example/?x=1&amp;y=2</v></c>']
    assert _formula_cells(urls[:0], "3") == []
