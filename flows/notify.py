"""What alerts and run digests say, and to which `notify:` targets (sent by connectors.alerts).

`notify:` targets choose events: `failure` (report, step, one-sentence error, run link),
`success` (the digest: KPIs against the previous snapshot, new and resolved flags, top pushed
and slipped deals, run health, workbook link) and `flags_changed` (the digest, only when flags
appeared or resolved). `connectors.alerts.send` redacts every payload (no configured secret, no
apprise URL is ever sent) and never logs a target URL.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa

from config.models import NotifyConfig
from connectors.alerts import send
from connectors.redact import redact
from connectors.state import digest_flags

# the KPIs a digest shows, in order (the artifacts show every team metric)
DIGEST_KPIS = ("open_value", "weighted_value", "open_deals", "new_value", "won_value", "win_rate",
               "avg_sales_cycle_days", "sales_velocity_per_day")
TOP_DEALS = 5
TOP_FLAGS = 5


# ----------------------------------------------------------------------------- digest content


@dataclass
class KpiChange:
    metric: str
    value: float | None
    previous: float | None
    unit: str

    @property
    def change(self) -> float | None:
        if self.value is None or self.previous is None:
            return None
        return self.value - self.previous


@dataclass(frozen=True)
class FlagLine:
    key: str
    rule: str
    severity: str
    message: str


@dataclass
class DealMove:
    name: str
    owner: str
    amount: float | None
    old_close: date | None
    new_close: date | None


@dataclass
class RunHealth:
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    seconds: float
    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    stale_sources: list[str] = field(default_factory=list)


@dataclass
class Digest:
    report: str
    as_of: date
    period: str
    currency: str
    kpis: list[KpiChange]
    previous_as_of: date | None
    flags_total: int | None
    new_flags: list[FlagLine]  # the most severe new flags (TOP_FLAGS of them from a run)
    resolved_flags: list[FlagLine]
    pushed: list[DealMove]
    slipped: list[DealMove]
    health: RunHealth
    workbooks: list[str]
    run_url: str | None = None
    has_previous_flags: bool = False
    all_kpis: list[KpiChange] = field(default_factory=list)  # every team metric (artifacts)
    flag_details: bool = True  # False: only the count is known (named reports)
    new_count: int | None = None  # how many flags are new (None: len(new_flags))
    resolved_count: int | None = None

    def __post_init__(self) -> None:
        if self.new_count is None:
            self.new_count = len(self.new_flags)
        if self.resolved_count is None:
            self.resolved_count = len(self.resolved_flags)

    @property
    def flags_changed(self) -> bool:
        return self.has_previous_flags and bool(self.new_count or self.resolved_count)


def kpi_changes(current: dict[str, float | None], previous: dict[str, float | None], units: dict[str, str],
                metrics: Sequence[str] = DIGEST_KPIS) -> list[KpiChange]:
    """Each digest KPI with its value in the previous snapshot (None when there is none)."""
    return [KpiChange(m, _num(current.get(m)), _num(previous.get(m)), units.get(m, "number"))
            for m in metrics if m in current]


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2}  # digest order: severity, then rule, then identity
CHUNK = 100_000  # flags per stored chunk (and per batch of identities built at once)


class CurrentFlags:
    """A run's flags as identity hashes and (severity, rule) label indexes, for diffing and storing.

    A flag's identity is rule|check|scope|key, with #n for the n-th repeat of one identity in the
    run (e.g. M7 per metric): the same problem on the next run has the same identity. Identity
    strings are built once, chunk by chunk, hashed and kept packed as stored; they are built again
    only for the flags a digest shows.
    """

    def __init__(self, flags: pd.DataFrame | None, chunk_rows: int = CHUNK) -> None:
        n = 0 if flags is None else len(flags)
        self._cols = {c: (np.asarray(flags[c], dtype=object) if flags is not None and n else np.zeros(0, dtype=object))
                      for c in ("rule", "check", "scope", "key", "severity", "message")}
        self.codes, self.labels = digest_flags.label_codes(self._cols["severity"], self._cols["rule"])
        self.chunk_rows = chunk_rows
        self._repeat = np.zeros(n, dtype=np.int64)  # n - 1 of "#n"
        self._explicit: list[str] | None = None
        hashes, self._packed = [np.zeros(0, dtype=np.int64)], []  # identities packed as stored, per chunk
        for s in range(0, n, chunk_rows):
            idents = self._idents(slice(s, s + chunk_rows))
            hashes.append(digest_flags.ident_hashes(idents))
            self._packed.append(digest_flags.pack_texts(idents))
        self.hashes = np.concatenate(hashes)
        repeated = np.flatnonzero(pd.Series(self.hashes).duplicated(keep=False).to_numpy())
        if len(repeated):
            same = self.hashes[repeated]
            self._repeat[repeated] = pd.Series(same).groupby(same).cumcount().to_numpy()
            later = repeated[self._repeat[repeated] > 0]
            self.hashes[later] = digest_flags.ident_hashes(self._idents(later))
            if pd.Series(self.hashes).duplicated().any():  # a key that looks like "x#2": number one by one
                self._explicit = _numbered(self._idents(slice(0, n), numbered=False))
                self.hashes = digest_flags.ident_hashes(self._explicit)
            for k in (range(len(self._packed)) if self._explicit is not None else np.unique(later // chunk_rows).tolist()):
                self._packed[k] = digest_flags.pack_texts(self._idents(slice(k * chunk_rows, (k + 1) * chunk_rows)))

    def __len__(self) -> int:
        return len(self.hashes)

    def _idents(self, rows: slice | np.ndarray, numbered: bool = True) -> list[str]:
        if self._explicit is not None and numbered:
            return self._explicit[rows] if isinstance(rows, slice) else [self._explicit[i] for i in rows.tolist()]
        c = self._cols
        out = [f"{r}|{k}|{s}|{key}" for r, k, s, key in zip(c["rule"][rows].tolist(), c["check"][rows].tolist(),
                                                              c["scope"][rows].tolist(), c["key"][rows].tolist(), strict=True)]
        if numbered:
            rep = self._repeat[rows]
            for i in np.flatnonzero(rep).tolist():
                out[i] += f"#{rep[i] + 1}"
        return out

    def texts(self, column: str, positions: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(positions, identities or messages), sorted by position, CHUNK at a time."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        for s in range(0, len(positions), CHUNK):
            part = positions[s:s + CHUNK]
            yield part, (self._idents(part) if column == "idents"
                         else [str(m) for m in self._cols["message"][part].tolist()])

    def chunks(self) -> Iterator[digest_flags.Chunk]:
        """The flags in order, `chunk_rows` at a time, as stored."""
        for k, s in enumerate(range(0, len(self), self.chunk_rows)):
            rows = slice(s, s + self.chunk_rows)
            yield digest_flags.Chunk(self.hashes[rows], self.codes[rows], self._packed[k],
                                     self._cols["message"][rows].tolist())


def _numbered(bases: list[str]) -> list[str]:
    """Identities numbered one by one: the n-th flag whose identity is taken gets #n."""
    seen: set[str] = set()
    out = []
    for base in bases:
        ident, n = base, 1
        while ident in seen:
            n += 1
            ident = f"{base}#{n}"
        seen.add(ident)
        out.append(ident)
    return out


