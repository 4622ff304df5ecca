"""When a report runs: cron slots in an IANA time zone, catch-up after downtime, and one run at a time.

Cron times are local wall-clock times, resolved the way Prefect's scheduler resolves them, so
the deployments Prefect schedules and these functions agree:

- a wall time that does not exist (spring forward, e.g. 02:30 in Berlin on the last Sunday of
  March) runs once, shifted forward by the gap (03:30 local);
- a wall time that happens twice (fall back) runs once, at its first occurrence;
- two wall times that resolve to the same instant run once.

Catch-up (`catch_up`): slots whose time passed while nothing ran are *missed*. `latest` runs
the newest missed slot and skips the older ones, `all` runs every one in order, `skip` runs none.
Overlap (`overlap`): a run of a report that is still in progress makes the next one `wait` for
it or be `skip`ped; `report_lock` is the lock that guarantees it (an OS file lock, held by the
process, released when the process dies).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from cronsim import CronSim

from config.models import ScheduleConfig

CatchUp = Literal["latest", "all", "skip"]
Overlap = Literal["wait", "skip"]
# a run that starts this long after its slot counts as missed (for catch_up: skip)
LATE_AFTER = timedelta(minutes=10)
_MAX_CANDIDATES = 100_000


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {value.isoformat()})")
    return value


def slots_between(cron: str, timezone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every slot of `cron` in `timezone` with start < slot <= end, as aware datetimes in that zone."""
    _aware(start, "start")
    _aware(end, "end")
    tz = ZoneInfo(timezone)
    start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
    # walk wall times from a little before `start` (a gap can move a wall time forward by up to a day)
    wall_from = start.astimezone(tz).replace(tzinfo=None) - timedelta(days=1)
    out: list[datetime] = []
    seen: set[datetime] = set()
    for i, wall in enumerate(CronSim(cron, wall_from)):
        if i > _MAX_CANDIDATES:
            break
        local = wall.replace(tzinfo=tz, fold=0)
        instant = local.astimezone(UTC)
        if instant > end_utc:
            # wall times are increasing, instants only dip back by at most one DST shift
            if (instant - end_utc) > timedelta(days=1):
                break
            continue
        if instant <= start_utc or instant in seen:
            continue
        seen.add(instant)
        out.append(instant.astimezone(tz))
    out.sort()
    return out


def next_runs(cron: str, timezone: str, after: datetime, n: int = 1) -> list[datetime]:
    """The next `n` slots strictly after `after` (aware datetimes in `timezone`)."""
    _aware(after, "after")
    found: list[datetime] = []
    window_start, span = after, timedelta(days=8)
    while len(found) < n:
        window_end = window_start + span
        found += slots_between(cron, timezone, window_start, window_end)
        window_start = window_end
        if window_start - after > timedelta(days=366 * 5):
            break  # e.g. "0 0 30 2 *": never
    return found[:n]


def schedules_for(cfg: Any, reports: Sequence[str] | None) -> tuple[str, list[ScheduleConfig]]:
    """(target name, its schedule entries): a run of one named report (`reports:`) follows that
    report's `schedule:`; any other run follows the top-level `schedule:`."""
    if reports and len(reports) == 1:
        for rep in getattr(cfg, "reports", None) or []:
            if rep.name == reports[0]:
                return rep.name, list(rep.schedule)
    return cfg.report, list(cfg.schedule)


def missed_slots(schedules: Sequence[ScheduleConfig], last_run: datetime, now: datetime) -> list[datetime]:
    """Slots of any of the report's schedules after `last_run` and up to `now`, oldest first (UTC)."""
    slots = {s.astimezone(UTC) for sc in schedules for s in slots_between(sc.cron, sc.timezone or "UTC", last_run, now)}
    return sorted(slots)


@dataclass(frozen=True)
class CatchUpPlan:
    run: list[datetime]
    skip: list[datetime]


def plan_catch_up(missed: Sequence[datetime], policy: CatchUp) -> CatchUpPlan:
    """What to do with the slots missed during an outage (oldest first)."""
    ordered = sorted(missed)
    if policy == "latest":
        return CatchUpPlan(run=ordered[-1:], skip=ordered[:-1])
    if policy == "all":
        return CatchUpPlan(run=ordered, skip=[])
    if policy == "skip":
        return CatchUpPlan(run=[], skip=ordered)
    raise ValueError(f"catch_up must be latest, all or skip (got {policy!r})")


def catch_up_skip_reason(schedules: Sequence[ScheduleConfig], policy: CatchUp, scheduled: datetime,
                         now: datetime, late_after: timedelta = LATE_AFTER) -> str | None:
    """Why the run of the slot `scheduled`, starting at `now`, must be skipped; None when it runs.

    This applies `plan_catch_up` one run at a time, as each late run starts: with `latest` a
    late run is skipped when a newer slot of the report has already come; with `skip` any run
    that starts more than `late_after` after its slot is skipped; with `all` every run runs.
    """
    _aware(scheduled, "scheduled")
    _aware(now, "now")
    if policy == "all" or now - scheduled <= late_after:
        return None
    if policy == "skip":
        return f"catch_up: skip: slot {scheduled.isoformat()} was missed ({_ago(now - scheduled)} late)"
    newer = missed_slots(schedules, scheduled, now)
    if newer:
        return (f"catch_up: latest: slot {scheduled.isoformat()} was missed; the newer slot "
                f"{newer[-1].isoformat()} runs instead")
    return None


def wait_for_older_runs(pending: Callable[[], list[str]], *, poll: float = 5.0, max_wait: float = 3600.0,
                        on_wait: Callable[[list[str]], None] | None = None,
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> bool:
    """catch_up: all keeps missed slots in order: block while `pending()` names unfinished runs of
    the report for older slots. True when none are left; False after `max_wait` seconds (a run
    nobody will execute must not block the report forever)."""
    start = clock()
    told = False
    while older := pending():
        if clock() - start >= max_wait:
            return False
        if not told and on_wait is not None:
            on_wait(older)
            told = True
        sleep(poll)
    return True


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


# ----------------------------------------------------------------------------- overlap


def lock_path(state_dir: Path, report: str) -> Path:
    return state_dir / "locks" / f"{report}.lock"


@dataclass
class LockResult:
    acquired: bool
    holder: dict = field(default_factory=dict)  # who holds it, when not acquired: run_id, pid, since


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def report_lock(path: Path, overlap: Overlap, *, run_id: str = "", poll: float = 0.5,
                on_wait: Callable[[dict], None] | None = None,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[LockResult]:
    """Hold the report's lock for the body, or (overlap: skip) yield `acquired=False` at once.

    With `wait`, polls every `poll` seconds until the running holder finishes; `on_wait` is told
    once who holds it. The lock is an OS lock on an open file: a crashed run never leaves it held.
    """
    if overlap not in ("wait", "skip"):
        raise ValueError(f"overlap must be wait or skip (got {overlap!r})")
    from connectors.state.locks import try_lock
    from connectors.state.private import private_dir

    if path.parent.name == "locks":  # .state/locks: the state folder first, both private
        private_dir(path.parent.parent, tighten=path.parent.parent.name == ".state")
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        told = False
        while not try_lock(fd):
            holder = _read_holder(path)
            if overlap == "skip":
                yield LockResult(False, holder)
                return
            if not told and on_wait is not None:
                on_wait(holder)
                told = True
            sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"run_id": run_id, "pid": os.getpid(),
                                  "since": datetime.now(UTC).isoformat(timespec="seconds")}).encode(), 0)
        try:
            yield LockResult(True)
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
