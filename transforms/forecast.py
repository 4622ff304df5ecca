"""Forecast categories and the forecast metrics (shared docs/metrics.md, "Forecast categories").

A deal's category at `as_of`: `closed` when it is won or lost at `as_of`; otherwise the source's
category (Salesforce ForecastCategoryName, HubSpot hs_manual_forecast_category, a file's
forecast_category column), else the `forecast_category` of its stage at `as_of` in the stage
config, else `pipeline`. (A deal closed now but open at an earlier `as_of` has no source category
for that day: its stage's is used.)

Over the open deals whose `close_date` is in W (the whole reporting period, first to last day):
`commit_value`, `best_case_value`, `pipeline_value` (sums of amount of the deals in that category;
omitted deals are in none); `forecast_commit` = `won_value + commit_value`; `forecast_best_case`
= `forecast_commit + best_case_value`. Team and owner, with the catalogue's conventions (a sum
over no deals is 0, over deals none of which has an amount is empty; owners as in the metrics).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from config.models import AppConfig, StageConfig
from transforms.history import to_days
from transforms.metrics import METRIC_COLUMNS, NO_OWNER
from transforms.periods import Period

FORECAST_METRICS: tuple[str, ...] = ("commit_value", "best_case_value", "pipeline_value", "forecast_commit",
                                     "forecast_best_case")
SUM_OF = {"commit_value": "commit", "best_case_value": "best_case", "pipeline_value": "pipeline"}


def in_use(opps: pd.DataFrame, stages: list[StageConfig]) -> bool:
    """Whether the report has forecast categories: from a source, or on a configured stage.
    Without any, every open deal is `pipeline` and the forecast metrics are not shown."""
    if any(s.forecast_category for s in stages):
        return True
    return "forecast_category" in opps.columns and bool(opps["forecast_category"].notna().any())


def categories_at(deals: pd.DataFrame, stages: list[StageConfig]) -> np.ndarray:
    """Each deal's forecast category at `as_of` (`deals` as `transforms.history.deals_as_of` gives them)."""
    n = len(deals)
    status = deals["status"].to_numpy(dtype=object)
    given = (deals["forecast_category"].to_numpy(dtype=object) if "forecast_category" in deals.columns
             else np.full(n, None, dtype=object))
    by_stage = np.array([s.forecast_category for s in stages] + [None], dtype=object)
    code = deals["_stage_code"].to_numpy() if "_stage_code" in deals.columns else np.full(n, -1)
    from_stage = by_stage[code]
    out = np.where(pd.notna(given), given, np.where(pd.notna(from_stage), from_stage, "pipeline")).astype(object)
    out[np.isin(status, ["won", "lost"])] = "closed"
    return out


def forecast_metrics(deals: pd.DataFrame, cfg: AppConfig, period: Period, metrics: pd.DataFrame) -> pd.DataFrame:
    """The forecast metrics for team and owner, in the Metrics table's shape (plus note, missing_input).

    `metrics`: the catalogue of the same deals and period (its `won_value` rows are added in)."""
    category = categories_at(deals, cfg.pipeline.stages)
    close = to_days(deals["close_date"])
    w0, w1 = np.datetime64(period.start, "D"), np.datetime64(period.full_end, "D")
    in_w = (deals["status"].to_numpy(dtype=object) == "open") & (close >= w0) & (close <= w1)
    amount = deals["amount"].to_numpy(dtype=float)
    has = ~np.isnan(amount)
    owners = deals["owner"].astype(object).where(deals["owner"].notna(), NO_OWNER).to_numpy(dtype=object)
    rows: list[dict] = []
    for scope in ("team", "owner"):
        if scope == "team":
            codes, keys = np.zeros(len(deals), dtype=np.int64), ["all"]
        else:
            c, u = pd.factorize(owners, sort=True)
            codes, keys = c.astype(np.int64), [str(k) for k in u]
        k = len(keys)
        won = metrics[(metrics["metric"] == "won_value") & (metrics["scope"] == scope)]
        won_val = won.set_index("key")["value"].reindex(keys).to_numpy(dtype=float)
        won_note = won.set_index("key")["note"].reindex(keys).fillna("").to_numpy(dtype=object)
        sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for metric, cat in SUM_OF.items():
            m = in_w & (category == cat)
            cnt = np.bincount(codes[m], minlength=k).astype(float)
            nv = np.bincount(codes[m & has], minlength=k).astype(float)
            total = np.bincount(codes[m & has], weights=amount[m & has], minlength=k)
            value = np.where(nv > 0, total, np.where(cnt == 0, 0.0, np.nan))
            note = np.where((cnt > 0) & (nv == 0),
                            [f"none of the {int(x)} {cat} deals closing in {period.label} has an amount" for x in cnt],
                            "").astype(object)
            sums[metric] = (value, note)
        commit = won_val + sums["commit_value"][0]
        best = commit + sums["best_case_value"][0]
        c_note = _why(("won_value", won_val, won_note), ("commit_value", *sums["commit_value"]))
        b_note = _why(("forecast_commit", commit, c_note), ("best_case_value", *sums["best_case_value"]))
        for metric, (value, note) in {**sums, "forecast_commit": (commit, c_note),
                                      "forecast_best_case": (best, b_note)}.items():
            for i, key in enumerate(keys):
                rows.append({"metric": metric, "scope": scope, "key": key, "value": float(value[i]), "unit": "currency",
                             "period_start": pd.Timestamp(period.start), "period_end": pd.Timestamp(period.full_end),
                             "note": note[i], "missing_input": "amount" if note[i] else None})
    order = {m: i for i, m in enumerate(FORECAST_METRICS)}
    out = pd.DataFrame(rows, columns=[*METRIC_COLUMNS, "note", "missing_input"])
    out = out.sort_values(["metric", "scope"], key=lambda s: s.map(order) if s.name == "metric" else
                          s.map({"team": 0, "owner": 1}), kind="stable").reset_index(drop=True)
    for c in ("metric", "scope", "key", "unit", "note", "missing_input"):
        out[c] = out[c].astype(object)
    out["value"] = out["value"].astype(float)
    for c in ("period_start", "period_end"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    return out


def _why(*parts: tuple[str, np.ndarray, np.ndarray]) -> np.ndarray:
    """Per key: why a sum of parts is empty (the first empty part and its reason), else ''."""
    n = len(parts[0][1])
    out = np.full(n, "", dtype=object)
    for name, value, note in reversed(parts):
        empty = np.isnan(value)
        out[empty] = [f"{name} is empty" + (f": {x}" if x else "") for x in note[empty]]
    return out


__all__ = ["FORECAST_METRICS", "categories_at", "forecast_metrics", "in_use"]
