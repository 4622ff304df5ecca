"""A local Prefect server (`prefect server start` on 127.0.0.1) as a child process of this one.

`serve` keeps one running (UI and scheduler on) while it serves deployments. A manual `run` with no
server to use starts one without UI and scheduler before it imports Prefect, so the server's start-up
(~3.5 s, in another process) overlaps the run's own imports, and stops it when the process exits. The
other services stay on: the task-run recorder and event persister are what put a run's task runs
and events into the database (Prefect's own temporary server runs those too). Nothing here imports
Prefect.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _no_proxy_get(url: str, timeout: float) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never via a proxy
    with opener.open(url, timeout=timeout) as resp:
        return resp.status


def _die_with_parent() -> None:
    """In the server child (Linux): get SIGTERM when its parent dies, even by SIGKILL."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _new_log(port: int) -> Path:
    """A fresh owner-only log file (mkstemp: never a name another local user could have planted)."""
    fd, name = tempfile.mkstemp(prefix=f"pipeline-sync-prefect-server-{port}-", suffix=".log")
    os.close(fd)
    return Path(name)


class LocalServer:
    """`prefect server start` on 127.0.0.1 as a child process, owned by this process."""

    def __init__(self, port: int | None = None, *, ui: bool = True, scheduler: bool = True,
                 home: str | None = None, startup_timeout: float = 120.0, log_path: Path | None = None):
        self.port = port or free_port()
        self.ui = ui
        self.scheduler = scheduler
        self.home = home
        self.startup_timeout = startup_timeout
        self.log_path = log_path or _new_log(self.port)
        self.proc: subprocess.Popen | None = None
        self.healthy = False

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> LocalServer:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
        env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_UI_ENABLED="true" if self.ui else "false", PREFECT_SERVER_LOGGING_LEVEL="WARNING")
        if not self.scheduler:  # a server for one run must not create runs of deployments in its database
            env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
        if self.home:
            env["PREFECT_HOME"] = self.home
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(self.port)]
        fd = os.open(self.log_path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            os.close(fd)
        return self

    def wait_healthy(self, sleep: Callable[[float], None] = time.sleep, step: float = 0.25) -> float:
        """Seconds until /api/health answers; raises with the server's last log lines if it does not."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the local Prefect server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if _no_proxy_get(f"{self.api_url}/health", timeout=2) == 200:
                    self.healthy = True
                    return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            sleep(step)
        self.stop()
        raise RuntimeError(f"the local Prefect server was not healthy after {self.startup_timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL if it does not exit in `timeout` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        except ProcessLookupError:
            pass


def start_for_run() -> LocalServer:
    """A server for one manual run: started now, stopped when this process exits (its log is removed
    unless the server failed: then an error names it).

    Registered with atexit before Prefect is imported, so it stops after Prefect's own exit handlers
    have sent the run's last logs and events (atexit runs handlers last-registered first).
    """
    server = LocalServer(ui=False, scheduler=False).start()

    def _stop() -> None:
        server.stop()
        if server.healthy:
            server.log_path.unlink(missing_ok=True)

    atexit.register(_stop)
    return server