class FlagSide(Protocol):
    """One run's flags (this run's CurrentFlags or a stored run)."""

    hashes: np.ndarray
    codes: np.ndarray
    labels: list[tuple[str, str]]

    def texts(self, column: str, positions: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]: ...


@dataclass
class FlagDiff:
    new_count: int
    resolved_count: int
    new: list[FlagLine]  # the `top` most severe
    resolved: list[FlagLine]


def flag_diff(current: FlagSide, previous: FlagSide, top: int = TOP_FLAGS) -> FlagDiff:
    """New flags (in `current`, not in `previous`) and resolved ones (the other way round): exact
    counts and the `top` most severe of each (severity, then rule, then identity)."""
    new = np.flatnonzero(~pd.Series(current.hashes).isin(previous.hashes).to_numpy())
    resolved = np.flatnonzero(~pd.Series(previous.hashes).isin(current.hashes).to_numpy())
    return FlagDiff(len(new), len(resolved), most_severe(current, new, top), most_severe(previous, resolved, top))


def most_severe(side: FlagSide, positions: np.ndarray, top: int = TOP_FLAGS) -> list[FlagLine]:
    """The `top` flags at `positions` of `side`, most severe first: identities are built (or read)
    only for the (severity, rule) group where the cut falls."""
    if top <= 0 or len(positions) == 0:
        return []
    rank = _label_rank(side.labels)
    keys = rank[side.codes[positions]]
    cut = int(np.searchsorted(np.cumsum(np.bincount(keys)), top))  # the group holding the top-th flag
    picked = [(ident, int(p)) for part, idents in side.texts("idents", positions[keys < cut])
              for ident, p in zip(idents, part.tolist(), strict=True)]
    at_cut = ((ident, int(p)) for part, idents in side.texts("idents", positions[keys == cut])
              for ident, p in zip(idents, part.tolist(), strict=True))
    picked += heapq.nsmallest(top - len(picked), at_cut)
    picked.sort(key=lambda x: (rank[side.codes[x[1]]], x[0]))
    chosen = np.array([p for _, p in picked], dtype=np.int64)
    messages = {int(p): m for part, texts in side.texts("messages", chosen)
                for p, m in zip(part.tolist(), texts, strict=True)}
    return [FlagLine(ident, side.labels[side.codes[p]][1], side.labels[side.codes[p]][0], messages[p])
            for ident, p in picked]


