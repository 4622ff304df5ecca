"""The fast paths of the Flags and Actions text (transforms.flags.format_distinct, transforms.actions
._action_order): each equals the plain per-row computation it replaces, on random inputs with many
ties and on the edge cases (empty, one row, sparse keys past the dense table)."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.actions import _action_order, _joined_rows
from transforms.flags import _messages, format_distinct


@pytest.mark.parametrize(("n", "high"), [(0, 5), (1, 5), (500, 3), (500, 10**6)])  # 10**6: sparse keys, np.unique path
def test_format_distinct_is_the_per_row_format(n: int, high: int) -> None:
    rng = np.random.default_rng(n + high)
    a, b = rng.integers(-2, high, n), rng.integers(0, 4, n)
    calls: list[tuple[int, int]] = []

    def fmt(x: int, y: int) -> str:
        calls.append((x, y))
        return f"{x} days in stage {y}"

    got = format_distinct(fmt, a, b)
    assert got.dtype == object and got.tolist() == [f"{x} days in stage {y}" for x, y in zip(a, b, strict=True)]
    assert sorted(calls) == sorted(set(zip(a.tolist(), b.tolist(), strict=True)))  # each combination once


def test_messages_prefix_each_row_with_its_id() -> None:
    ids = np.array(["D1: ", "D2: ", "D3: "], dtype=object)
    assert _messages(ids, lambda k: f"idle {k} days", np.array([4, 9, 4])).tolist() == [
        "D1: idle 4 days", "D2: idle 9 days", "D3: idle 4 days"]
    assert _messages(ids[:0], lambda k: "x", np.array([], dtype=np.int64)).tolist() == []


def _plain_order(rank, neg_amount, close, row_id) -> list[int]:
    return np.lexsort((row_id.astype(str), close, neg_amount, rank)).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_action_order_is_the_full_sort_with_row_ids_as_text(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    rank = rng.integers(0, 3, n)
    neg_amount = -rng.choice([1_000.0, 2_000.0, 1.0, -1.0], n)  # -1.0: no amount (last)
    close = rng.choice([20_000, 20_001, np.iinfo(np.int64).max], n)
    row_id = np.array([rng.choice([f"{k}", k, f"r{k % 7}"]) for k in rng.integers(0, 40, n)], dtype=object)
    assert _action_order(rank, neg_amount, close, row_id).tolist() == _plain_order(rank, neg_amount, close, row_id)


def test_action_order_compares_ids_as_text_and_keeps_equal_ids_in_row_order() -> None:
    rank, amount, close = np.zeros(4, np.int64), np.zeros(4), np.zeros(4, np.int64)
    row_id = np.array([9, "10", 9, "1"], dtype=object)  # as text: "1" < "10" < "9" = "9"
    assert _action_order(rank, amount, close, row_id).tolist() == [3, 1, 0, 2]


@pytest.mark.parametrize("rows", [
    [],
    [["Past its close date by 3 days", "; no activity for 9 days", ""]],
    [["", "", ""], ["A", "", "; b"], ["Über", "; ünïcode", "; 🙂"]],
    [["stage \x00 name", "; x", ""], ["B", "", ""]],  # a NUL in the text: joined row by row
])
def test_joined_rows_is_each_row_joined(rows: list[list[str]]) -> None:
    parts = np.array(rows, dtype=object).reshape(len(rows), 3)
    got = _joined_rows(parts)
    assert got.dtype == object and got.tolist() == ["".join(r) for r in rows]
