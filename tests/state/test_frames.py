"""connectors/state/frames.py: text columns with gaps keep every cell's type and text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectors.state import frames

GAPS = {"none": None, "nan": float("nan"), "nat": pd.NaT, "np_nan": np.float64("nan")}


@pytest.mark.parametrize("gaps", [[], ["none"], ["nan"], ["nat"], ["np_nan"], ["none", "nan", "nat"]])
def test_a_text_column_with_gaps_reads_back_cell_for_cell(gaps: list[str]) -> None:
    texts = ["b", "a", "b", "", "a\x00c", np.str_("np"), "b"]
    cells = list(texts)
    for i, gap in enumerate(gaps):
        cells.insert(2 * i + 1, GAPS[gap])
    frame = pd.DataFrame({"t": pd.Series(cells, dtype=object)})
    (back,), _ = frames.load(frames.dump([frame], {}))
    got = back["t"].tolist()
    assert len(got) == len(cells)
    for want, have in zip(cells, got, strict=True):
        if isinstance(want, str):
            assert type(have) is str and have == str(want)
        else:
            assert type(have) is (float if isinstance(want, float) else type(want))  # NaN: a float NaN
            assert pd.isna(have)


def test_text_cells_share_one_string_per_distinct_text_in_first_seen_order() -> None:
    cells = ["x", None, "y", "x", float("nan"), "y", "z"]
    arrays: dict[str, np.ndarray] = {}
    frames._encode_objects(np.array(cells, dtype=object), "k", arrays)
    assert arrays["k.txt"].tobytes() == b"x\x00y\x00z"
    assert arrays["k.idx"].tolist() == [0, 1, 0, 1, 2]
    assert arrays["k.code"].tolist() == [frames.STR, frames.NONE, frames.STR, frames.STR, frames.FLOAT,
                                         frames.STR, frames.STR]
    (back,), _ = frames.load(frames.dump([pd.DataFrame({"t": pd.Series(cells, dtype=object)})], {}))
    assert back["t"].iloc[0] is back["t"].iloc[3]


@pytest.mark.parametrize("odd", [pd.NA, object()])
def test_a_text_column_with_a_value_this_format_cannot_hold_is_refused(odd: object) -> None:
    with pytest.raises(frames.Unsupported):
        frames.dump([pd.DataFrame({"t": pd.Series(["a", odd, "b"], dtype=object)})], {})
