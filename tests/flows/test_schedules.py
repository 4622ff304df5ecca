"""Cron slots across DST changes, catch-up after an outage, and the one-run-at-a-time lock."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from config.models import AppConfig, ScheduleConfig
from flows.schedules import (
    catch_up_skip_reason,
    missed_slots,
    next_runs,
    plan_catch_up,
    report_lock,
    slots_between,
    wait_for_older_runs,
)

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold)


# ----------------------------------------------------------------------------- DST


@pytest.mark.parametrize(
    ("tz", "day", "cron", "expected_utc"),
    [
        # spring forward: 02:30 does not exist; the run happens once, shifted forward by the gap (03:30)
        (BERLIN, (2026, 3, 29), "30 2 * * *", ["2026-03-28T01:30", "2026-03-29T01:30", "2026-03-30T00:30"]),
        # fall back: 02:30 happens twice; the run happens once, at the first 02:30 (still CEST)
        (BERLIN, (2026, 10, 25), "30 2 * * *", ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),
        (NEW_YORK, (2026, 3, 8), "30 2 * * *", ["2026-03-07T07:30", "2026-03-08T07:30", "2026-03-09T06:30"]),
        # New York repeats 01:00-02:00: the first 01:30 (EDT) runs, the second (EST) does not
        (NEW_YORK, (2026, 11, 1), "30 1 * * *", ["2026-10-31T05:30", "2026-11-01T05:30", "2026-11-02T06:30"]),
    ],
)
def test_daily_run_inside_the_dst_change_runs_exactly_once_a_day(tz, day, cron, expected_utc):
    start = local(tz, *day) - timedelta(days=1)
    slots = slots_between(cron, tz.key, start, start + timedelta(days=3))
    assert [s.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") for s in slots] == expected_utc
    assert [s.date().isoformat() for s in slots] == [
        (start + timedelta(days=i)).date().isoformat() for i in range(3)]


@pytest.mark.parametrize(
    ("tz", "spring", "fall"),
    [(BERLIN, (2026, 3, 29), (2026, 10, 25)), (NEW_YORK, (2026, 3, 8), (2026, 11, 1))],
)
def test_weekday_0600_keeps_local_time_across_both_changes(tz, spring, fall):
    for day in (spring, fall):
        # the Sunday of the change has no run; Friday before and Monday after run at 06:00 local
        runs = next_runs("0 6 * * 1-5", tz.key, local(tz, *day) - timedelta(days=2), n=2)
        assert [(r.strftime("%a %H:%M"), r.tzinfo.key) for r in runs] == [("Fri 06:00", tz.key), ("Mon 06:00", tz.key)]
        # elapsed time is one hour shorter (spring) or longer (fall) than 72 h: local time is kept
        assert runs[1].astimezone(UTC) - runs[0].astimezone(UTC) == timedelta(hours=71 if day == spring else 73)


def test_hourly_schedule_on_the_change_days_has_no_double_and_no_missing_wall_hour():
    spring = slots_between("0 * * * *", "Europe/Berlin", local(BERLIN, 2026, 3, 28, 23), local(BERLIN, 2026, 3, 29, 23))
    assert [s.strftime("%H") for s in spring] == [f"{h:02d}" for h in range(24) if h != 2]  # 02:00 -> 03:00: one run
    fall = slots_between("0 * * * *", "Europe/Berlin", local(BERLIN, 2026, 10, 24, 23), local(BERLIN, 2026, 10, 25, 23))
    assert [s.strftime("%H") for s in fall] == [f"{h:02d}" for h in range(24)]  # the repeated 02:00 runs once
    assert len({s.astimezone(UTC) for s in fall}) == 24


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *", "0 6 * * 1-5", "*/30 1-3 * * *"])
def test_slots_agree_with_prefects_own_scheduler(tz, cron):
    """The deployed schedule (Prefect's server CronSchedule) fires at exactly these instants."""
    from prefect.server.schemas.schedules import CronSchedule

    z = ZoneInfo(tz)
    for day in [(2026, 3, 8), (2026, 3, 29), (2026, 10, 25), (2026, 11, 1)]:
        start, end = local(z, *day) - timedelta(days=1), local(z, *day) + timedelta(days=2)
        theirs = asyncio.run(CronSchedule(cron=cron, timezone=tz).get_dates(n=1000, start=start, end=end))
        ours = slots_between(cron, tz, start, end)
        assert [s.astimezone(UTC) for s in ours] == [t.astimezone(UTC) for t in theirs if t > start]


def test_schedule_timezone_defaults_to_the_configs_and_bad_cron_is_named():
    base = {"timezone": "America/New_York", "sources": [{"name": "a", "type": "csv", "path": "/x.csv"}],
            "destinations": [{"type": "file", "path": "/o.xlsx"}]}
    cfg = AppConfig.model_validate({**base, "schedule": [{"cron": "0 6 * * 1-5"},
                                                         {"cron": "0 12 * * *", "timezone": "Europe/Berlin"}]})
    assert [(s.timezone, s.catch_up, s.overlap) for s in cfg.schedule] == [
        ("America/New_York", "latest", "wait"), ("Europe/Berlin", "latest", "wait")]
    with pytest.raises(ValueError, match=r"cron '0 25 \* \* \*' is not a valid cron expression"):
        AppConfig.model_validate({**base, "schedule": [{"cron": "0 25 * * *"}]})
    with pytest.raises(ValueError, match="'Berlin' is not an IANA time zone"):
        AppConfig.model_validate({**base, "schedule": [{"cron": "0 6 * * *", "timezone": "Berlin"}]})
    with pytest.raises(ValueError, match="catch_up"):
        AppConfig.model_validate({**base, "schedule": [{"cron": "0 6 * * *", "catch_up": "newest"}]})


# ----------------------------------------------------------------------------- catch-up


WEEKDAYS_6 = ScheduleConfig(cron="0 6 * * 1-5", timezone="Europe/Berlin")
# last run Friday 2026-03-27 06:00 Berlin; the machine was off until Wednesday 2026-04-01 09:15
LAST_RUN = local(BERLIN, 2026, 3, 27, 6)
BACK_UP = local(BERLIN, 2026, 4, 1, 9, 15)
MISSED = ["2026-03-30T06:00:00+02:00", "2026-03-31T06:00:00+02:00", "2026-04-01T06:00:00+02:00"]


def test_outage_missed_slots_span_the_dst_change():
    missed = missed_slots([WEEKDAYS_6], LAST_RUN, BACK_UP)
    assert [m.astimezone(BERLIN).isoformat() for m in missed] == MISSED


@pytest.mark.parametrize(
    ("policy", "runs", "skips"),
    [("latest", MISSED[-1:], MISSED[:-1]), ("all", MISSED, []), ("skip", [], MISSED)],
)
def test_catch_up_plan_after_outage(policy, runs, skips):
    plan = plan_catch_up(missed_slots([WEEKDAYS_6], LAST_RUN, BACK_UP), policy)
    assert [r.astimezone(BERLIN).isoformat() for r in plan.run] == runs
    assert [s.astimezone(BERLIN).isoformat() for s in plan.skip] == skips


@pytest.mark.parametrize("policy", ["latest", "all", "skip"])
def test_each_late_run_decides_like_the_plan(policy):
    """The late runs Prefect starts when the server comes back each decide on their own; together
    they do what `plan_catch_up` says."""
    missed = missed_slots([WEEKDAYS_6], LAST_RUN, BACK_UP)
    ran = [m for m in missed if catch_up_skip_reason([WEEKDAYS_6], policy, m, BACK_UP) is None]
    assert ran == plan_catch_up(missed, policy).run
    reason = catch_up_skip_reason([WEEKDAYS_6], policy, missed[0], BACK_UP)
    if policy == "latest":
        assert reason == ("catch_up: latest: slot 2026-03-30T04:00:00+00:00 was missed; the newer slot "
                          "2026-04-01T04:00:00+00:00 runs instead")
    elif policy == "skip":
        assert reason == "catch_up: skip: slot 2026-03-30T04:00:00+00:00 was missed (51 h 15 min late)"


def test_on_time_run_is_never_skipped_and_other_schedules_of_the_report_count():
    on_time = local(BERLIN, 2026, 4, 1, 6)
    for policy in ("latest", "all", "skip"):
        assert catch_up_skip_reason([WEEKDAYS_6], policy, on_time, on_time + timedelta(minutes=3)) is None
    noon = ScheduleConfig(cron="0 12 * * *", timezone="Europe/Berlin")
    # 06:00 started at 12:30 after a morning outage: the 12:00 slot of the other schedule supersedes it
    reason = catch_up_skip_reason([WEEKDAYS_6, noon], "latest", on_time, local(BERLIN, 2026, 4, 1, 12, 30))
    assert reason is not None and "2026-04-01T10:00:00+00:00 runs instead" in reason


# ----------------------------------------------------------------------------- overlap


def test_overlap_skip_and_wait_between_two_threads(tmp_path: Path):
    path = tmp_path / "locks" / "pipeline.lock"
    log: list[str] = []
    first_in, second_waiting, second_skipped = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with report_lock(path, "wait", run_id="run-1") as got:
            assert got.acquired
            log.append("1 in")
            first_in.set()
            second_skipped.wait(5)
            second_waiting.wait(5)
            log.append("1 out")

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_in.wait(5)
    with report_lock(path, "skip", run_id="run-2") as got:
        assert not got.acquired
        assert got.holder["run_id"] == "run-1"
        log.append("2 skipped")
    second_skipped.set()

    holders: list[dict] = []

    def waiting(holder: dict) -> None:
        holders.append(holder)
        second_waiting.set()

    with report_lock(path, "wait", run_id="run-3", poll=0.01, on_wait=waiting) as got:
        assert got.acquired
        log.append("3 in")
    t1.join(5)
    assert log == ["1 in", "2 skipped", "1 out", "3 in"]
    assert [h["run_id"] for h in holders] == ["run-1"]


def test_overlap_between_two_processes(tmp_path: Path):
    path = tmp_path / "pipeline.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from flows.schedules import report_lock\n"
         f"with report_lock(Path({str(path)!r}), 'wait', run_id='other-process') as got:\n"
         "    print('locked', got.acquired, flush=True); sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "locked True"
        with report_lock(path, "skip") as got:
            assert (got.acquired, got.holder["run_id"], got.holder["pid"]) == (False, "other-process", holder.pid)
        waited: list[dict] = []

        def release(h: dict) -> None:
            waited.append(h)
            holder.stdin.write("\n")
            holder.stdin.flush()

        with report_lock(path, "wait", poll=0.01, on_wait=release) as got:
            assert got.acquired
        assert [w["run_id"] for w in waited] == ["other-process"]
    finally:
        holder.kill()
        holder.wait(5)


def test_a_crashed_holder_does_not_leave_the_lock_held(tmp_path: Path):
    path = tmp_path / "pipeline.lock"
    code = (f"import os; from pathlib import Path; from flows.schedules import report_lock\n"
            f"with report_lock(Path({str(path)!r}), 'wait'): os._exit(3)\n")
    rc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode
    assert rc == 3
    with report_lock(path, "skip") as got:
        assert got.acquired


def test_the_flow_body_skips_while_another_run_of_the_report_holds_the_lock(tmp_path: Path):
    """overlap: skip at flow level: the run ends before touching any source or the workbook."""
    from flows.sync import sync_report

    cfg = tmp_path / "r.yaml"
    cfg.write_text("report: weekly\nsources: [{name: crm, type: csv, path: deals.csv}]\n"
                   "destinations: [{type: file, path: out/book.xlsx}]\n"
                   "schedule: [{cron: '0 6 * * *', overlap: skip}, {cron: '0 7 * * *'}]\n")
    with report_lock(tmp_path / ".state" / "locks" / "weekly.lock", "wait", run_id="run-in-progress"):
        summary = sync_report(str(cfg), schedule_index=0, task_wrapper=lambda step, name: step)
    assert summary == {"skipped": "overlap: skip: run run-in-progress of this report is still in progress",
                       "report": "weekly"}
    assert not (tmp_path / "out").exists()


def test_catch_up_all_waits_for_older_runs_then_goes():
    answers = [["run-mon", "run-tue"], ["run-tue"], []]
    told, slept = [], []
    assert wait_for_older_runs(lambda: answers.pop(0), poll=5.0, on_wait=told.append, sleep=slept.append)
    assert (told, slept, answers) == ([["run-mon", "run-tue"]], [5.0, 5.0], [])


def test_catch_up_all_stops_waiting_for_a_run_nobody_executes():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert not wait_for_older_runs(lambda: ["orphan"], poll=60.0, max_wait=600.0, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 600.0
