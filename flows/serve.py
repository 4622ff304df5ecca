"""`pipeline-sync serve` and `pipeline-sync trigger`: the configs' schedules as Prefect deployments.

Prefect cannot schedule on its temporary server, so without `PREFECT_API_URL` `serve` starts
`prefect server start` on 127.0.0.1 (SQLite under PREFECT_HOME, so scheduled runs survive a
restart), waits until it is healthy, prints where the UI is, serves the deployments and stops
the server on exit (Ctrl-C or SIGTERM). With `PREFECT_API_URL` set it uses that server.

One deployment per `schedule:` entry (named after the report; `-2`, `-3`... for more entries,
parameter `schedule_index` says which entry, so its catch_up/overlap apply); a config without
`schedule:` gets one unscheduled deployment that `trigger` can start.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from config.loader import LoadedConfig
from flows.local_server import HOST, LocalServer
from flows.server_record import remove_record, write_record

FLOW_NAME = "sync-pipeline"


@dataclass(frozen=True)
class DeploymentSpec:
    """What `serve` registers (and prefect.yaml mirrors) for one schedule of one config."""

    name: str
    config_path: str
    schedule_index: int | None
    cron: str | None
    timezone: str | None
    catch_up: str | None = None
    overlap: str | None = None
    tags: list[str] = field(default_factory=list)
    reports: list[str] | None = None  # a named report of `reports:` only; None: the whole config

    @property
    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"config_path": self.config_path, "schedule_index": self.schedule_index}
        if self.reports:
            params["reports"] = self.reports
        return params


def deployment_specs(loaded: LoadedConfig) -> list[DeploymentSpec]:
    """The top-level `schedule:` runs the whole config (every report); a named report's own
    `schedule:` runs that report only. Without any schedule: one manual deployment."""
    cfg = loaded.config
    path = str(loaded.path)
    targets = [(cfg.report, cfg.schedule, None)]
    targets += [(r.name, r.schedule, [r.name]) for r in getattr(cfg, "reports", None) or [] if r.schedule]
    specs = [DeploymentSpec(name if i == 0 else f"{name}-{i + 1}", path, i, s.cron, s.timezone, s.catch_up,
                            s.overlap, ["pipeline-sync", f"report:{name}"], reports)
             for name, schedules, reports in targets for i, s in enumerate(schedules)]
    if not cfg.schedule:
        specs.insert(0, DeploymentSpec(cfg.report, path, None, None, None, tags=["pipeline-sync", f"report:{cfg.report}"]))
    return specs


def check_unique(specs: list[DeploymentSpec]) -> None:
    seen: dict[str, str] = {}
    for s in specs:
        if s.name in seen:
            where = s.config_path if seen[s.name] == s.config_path else f"{seen[s.name]} and {s.config_path}"
            raise ValueError(f"two deployments would be named '{s.name}' ({where}); give each config its own "
                             "`report:` name and each named report a name that no other deployment uses")
        seen[s.name] = s.config_path


# ----------------------------------------------------------------------------- serve / trigger


def _to_deployment(spec: DeploymentSpec) -> Any:
    from flows.sync import sync_pipeline

    kwargs: dict[str, Any] = {"name": spec.name, "parameters": spec.parameters, "tags": spec.tags,
                              "description": f"pipeline-sync report {spec.name} ({spec.config_path})"}
    if spec.cron:
        from prefect.client.schemas.schedules import CronSchedule

        kwargs["schedules"] = [CronSchedule(cron=spec.cron, timezone=spec.timezone)]
    return sync_pipeline.to_deployment(**kwargs)


def describe(spec: DeploymentSpec, now: datetime | None = None) -> str:
    from flows.schedules import next_runs

    if not spec.cron:
        return f"{FLOW_NAME}/{spec.name}: no schedule (start it with `pipeline-sync trigger`)"
    nxt = next_runs(spec.cron, spec.timezone or "UTC", now or datetime.now(UTC), 1)
    when = nxt[0].isoformat(timespec="minutes") if nxt else "never"
    return (f"{FLOW_NAME}/{spec.name}: '{spec.cron}' {spec.timezone} (catch_up: {spec.catch_up}, "
            f"overlap: {spec.overlap}); next run {when}")


def serve(loaded: list[LoadedConfig], *, ui: bool = True, port: int | None = None,
          echo: Callable[[str], None] = print) -> None:
    """Register every config's deployments and serve them until Ctrl-C / SIGTERM."""
    specs = [s for cfg in loaded for s in deployment_specs(cfg)]
    check_unique(specs)
    server: LocalServer | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not os.environ.get("PREFECT_API_URL"):
            server = LocalServer(port, ui=ui).start()
            echo(f"starting a local Prefect server on {HOST}:{server.port} (log: {server.log_path}) ...")
            took = server.wait_healthy()
            os.environ["PREFECT_API_URL"] = server.api_url
            if ui:
                os.environ["PREFECT_UI_URL"] = server.ui_url
            echo(f"Prefect server healthy after {took:.1f} s; "
                 + (f"UI: {server.ui_url}; " if ui else "") + f"API: {server.api_url}")
            echo(f"for `pipeline-sync trigger` from another shell: export PREFECT_API_URL={server.api_url}")
            for cfg in loaded:  # a manual `run` of these configs uses this server instead of a temporary one
                write_record(cfg.base_dir / ".state", server.api_url, os.getpid())
        else:
            echo(f"using the Prefect server at {os.environ['PREFECT_API_URL']}")
        from prefect import serve as prefect_serve
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            deployments = [_to_deployment(s) for s in specs]
            for d, s in zip(deployments, specs, strict=True):
                d.apply()  # registered (schedules active) before we say so; the runner applies again
                echo(f"serving {describe(s)}")
            echo("press Ctrl-C to stop" + (" (stops the local Prefect server too)" if server else ""))
            # keep schedules active on exit: runs missed while stopped are handled by catch_up
            prefect_serve(*deployments, pause_on_shutdown=False, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            for cfg in loaded:
                remove_record(cfg.base_dir / ".state", os.getpid())
            echo("stopping the local Prefect server ...")
            server.stop()
            echo("stopped")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def trigger(loaded: LoadedConfig, *, report: str | None = None, wait: bool = False,
            echo: Callable[[str], None] = print) -> str:
    """Create a run of the config's deployment (or of a named report's) on the server in
    PREFECT_API_URL; returns its id.

    The run has no schedule_index: it waits for a run in progress (never skipped) and is never
    treated as a missed slot.
    """
    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("PREFECT_API_URL is not set: start `pipeline-sync serve` (it prints the URL) or "
                           "export PREFECT_API_URL=http://127.0.0.1:4200/api; use `pipeline-sync run` to run locally")
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    specs = deployment_specs(loaded)
    if report is not None:
        specs = [s for s in specs if (s.reports or [loaded.config.report]) == [report]]
        if not specs:
            raise RuntimeError(f"report '{report}' has no deployment: give it a `schedule:` in {loaded.path} "
                               "(or trigger the whole config without --report)")
    spec = specs[0]
    try:
        run = run_deployment(f"{FLOW_NAME}/{spec.name}", parameters={**spec.parameters, "schedule_index": None},
                             timeout=None if wait else 0, tags=["manual"])
    except ObjectNotFound as exc:
        raise RuntimeError(f"no deployment {FLOW_NAME}/{spec.name} on {os.environ['PREFECT_API_URL']}: start "
                           f"`pipeline-sync serve --config {loaded.path}` (or `prefect deploy --all`) first") from exc
    from prefect.utilities.urls import url_for

    link = url_for(run) or f"{os.environ['PREFECT_API_URL'].removesuffix('/api')}/runs/flow-run/{run.id}"
    echo(f"created flow run {run.name} ({run.id}) of {FLOW_NAME}/{spec.name}: {link}")
    if wait:
        echo(f"finished: {run.state.name if run.state else 'unknown'}")
    return str(run.id)
