"""stable_sort_order: the delta merge's row order equals a stable sort of the whole stack."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows import merge_order
from flows.merge_order import stable_sort_order

BY = ("opportunity_id", "entered_date")


def _rows(rng: np.random.Generator, ids: list[str], n: int, tz: str | None) -> pd.DataFrame:
    days = pd.to_datetime("2026-01-01") + pd.to_timedelta(rng.integers(0, 40, n), unit="D")
    when = pd.Series(days)
    when[rng.random(n) < 0.1] = pd.NaT
    if tz:
        when = when.dt.tz_localize(tz)
    return pd.DataFrame({"opportunity_id": rng.choice(np.array(ids, dtype=object), n), "entered_date": when,
                         "row": np.arange(n)})


def _stack(kept: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    kept = kept.sort_values(list(BY), kind="stable")
    return pd.concat([kept, new], ignore_index=True)


@pytest.mark.parametrize("tz", [None, "Asia/Seoul"])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n_kept", "n_new"), [(400, 30), (0, 25), (300, 0), (1, 1), (50, 200)])
def test_same_order_as_a_stable_sort_of_everything(seed: int, tz: str | None, n_kept: int, n_new: int) -> None:
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(60)]  # "10" sorts before "9": text order, as pandas sorts it
    changed = set(rng.choice(np.array(ids), 15, replace=False).tolist())
    kept = _rows(rng, [i for i in ids if i not in changed], n_kept, tz)
    new = _rows(rng, sorted(changed), n_new, tz)
    frame = _stack(kept, new)
    order = stable_sort_order(frame, n_kept, BY)
    expected = frame.sort_values(list(BY), kind="stable").index.to_numpy()
    np.testing.assert_array_equal(order, expected)
    assert sorted(order.tolist()) == list(range(len(frame)))


def _spy_sort(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the frames sorted whole (the fallback) by their length."""
    calls: list[int] = []
    real = pd.DataFrame.sort_values

    def counted(self: pd.DataFrame, *args: object, **kwargs: object) -> pd.DataFrame:
        calls.append(len(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(merge_order.pd.DataFrame, "sort_values", counted)
    return calls


def test_only_the_new_rows_are_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    kept = _rows(rng, ["a", "c", "e"], 500, None)
    new = _rows(rng, ["b", "d", "f"], 12, None)
    frame = _stack(kept, new)
    calls = _spy_sort(monkeypatch)
    order = stable_sort_order(frame, 500, BY)
    assert calls == [12]
    np.testing.assert_array_equal(order, frame.sort_values(list(BY), kind="stable").index.to_numpy())


@pytest.mark.parametrize("case", ["kept unsorted", "key in both", "date unsorted in a key", "numeric keys",
                                  "missing key", "text dates"])
def test_falls_back_to_the_full_sort_when_the_premise_fails(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    kept = pd.DataFrame({"opportunity_id": ["a", "b", "c"],
                         "entered_date": pd.to_datetime(["2026-01-03", "2026-01-01", "2026-01-02"])})
    new = pd.DataFrame({"opportunity_id": ["bb", "a0"], "entered_date": pd.to_datetime(["2026-01-05", "2026-01-04"])})
    if case == "kept unsorted":
        kept = kept.iloc[[1, 0, 2]]
    elif case == "key in both":
        new.loc[0, "opportunity_id"] = "b"
    elif case == "date unsorted in a key":
        kept = pd.DataFrame({"opportunity_id": ["a", "a", "c"],
                             "entered_date": pd.to_datetime(["2026-01-03", "2026-01-01", "2026-01-02"])})
    elif case == "numeric keys":
        kept["opportunity_id"] = [1, 2, 3]
        new["opportunity_id"] = [5, 4]
    elif case == "missing key":
        new.loc[1, "opportunity_id"] = None
    elif case == "text dates":
        kept["entered_date"] = ["2026-01-01", "2026-01-02", "2026-01-03"]
        new["entered_date"] = ["2026-01-05", "2026-01-04"]
    frame = pd.concat([kept, new], ignore_index=True)
    calls = _spy_sort(monkeypatch)
    order = stable_sort_order(frame, 3, BY)
    assert calls[-1] == 5  # the whole stack, sorted once
    assert calls.count(5) == 1
    np.testing.assert_array_equal(order, frame.sort_values(list(BY), kind="stable").index.to_numpy())
