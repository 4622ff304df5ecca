"""The Changes sheet: how each deal changed since the previous stored snapshot.

The previous snapshot holds the deals open at its `as_of`. Compared with the deals at this
`as_of` (joined on the row id `source:opportunity_id`):

- new: open now (or created after the previous snapshot) and not among its open deals;
- won / lost: open in the previous snapshot, won / lost now (also a new deal that already closed);
- pushed / pulled_in: still open, close_date moved later / earlier;
- increased / decreased: still open, amount went up / down (both known);
- stage_forward / stage_backward: still open, now in a later / earlier configured stage;
- removed: open in the previous snapshot and no longer in the data.

A deal can have several rows (e.g. pushed and decreased). Each row has the old and new values.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from config.models import StageConfig
from transforms.history import stage_codes

CHANGE_ORDER: tuple[str, ...] = (
    "new", "won", "lost", "pushed", "pulled_in", "increased", "decreased", "stage_forward", "stage_backward", "removed",
)
CHANGE_COLUMNS = ["change", "row_id", "opportunity_id", "name", "owner", "product", "old_stage", "new_stage",
                  "old_amount", "new_amount", "old_close_date", "new_close_date"]


def empty_changes() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in CHANGE_COLUMNS})
    for c in ("old_amount", "new_amount"):
        frame[c] = frame[c].astype(float)
    for c in ("old_close_date", "new_close_date"):
        frame[c] = frame[c].astype("datetime64[ns]")
    return frame


def classify_changes(current: pd.DataFrame, previous: pd.DataFrame, previous_as_of: date | None,
                     stages: list[StageConfig]) -> pd.DataFrame:
    """`current`: deals at as_of (row_id, opportunity_id, name, owner, product, stage, status, amount,
    close_date, created_date); `previous`: the previous snapshot's open deals (deal_id, owner,
    product, stage, amount, close_date)."""
    if previous_as_of is None:
        return empty_changes()
    cur = current[["row_id", "opportunity_id", "name", "owner", "product", "stage", "status", "amount",
                   "close_date", "created_date"]]
    prev = previous.rename(columns={"deal_id": "row_id", "owner": "old_owner", "product": "old_product",
                                    "stage": "old_stage", "amount": "old_amount", "close_date": "old_close_date"})
    prev = prev[["row_id", "old_owner", "old_product", "old_stage", "old_amount", "old_close_date"]]
    j = cur.merge(prev, on="row_id", how="outer", indicator=True, sort=True)
    j = j.rename(columns={"stage": "new_stage", "amount": "new_amount", "close_date": "new_close_date"})
    j["old_close_date"] = pd.to_datetime(j["old_close_date"]).astype("datetime64[ns]")
    j["new_close_date"] = pd.to_datetime(j["new_close_date"]).astype("datetime64[ns]")
    j["owner"] = j["owner"].where(j["owner"].notna(), j["old_owner"])
    j["product"] = j["product"].where(j["product"].notna(), j["old_product"])
    both = (j["_merge"] == "both").to_numpy()
    cur_only = (j["_merge"] == "left_only").to_numpy()
    prev_only = (j["_merge"] == "right_only").to_numpy()
    status = j["status"].to_numpy(dtype=object)
    created_after = (pd.to_datetime(j["created_date"]) > pd.Timestamp(previous_as_of)).to_numpy()
    is_new = cur_only & ((status == "open") | created_after)
    still_open = both & (status == "open")
    newc, oldc = j["new_close_date"].to_numpy(), j["old_close_date"].to_numpy()
    newa, olda = j["new_amount"].to_numpy(dtype=float), j["old_amount"].to_numpy(dtype=float)
    news = stage_codes(j["new_stage"].to_numpy(), stages)
    olds = stage_codes(j["old_stage"].to_numpy(), stages)
    known_stage = (news >= 0) & (olds >= 0)
    masks = {
        "new": is_new,
        "won": (both | is_new) & (status == "won"),
        "lost": (both | is_new) & (status == "lost"),
        "pushed": still_open & (newc > oldc),
        "pulled_in": still_open & (newc < oldc),
        "increased": still_open & (newa > olda),
        "decreased": still_open & (newa < olda),
        "stage_forward": still_open & known_stage & (news > olds),
        "stage_backward": still_open & known_stage & (news < olds),
        "removed": prev_only,
    }
    parts = [j.loc[m].assign(change=name) for name, m in masks.items() if np.any(m)]
    if not parts:
        return empty_changes()
    out = pd.concat(parts, ignore_index=True)[CHANGE_COLUMNS]
    out["old_amount"] = out["old_amount"].astype(float)
    out["new_amount"] = out["new_amount"].astype(float)
    for c in ("change", "row_id", "opportunity_id", "name", "owner", "product", "old_stage", "new_stage"):
        out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out.reset_index(drop=True)