def _label_rank(labels: Sequence[tuple[str, str]]) -> np.ndarray:
    """Per label index: the rank of (severity order, rule), ties for unknown severities kept."""
    keys = [(SEVERITY_RANK.get(s, 3), r) for s, r in labels]
    order = {k: i for i, k in enumerate(sorted(set(keys)))}
    return np.array([order[k] for k in keys] or [0], dtype=np.int64)


def deal_moves(changes: pd.DataFrame | None, period_end: date, top: int = TOP_DEALS) -> tuple[list[DealMove], list[DealMove]]:
    """(pushed, slipped) from the Changes sheet, largest amount first.

    Slipped: the close date moved from inside the reporting period to after it (the deal left
    this period's forecast). Pushed: every other later close date.
    """
    if changes is None or len(changes) == 0:
        return [], []
    moved = changes[changes["change"] == "pushed"]
    end = pd.Timestamp(period_end)
    old, new = pd.to_datetime(moved["old_close_date"]), pd.to_datetime(moved["new_close_date"])
    slipped_mask = (old <= end) & (new > end)
    amount = moved["new_amount"].astype(float).fillna(moved["old_amount"].astype(float))

    def pick(mask: pd.Series) -> list[DealMove]:
        rows = moved[mask.to_numpy()].assign(_amount=amount[mask.to_numpy()]).sort_values(
            "_amount", ascending=False, na_position="last", kind="stable").head(top)
        return [DealMove(str(r["name"] if pd.notna(r["name"]) else r["opportunity_id"]),
                         str(r["owner"]) if pd.notna(r["owner"]) else "(no owner)", _num(r["_amount"]),
                         _date(r["old_close_date"]), _date(r["new_close_date"])) for _, r in rows.iterrows()]

    return pick(~slipped_mask), pick(slipped_mask)


def _date(v: Any) -> date | None:
    return None if v is None or pd.isna(v) else pd.Timestamp(v).date()


# ----------------------------------------------------------------------------- rendering


def fmt_value(value: float | None, unit: str, currency: str = "USD") -> str:
    if value is None:
        return "–"
    if unit in ("currency", "currency_per_day"):
        text = f"{value:,.0f} {currency}"
        return text + "/day" if unit == "currency_per_day" else text
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "pct":
        return f"{value:.1f}%"
    if unit == "days":
        return f"{value:.1f} d"
    if unit == "count":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def fmt_change(k: KpiChange, currency: str = "USD") -> str:
    change = k.change
    if change is None:
        return "–"
    if k.unit == "ratio":
        return f"{change * 100:+.1f} pp"
    if k.unit == "pct":
        return f"{change:+.1f} pp"
    sign = "+" if change >= 0 else "-"
    return sign + fmt_value(abs(change), k.unit, currency)


