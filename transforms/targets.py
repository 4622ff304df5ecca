"""Targets, attainment and coverage (shared docs/metrics.md): quota metrics, M1 low_coverage and
the Targets sheet, whose quota cells a manager may edit (attainment, gap and coverage are Excel
formulas on them, stored with their computed values).

- `quota`: `targets.quota[<period label>]` (team), `targets.quota_by_owner[owner][<label>]`;
- `attainment` = won_value / quota (empty without a quota or with quota 0);
- `gap_to_quota` = max(quota - won_value, 0) (empty without a quota);
- `period_pipeline_value` = sum of amount of the deals open at as_of with a close_date in W
  (the whole period); `coverage` = period_pipeline_value / gap_to_quota, `weighted_coverage` the
  same with amount x stage probability (both empty when the gap is 0 or unknown).
Owner rows: every owner key of the other owner metrics, and the owners `quota_by_owner` names
for this period (with no deals their pipeline and won value are 0). `won_value` is the period's
(to date), as in the catalogue; an empty won_value (won deals without amounts) leaves attainment,
gap and coverage empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from config.models import AppConfig
from config.workbook import FormCell, FormTable, SheetData, SheetForm
from transforms.flags import _num, _team_row
from transforms.history import to_days
from transforms.metrics import NO_OWNER, UNITS
from transforms.movement import a1
from transforms.periods import Period

TARGET_METRICS = ("quota", "attainment", "gap_to_quota", "period_pipeline_value", "coverage", "weighted_coverage")
SHEET = "Targets"


@dataclass
class TargetRow:
    scope: str
    key: str
    quota: float | None
    won_value: float | None
    pipeline: float
    weighted: float

    @property
    def attainment(self) -> float | None:
        if self.quota is None or self.won_value is None or self.quota == 0:
            return None
        return self.won_value / self.quota

    @property
    def gap(self) -> float | None:
        if self.quota is None or self.won_value is None:
            return None
        return max(self.quota - self.won_value, 0.0)

    def _cover(self, value: float) -> float | None:
        gap = self.gap
        return None if gap is None or gap == 0 else value / gap

    @property
    def coverage(self) -> float | None:
        return self._cover(self.pipeline)

    @property
    def weighted_coverage(self) -> float | None:
        return self._cover(self.weighted)


def target_rows(deals: pd.DataFrame, metrics: pd.DataFrame, cfg: AppConfig, period: Period) -> list[TargetRow]:
    """The team row, then one per owner key (sorted), with their inputs."""
    t = cfg.targets
    label = period.label
    w0, w1 = np.datetime64(period.start, "D"), np.datetime64(period.full_end, "D")
    close = to_days(deals["close_date"])
    in_w = (deals["status"].to_numpy(dtype=object) == "open") & (close >= w0) & (close <= w1)
    amount = np.nan_to_num(deals["amount"].to_numpy(dtype=float), nan=0.0)
    probs = np.array([np.nan if s.probability is None else s.probability for s in cfg.pipeline.stages] + [np.nan])
    weighted = np.where(in_w, amount * np.nan_to_num(probs[deals["_stage_code"].to_numpy()], nan=0.0), 0.0)
    pipeline = np.where(in_w, amount, 0.0)
    owner = deals["owner"].astype(object).where(deals["owner"].notna(), NO_OWNER).to_numpy(dtype=object)
    won = metrics[metrics["metric"] == "won_value"]
    won_by = {(s, k): (None if pd.isna(v) else float(v)) for s, k, v in zip(won["scope"], won["key"], won["value"],
                                                                              strict=True)}
    by_owner = t.quota_by_owner or {}
    keys = sorted(set(metrics.loc[metrics["scope"] == "owner", "key"]) | {o for o, q in by_owner.items() if label in q})
    rows = [TargetRow("team", "all", (t.quota or {}).get(label), won_by.get(("team", "all"), 0.0),
                      float(pipeline.sum()), float(weighted.sum()))]
    codes = pd.Index(keys, dtype=object).get_indexer(owner)
    ok = codes >= 0
    pipe = np.bincount(codes[ok], weights=pipeline[ok], minlength=len(keys))
    wpipe = np.bincount(codes[ok], weights=weighted[ok], minlength=len(keys))
    for i, k in enumerate(keys):
        rows.append(TargetRow("owner", k, by_owner.get(k, {}).get(label), won_by.get(("owner", k), 0.0),
                              float(pipe[i]), float(wpipe[i])))
    return rows


def target_metrics(rows: list[TargetRow], cfg: AppConfig, period: Period) -> pd.DataFrame:
    """The six metrics for every row, as long metric rows (with a note when empty)."""
    label = period.label
    out = []
    for r in rows:
        where = "targets.quota" if r.scope == "team" else f"targets.quota_by_owner['{r.key}']"
        no_quota = f"no {where}['{label}']"
        empty_won = "won_value is empty (won deals without an amount)" if r.won_value is None else ""
        values = {
            "quota": (r.quota, no_quota if r.quota is None else ""),
            "attainment": (r.attainment, no_quota if r.quota is None else empty_won or (
                "the quota is 0" if r.attainment is None else "")),
            "gap_to_quota": (r.gap, no_quota if r.quota is None else empty_won),
            "period_pipeline_value": (r.pipeline, ""),
            "coverage": (r.coverage, no_quota if r.quota is None else empty_won or (
                "the quota is reached (gap 0)" if r.coverage is None else "")),
            "weighted_coverage": (r.weighted_coverage, no_quota if r.quota is None else empty_won or (
                "the quota is reached (gap 0)" if r.weighted_coverage is None else "")),
        }
        for metric in TARGET_METRICS:
            v, note = values[metric]
            point = metric in ("period_pipeline_value", "coverage", "weighted_coverage")
            out.append({"metric": metric, "scope": r.scope, "key": r.key, "value": np.nan if v is None else float(v),
                        "unit": UNITS[metric], "period_start": pd.Timestamp(period.start),
                        "period_end": pd.Timestamp(period.full_end if point else period.end), "note": note,
                        "missing_input": None})
    return pd.DataFrame(out)


def coverage_flags(rows: list[TargetRow], cfg: AppConfig, as_of: date, period: Period) -> list[dict]:
    """M1 low_coverage rows (team; owners only when quota_by_owner is set), as Flags rows."""
    t = cfg.targets
    days_left = (period.full_end - as_of).days
    if days_left <= t.coverage_grace_days:
        return []
    out = []
    for r in rows:
        if r.scope == "owner" and not t.quota_by_owner:
            continue
        cov = r.coverage
        if cov is None or not round(cov, 9) < t.min_coverage:
            continue
        who = "The team's" if r.scope == "team" else f"{r.key}'s"
        out.append(_team_row("M1", "low_coverage", "high", r.scope, r.key, cov, t.min_coverage,
                             f"{who} open pipeline closing in {period.label} ({_num(r.pipeline)}) covers "
                             f"{cov:.2f}x the {_num(r.gap or 0)} still needed for the quota of {_num(r.quota or 0)}, "
                             f"below {_num(t.min_coverage)}x with {days_left} days left."))
    return out


_HEADERS = ["scope", "key", "quota", "won_value", "attainment", "gap_to_quota", "period_pipeline_value",
            "weighted_pipeline_value", "coverage", "weighted_coverage"]
_TOP = 3


def targets_sheet(rows: list[TargetRow], period: Period, as_of: date) -> SheetData:
    """The Targets sheet: quota cells to edit, formulas for attainment, gap and coverage."""
    cells = [
        FormCell(0, 0, f"Quota, attainment and coverage: {period.label} ({period.start.isoformat()} to "
                       f"{period.full_end.isoformat()}), as of {as_of.isoformat()}", style="title"),
        FormCell(1, 0, "Edit a quota (yellow) and attainment, gap and coverage recalculate. attainment = won_value / "
                       "quota; gap_to_quota = max(quota - won_value, 0); coverage = period_pipeline_value / gap "
                       "(open deals closing in the period); weighted uses amount x stage probability.", style="note"),
    ]
    cells += [FormCell(_TOP, j, h, style="header") for j, h in enumerate(_HEADERS)]
    for i, r in enumerate(rows):
        row = _TOP + 1 + i
        q, won, gap, ppv, wpv = a1(row, 2), a1(row, 3), a1(row, 5), a1(row, 6), a1(row, 7)
        cells += [
            FormCell(row, 0, r.scope), FormCell(row, 1, r.key),
            FormCell(row, 2, r.quota, "currency", style="input"),
            FormCell(row, 3, r.won_value, "currency"),
            FormCell(row, 4, r.attainment, "ratio", formula=f'=IF(AND(ISNUMBER({q}),ISNUMBER({won})),'
                                                              f'IF({q}>0,{won}/{q},""),"")'),
            FormCell(row, 5, r.gap, "currency", formula=f'=IF(AND(ISNUMBER({q}),ISNUMBER({won})),MAX({q}-{won},0),"")'),
            FormCell(row, 6, r.pipeline, "currency"),
            FormCell(row, 7, r.weighted, "currency"),
            FormCell(row, 8, r.coverage, "number", formula=f'=IF(AND(ISNUMBER({gap}),N({gap})>0),{ppv}/{gap},"")'),
            FormCell(row, 9, r.weighted_coverage, "number",
                     formula=f'=IF(AND(ISNUMBER({gap}),N({gap})>0),{wpv}/{gap},"")'),
        ]
    last = _TOP + max(len(rows), 1)
    form = SheetForm(cells, [FormTable("tblTargetsQuota", _TOP, 0, last, _HEADERS)],
                     widths={0: 8, 1: 18, **{c: 16 for c in range(2, 10)}, 6: 22, 7: 24})
    return SheetData(SHEET, pd.DataFrame(), form=form,
                     notes=["Quotas come from targets.quota / targets.quota_by_owner; the quota cells may be edited "
                            "and the formulas recalculate (their computed values are stored)."])
