"""The Prefect flow: `run_pipeline` with each step run as a Prefect task, and named reports
(`reports:`) fanned out as tasks on the task runner the config chooses (`prefect_fan_out`)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from config.models import AppConfig
from connectors.errors import PipelineSyncError, RetriableAPIError
from connectors.redact import redact, redact_exception
from flows.pipeline import RunResult, Step, StepWrapper, result_summary, run_pipeline
from flows.reports import MAX_THREADS, Call, FanOut, outcome, thread_fan_out

log = logging.getLogger("pipeline_sync")

RETRIED_STEPS = ("extract-", "publish-")


def _only_retriable(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry a task only when it failed with a RetriableAPIError (429/5xx/network that outlived the HTTP retries)."""
    try:
        state.result(raise_on_failure=True)
    except RetriableAPIError:
        return True
    except Exception:
        return False
    return False


def _redacting(step: Step) -> Step:
    """`step`, whose exceptions leave it redacted (Prefect keeps their text in the task run's state)."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return step(*args, **kwargs)
        except Exception as exc:
            redact_exception(exc)
            raise

    return run


def as_task(step: Step, name: str) -> Step:
    """Wrap one pipeline step as a task; customer data is never persisted as a Prefect result, and
    no secret in an exception reaches the task's state."""
    retried = name.startswith(RETRIED_STEPS)
    return task(
        _redacting(step),
        name=name,
        retries=2 if retried else 0,
        retry_delay_seconds=[30, 120] if retried else 0,
        retry_condition_fn=_only_retriable,
        persist_result=False,
        cache_policy=NO_CACHE,
    )


def task_runner(cfg: AppConfig, n: int) -> Any:
    """The Prefect task runner for `cfg.runner`."""
    if cfg.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise PipelineSyncError("runner: dask needs prefect-dask: pip install 'pipeline-sync[dask]'") from exc
        return DaskTaskRunner(address=cfg.dask_address) if cfg.dask_address else DaskTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=min(max(n, 1), MAX_THREADS))


def prefect_fan_out(cfg: AppConfig, calls: Sequence[Call]) -> list[Any]:
    """A FanOut for flows.pipeline.run_reports: each call a Prefect task (retried on
    RetriableAPIError) on the configured task runner (`runner: thread | dask`)."""
    if not calls:
        return []
    with task_runner(cfg, len(calls)) as runner:
        futures = []
        for name, fn, args in calls:
            step = as_task(fn, name).with_options(retries=2, retry_delay_seconds=[30, 120])
            futures.append(runner.submit(step, dict(inspect.signature(fn).bind(*args).arguments)))
        return [outcome(f.result) for f in futures]