def render_digest(d: Digest) -> tuple[str, str]:
    """Title and markdown body of the success digest."""
    title = f"pipeline-sync: '{d.report}' refreshed (as of {d.as_of.isoformat()})"
    lines = [f"**{d.report}**: period {d.period}, as of {d.as_of.isoformat()}."]
    since = f"vs snapshot of {d.previous_as_of.isoformat()}" if d.previous_as_of else "no earlier snapshot"
    lines += ["", f"**KPIs** ({since})", "", "| KPI | value | change |", "|---|---:|---:|"]
    lines += [f"| {k.metric.replace('_', ' ')} | {fmt_value(k.value, k.unit, d.currency)} | {fmt_change(k, d.currency)} |"
              for k in d.kpis]
    if d.flags_total is not None and not d.flag_details:
        lines += ["", f"**Flags**: {d.flags_total:,} open (details in the workbook's Flags sheet)"]
    elif d.flags_total is not None:
        lines += ["", f"**Flags**: {d.flags_total:,} open, {d.new_count:,} new, {d.resolved_count:,} resolved"
                  + ("" if d.has_previous_flags else " (first run: nothing to compare)")]
        for label, flags, count in (("new", d.new_flags, d.new_count), ("resolved", d.resolved_flags, d.resolved_count)):
            shown = flags[:TOP_FLAGS]
            for f in shown:
                lines.append(f"- {label} [{f.severity}] {f.rule}: {f.message}")
            if count > len(shown):
                lines.append(f"- ... and {count - len(shown):,} more {label}")
    for label, moves in (("Top slipped deals (out of this period)", d.slipped), ("Top pushed deals", d.pushed)):
        if moves:
            lines += ["", f"**{label}**"]
            lines += [f"- {m.name} ({m.owner}): {fmt_value(m.amount, 'currency', d.currency)}, close "
                      f"{_iso(m.old_close)} -> {_iso(m.new_close)}" for m in moves]
    h = d.health
    lines += ["", f"**Run health**: {h.rows_read:,} rows read, {h.rows_loaded:,} loaded, {h.rows_rejected:,} rejected; "
              f"{h.seconds:.1f} s; {h.requests:,} API requests, {h.retries:,} retries, "
              f"{h.waited_seconds:.1f} s rate-limit waits"
              + (f"; stale sources: {', '.join(h.stale_sources)}" if h.stale_sources else "")]
    if d.workbooks:
        lines += ["", "**Workbook**: " + ", ".join(d.workbooks)]
    if d.run_url:
        lines += ["", f"[Run in Prefect]({d.run_url})"]
    return title, "\n".join(lines)


def _iso(d: date | None) -> str:
    return d.isoformat() if d else "?"


def one_sentence(exc: BaseException, limit: int = 300) -> str:
    """The error as one sentence: its type and the first line of its message (redacted, then shortened)."""
    full = redact(str(exc)).strip()
    text = full.splitlines()[0] if full else ""
    text = re.sub(r"\s+", " ", text)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    sentence = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return sentence if sentence.endswith((".", "…", "!", "?")) else sentence + "."


def render_failure(report: str, step: str, error: str, run_url: str | None) -> tuple[str, str]:
    title = f"pipeline-sync: '{report}' FAILED at {step}"
    lines = [f"**{report}** failed at step **{step}**.", "", f"Error: {error}"]
    lines += ["", f"[Run in Prefect]({run_url})" if run_url else "No run link (run without a Prefect server)."]
    lines += ["", _consequence(step)]
    return title, "\n".join(lines)


def _consequence(step: str) -> str:
    if step.startswith("publish-"):
        return "Destinations before this one may already have the new workbook; state was not saved."
    if step == "reports":
        return "Reports the error does not name were published; the sources' state was saved."
    if step == "commit-state":
        return "The workbook was published, but state was not saved: the next run reads the changes again."
    return "No workbook was changed."


# ----------------------------------------------------------------------------- to the targets (connectors.alerts sends)


def notify_failure(targets: Sequence[NotifyConfig], *, report: str, step: str, error: BaseException,
                   run_url: str | None, secrets: Iterable[str]) -> list[int]:
    title, body = render_failure(report, step, one_sentence(error), run_url)
    return send(targets, {"failure"}, title, body, secrets=secrets, kind="failure")


def notify_success(targets: Sequence[NotifyConfig], digest: Digest, *, secrets: Iterable[str]) -> list[int]:
    """The digest to `success` targets, and to `flags_changed` targets when flags changed."""
    events = {"success"} | ({"flags_changed"} if digest.flags_changed else set())
    title, body = render_digest(digest)
    return send(targets, events, title, body, secrets=secrets, kind="success")


# ----------------------------------------------------------------------------- flag memory


@dataclass
class FlagSummary:
    total: int
    previous_as_of: date | None  # None: no earlier stored run (nothing to compare)
    diff: FlagDiff


def remember_flags(engine: sa.Engine, report: str, as_of: date, flags: pd.DataFrame | None, *,
                   top: int = TOP_FLAGS, chunk_rows: int = CHUNK) -> FlagSummary:
    """Diff this run's flags against the latest stored run of `report` before `as_of`, then store
    them (replacing a stored run of the same as_of) for the next run."""
    current = CurrentFlags(flags, chunk_rows)
    previous = digest_flags.load_previous(engine, report, as_of)
    diff = flag_diff(current, previous, top) if previous is not None else FlagDiff(0, 0, [], [])
    digest_flags.save(engine, report, as_of, current.labels, current.chunks())
    return FlagSummary(len(current), previous.as_of if previous is not None else None, diff)


# ----------------------------------------------------------------------------- from a finished run


