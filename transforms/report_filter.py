"""A named report's rows: the opportunities (and rejected rows) its `filter` keeps.

Values are compared trimmed and case-insensitively; a row must match every list given; a row
without a value (no owner, say) is kept only by reports that do not filter on that field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from config.models import ReportFilterConfig

# filter key -> column of the canonical opportunities (and of the Rejected sheet)
FILTER_COLUMNS: dict[str, str] = {"owners": "owner", "teams": "team", "products": "product", "sources": "source"}


def _folded(values: pd.Series) -> pd.Series:
    """Trimmed, case-folded text; NA where there is no text."""
    obj = values.astype(object)
    text = obj.where(obj.map(lambda v: isinstance(v, str)), None)
    return text.astype(pd.StringDtype("python")).str.strip().str.casefold()


def filter_mask(frame: pd.DataFrame, flt: ReportFilterConfig) -> np.ndarray:
    """True for the rows of `frame` the filter keeps (a filtered column missing from `frame`: none)."""
    keep = np.ones(len(frame), dtype=bool)
    for key, column in FILTER_COLUMNS.items():
        wanted = getattr(flt, key)
        if wanted is None:
            continue
        if column not in frame.columns:
            return np.zeros(len(frame), dtype=bool)
        allowed = {w.strip().casefold() for w in wanted}
        keep &= _folded(frame[column]).isin(allowed).fillna(False).to_numpy(dtype=bool)
    return keep


def apply_filter(frame: pd.DataFrame, flt: ReportFilterConfig) -> pd.DataFrame:
    """The rows the filter keeps, renumbered from 0."""
    if not is_filtered(flt):
        return frame
    return frame.loc[filter_mask(frame, flt)].reset_index(drop=True)


def is_filtered(flt: ReportFilterConfig) -> bool:
    return any(getattr(flt, key) is not None for key in FILTER_COLUMNS)


def describe(flt: ReportFilterConfig) -> str:
    """e.g. "owners: Ann, Bob; products: Platform" (or "none")."""
    parts = [f"{key}: {', '.join(v.strip() for v in getattr(flt, key))}" for key in FILTER_COLUMNS if getattr(flt, key) is not None]
    return "; ".join(parts) or "none"