class _Steps:
    """A step wrapper (`as_task`) that also remembers the step running (for failure alerts) and the transform's result."""

    def __init__(self, inner: StepWrapper) -> None:
        self.inner = inner
        self.current, self.run, self.transformed = "prepare", None, None
        self.done: set[str] = set()

    def failed_step(self) -> str:
        """The step that raised; `reports` when every wrapped step finished (a named report failed)."""
        return "reports" if self.current in self.done else self.current

    def __call__(self, step: Step, name: str) -> Step:
        wrapped = self.inner(step, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.current = name
            if self.run is None and args:
                self.run = args[0]
            out = wrapped(*args, **kwargs)
            self.done.add(name)
            if name == "transform":
                self.transformed = out
            return out

        return call


def _run_url() -> str | None:
    """The flow run's page in the Prefect UI; None on Prefect's temporary server (no lasting UI)."""
    import os

    from prefect.runtime import flow_run

    if not os.environ.get("PREFECT_API_URL"):
        return None
    try:
        return flow_run.ui_url
    except Exception:  # no UI configured
        return None


def _scheduled_slot(schedules: list[Any], schedule_index: int | None) -> datetime | None:
    """The slot of this deployment run (None for manual runs and runs outside a deployment)."""
    from prefect.runtime import deployment, flow_run

    if schedule_index is None or deployment.id is None or not 0 <= schedule_index < len(schedules):
        return None
    scheduled = flow_run.scheduled_start_time
    if scheduled is None:
        return None
    if not isinstance(scheduled, datetime):
        scheduled = datetime.fromisoformat(str(scheduled))
    return scheduled if scheduled.tzinfo else scheduled.replace(tzinfo=UTC)


def _skip_reason(schedules: list[Any], schedule_index: int | None) -> str | None:
    """Catch-up for a scheduled deployment run that starts late (see flows.schedules)."""
    from flows.schedules import catch_up_skip_reason

    scheduled = _scheduled_slot(schedules, schedule_index)
    if scheduled is None:
        return None
    policy = schedules[schedule_index].catch_up
    return catch_up_skip_reason(schedules, policy, scheduled, datetime.now(UTC))


def _older_unfinished_runs(report: str, scheduled: datetime, own_id: str) -> list[str]:
    """Names of this report's runs for slots before `scheduled` that have not finished yet."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    flt = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[f"report:{report}"]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING])),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=scheduled - timedelta(seconds=1)),
        id=FlowRunFilterId(not_any_=[own_id]),
    )
    with get_client(sync_client=True) as client:
        return [r.name for r in client.read_flow_runs(flow_run_filter=flt, limit=50)]


def _keep_catch_up_order(target: str, schedules: list[Any], schedule_index: int | None) -> None:
    """catch_up: all: wait until the older missed runs of this report have finished."""
    from prefect.runtime import flow_run

    from flows.schedules import wait_for_older_runs

    scheduled = _scheduled_slot(schedules, schedule_index)
    if scheduled is None or schedules[schedule_index].catch_up != "all":
        return
    own_id = str(flow_run.id)
    done = wait_for_older_runs(
        lambda: _older_unfinished_runs(target, scheduled, own_id),
        on_wait=lambda older: log.warning("report %s: catch_up: all: waiting for older run(s) %s", target,
                                          ", ".join(older)))
    if not done:
        log.warning("report %s: older runs still unfinished after an hour; running anyway", target)


def _after_success(loaded: Any, steps: _Steps, result: RunResult) -> None:
    """Digest, alerts and artifacts; a failure here is logged and never fails a published run."""
    from prefect.context import FlowRunContext

    from flows.artifacts import publish_artifacts
    from flows.notify import digests_for_run, notify_success

    cfg = loaded.config
    try:
        for digest in digests_for_run(steps.run, result, steps.transformed, _run_url()):
            if FlowRunContext.get() is not None:
                flags = getattr(getattr(steps.transformed, "analytics", None), "flags", None)
                publish_artifacts(digest, flags if digest.flag_details else None)
            if cfg.notify:
                notify_success(cfg.notify, digest, secrets=loaded.secrets)
    except Exception as exc:  # the workbook is already published
        log.warning("run digest / notification failed: %s", type(exc).__name__)


def env_from_secret_blocks(secret_blocks: dict[str, str] | None) -> list[str]:
    """Set each unset environment variable from the Prefect Secret block named for it, at run time.

    prefect.yaml names blocks, never values (`prefect deploy` would store resolved values in the
    deployment); the config keeps its `${ENV}` references. Returns the variables it set.
    """
    import os

    if not secret_blocks:
        return []
    from prefect.blocks.system import Secret

    filled = []
    for var, block in secret_blocks.items():
        if not os.environ.get(var):
            os.environ[var] = str(Secret.load(block).get())
            filled.append(var)
    return filled


@flow(name="sync-pipeline", persist_result=False, log_prints=False)
def sync_pipeline(config_path: str, as_of: date | None = None, full_refresh: bool = False,
                  schedule_index: int | None = None, secret_blocks: dict[str, str] | None = None,
                  reports: list[str] | None = None) -> dict[str, Any]:
    """Extract, transform, render and publish one config's workbook(s).

    `schedule_index` is set by deployments: which `schedule:` entry started the run (its
    catch_up and overlap policies apply). One run per report at a time (flows.schedules).
    `secret_blocks` maps environment variables to Prefect Secret block names (prefect.yaml).
    `reports` limits a config with `reports:` to those named reports (default: all).
    """
    env_from_secret_blocks(secret_blocks)
    announce = _served_run_announcer()
    announce("started")
    try:
        summary = sync_report(config_path, as_of, full_refresh, schedule_index, reports=reports,
                              fan_out=prefect_fan_out)
    except Exception as exc:
        redact_exception(exc)  # the flow run's state keeps its text
        announce(f"failed: {type(exc).__name__}")
        raise
    announce(f"skipped: {summary['skipped']}" if "skipped" in summary else
             f"finished: {summary.get('flags') or 0:,} flags, wrote {', '.join(summary.get('outputs') or []) or 'nothing'}")
    if "skipped" in summary:  # shown as "Skipped" with its reason in the UI
        from prefect.states import Completed

        return Completed(name="Skipped", message=summary["skipped"], data=summary)
    return summary


def run_manual(config_path: str, as_of: date | None = None, full_refresh: bool = False) -> dict[str, Any]:
    """`sync_pipeline` for `pipeline-sync run`: a foreground run, watched in its terminal, sends no heartbeats.

    Prefect's flow-run heartbeat thread sleeps in 1 s steps and is joined when the run ends (up to 1 s
    more per run, prefect/flow_engine.py `_send_heartbeats`); heartbeats only serve to mark a run crashed
    that stopped reporting, through an automation a user sets up
    (https://docs.prefect.io/v3/advanced/detect-zombie-flows). Runs that `serve` or a worker executes
    keep Prefect's setting.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return sync_pipeline(config_path, as_of, full_refresh)


def _served_run_announcer() -> Any:
    """A one-line printer for runs a deployment started (`serve` shows them in its terminal); silent otherwise."""
    from prefect.context import FlowRunContext
    from prefect.runtime import deployment, flow_run

    ctx = FlowRunContext.get()  # the run's own record: no API call to learn it has no deployment
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        return lambda what: None
    name = f"{deployment.name or 'deployment'} run {flow_run.name or flow_run.id}"

    def announce(what: str) -> None:  # this process's stdout is not the CLI's redacting one
        print(redact(f"{datetime.now().astimezone():%Y-%m-%d %H:%M:%S} {name}: {what}"), flush=True)

    return announce


def sync_report(config_path: str, as_of: date | None = None, full_refresh: bool = False,
                schedule_index: int | None = None, task_wrapper: StepWrapper = as_task, *,
                reports: list[str] | None = None, fan_out: FanOut = thread_fan_out) -> dict[str, Any]:
    """The flow's body: catch-up check, report lock, `run_pipeline`, then alerts, digest and artifacts.

    Tests pass `task_wrapper=lambda step, name: step` to run the same body without Prefect tasks;
    the flow passes `fan_out=prefect_fan_out` (named reports as tasks), the default is threads.
    """
    from prefect.runtime import flow_run

    from config.loader import load_config
    from flows.notify import notify_failure
    from flows.schedules import lock_path, report_lock, schedules_for

    loaded = load_config(config_path)
    cfg = loaded.config
    target, schedules = schedules_for(cfg, reports)
    reason = _skip_reason(schedules, schedule_index)
    if reason:
        log.warning("report %s: run skipped (%s)", target, reason)
        return {"skipped": reason, "report": target}
    _keep_catch_up_order(target, schedules, schedule_index)
    in_range = schedule_index is not None and 0 <= schedule_index < len(schedules)
    overlap = schedules[schedule_index].overlap if in_range else "wait"
    with report_lock(lock_path(loaded.base_dir / ".state", cfg.report), overlap, run_id=str(flow_run.id or ""),
                     on_wait=lambda h: log.warning("report %s: waiting for run %s (since %s) to finish", cfg.report,
                                                   h.get("run_id") or "?", h.get("since", "?"))) as lock:
        if not lock.acquired:
            reason = f"overlap: skip: run {lock.holder.get('run_id') or '?'} of this report is still in progress"
            log.warning("report %s: run skipped (%s)", cfg.report, reason)
            return {"skipped": reason, "report": target}
        steps = _Steps(task_wrapper)
        try:
            kwargs = {"reports": reports} if reports else {}
            result = run_pipeline(config_path, as_of, full_refresh=full_refresh, wrap=steps, loaded=loaded,
                                  fan_out=fan_out, **kwargs)
        except Exception as exc:
            redact_exception(exc)
            try:
                if cfg.notify:
                    notify_failure(cfg.notify, report=target, step=steps.failed_step(), error=exc,
                                   run_url=_run_url(), secrets=loaded.secrets)
            except Exception as alert_exc:  # never hide the run's own error
                log.warning("failure alert could not be sent: %s", type(alert_exc).__name__)
            raise
        _after_success(loaded, steps, result)
    return result_summary(result)