def digest_for_run(run: Any, result: Any, transformed: Any = None, run_url: str | None = None) -> Digest:
    """The digest of a finished `run_pipeline` (RunContext, RunResult, Transformed or None).

    Also remembers this run's flags so the next run can tell which are new and resolved.
    Works without analytics (no KPIs and no flags then).
    """
    cfg = run.config
    analytics = getattr(transformed, "analytics", None) if transformed is not None else None
    kpis: list[KpiChange] = []
    all_kpis: list[KpiChange] = []
    previous_as_of = None
    new, resolved, has_prev, flags_total = [], [], False, result.flags_count
    new_count = resolved_count = 0
    pushed: list[DealMove] = []
    slipped: list[DealMove] = []
    if analytics is not None:
        current = dict(getattr(getattr(analytics, "snapshot", None), "metrics", None) or {})
        units = _units(getattr(analytics, "summary", None))
        previous: dict[str, float | None] = {}
        try:
            from connectors.state.snapshots import load_history

            history = load_history(run.engine, cfg.report, result.as_of)
            previous, previous_as_of = history.previous_metrics(), history.previous_as_of
        except ImportError:
            pass
        kpis = kpi_changes(current, previous, units)
        all_kpis = kpi_changes(current, previous, units, metrics=list(current))
        remembered = remember_flags(run.engine, cfg.report, result.as_of, getattr(analytics, "flags", None))
        has_prev = remembered.previous_as_of is not None
        d = remembered.diff
        new, resolved, new_count, resolved_count = d.new, d.resolved, d.new_count, d.resolved_count
        flags_total = remembered.total
        changes = next((s.frame for s in getattr(analytics, "sheets", []) if getattr(s, "name", "") == "Changes"), None)
        pushed, slipped = deal_moves(changes, result.period.end)
    sources = result.sources
    health = RunHealth(
        rows_read=sum(s.rows_read for s in sources), rows_loaded=sum(s.rows_loaded for s in sources),
        rows_rejected=sum(s.rows_rejected for s in sources), seconds=result.seconds,
        requests=sum(getattr(s, "requests", 0) for s in sources), retries=sum(getattr(s, "retries", 0) for s in sources),
        waited_seconds=sum(getattr(s, "waited_seconds", 0.0) for s in sources),
        stale_sources=[s.name for s in sources if s.stale])
    return Digest(cfg.report, result.as_of, result.period.label, cfg.inputs.currency, kpis, previous_as_of,
                  flags_total, new, resolved, pushed, slipped, health, list(result.outputs), run_url, has_prev,
                  all_kpis, new_count=new_count, resolved_count=resolved_count)


def _units(summary: Any) -> dict[str, str]:
    kpis = getattr(summary, "kpis", None)
    if kpis is None or "unit" not in getattr(kpis, "columns", []):
        return {}
    return {str(m): str(u) for m, u in zip(kpis["metric"], kpis["unit"], strict=True)}


def digests_for_run(run: Any, result: Any, transformed: Any = None, run_url: str | None = None) -> list[Digest]:
    """One digest per report the run produced: `digest_for_run` for a single report; with named
    reports (`reports:`), or a workbook written again unchanged, each report's KPIs come from the
    snapshot store (flag details are in its workbook: only the flag counts are at hand)."""
    entries = list(getattr(result, "reports", None) or [])
    if not entries and transformed is None and getattr(result, "workbook_reused", False):
        # the last run's workbook written again (flows.kept_workbook): no analytics ran, the KPIs are stored
        entries = [{"report": run.config.report, "outputs": result.outputs, "flags": result.flags_count}]
    if not entries:
        return [digest_for_run(run, result, transformed, run_url)]
    from connectors.state.snapshots import load_history
    from transforms.metrics import TEAM_METRICS, UNITS

    base = digest_for_run(run, result, None, run_url)
    out = []
    for entry in entries:
        name = entry["report"]
        history = load_history(run.engine, name, result.as_of)
        rows = history.metrics[history.metrics["as_of"] == result.as_of]
        current = {m: _num(v) for m, v in zip(rows["metric"], rows["value"], strict=True)}
        current = {m: current[m] for m in TEAM_METRICS if m in current}
        previous = history.previous_metrics()
        out.append(Digest(
            name, result.as_of, result.period.label, run.config.inputs.currency,
            kpi_changes(current, previous, dict(UNITS)), history.previous_as_of, entry.get("flags"), [], [], [], [],
            base.health, list(entry.get("outputs") or []), run_url, False,
            kpi_changes(current, previous, dict(UNITS), metrics=list(current)), flag_details=False))
    return out
