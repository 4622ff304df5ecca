"""The Prefect flow: `run_pipeline` with each step run as a Prefect task."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from connectors.errors import RetriableAPIError
from flows.pipeline import RunResult, Step, run_pipeline

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


def as_task(step: Step, name: str) -> Step:
    """Wrap one pipeline step as a task; customer data is never persisted as a Prefect result."""
    retried = name.startswith(RETRIED_STEPS)
    return task(
        step,
        name=name,
        retries=2 if retried else 0,
        retry_delay_seconds=[30, 120] if retried else 0,
        retry_condition_fn=_only_retriable,
        persist_result=False,
        cache_policy=NO_CACHE,
    )


def result_summary(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "as_of": result.as_of.isoformat(),
        "period": result.period.label,
        "outputs": result.outputs,
        "flags": result.flags_count,
        "sources": [
            {"name": s.name, "read": s.rows_read, "loaded": s.rows_loaded, "rejected": s.rows_rejected, "stale": s.stale}
            for s in result.sources
        ],
    }


@flow(name="sync-pipeline", persist_result=False, log_prints=False)
def sync_pipeline(config_path: str, as_of: date | None = None, full_refresh: bool = False) -> dict[str, Any]:
    """Extract, transform, render and publish one config's workbook(s)."""
    return result_summary(run_pipeline(config_path, as_of, full_refresh=full_refresh, wrap=as_task))
